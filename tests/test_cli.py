"""The CLI's `theory` command and its handling of bad input (one line, exit 2, no traceback)."""

import json
import subprocess
import sys

import pytest

from decoderbench.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "decoderbench", *args], capture_output=True, text=True, timeout=120)


def test_theory_reference_cell_json():
    res = run_cli("theory", "--ns", "4096", "--r", "0.25", "--p", "0.045", "--json")
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)
    for k in ("sigma", "trivial", "linear", "mmse_elementwise", "e2_bound", "relu_theory", "relu_a", "relu_b", "vamp_se"):
        assert k in t
    # SCIENCE.md reference values, to 4 significant figures
    assert f"{t['sigma']:.4g}" == "0.2085"
    assert f"{t['mmse_elementwise']:.4g}" == "0.00448"
    assert f"{t['e2_bound']:.4g}" == "0.00122"
    assert f"{t['relu_theory']:.4g}" == "0.004856"
    assert f"{t['relu_a']:.4g}" == "1.289"
    assert f"{t['relu_b']:.3g}" == "-0.446"
    assert f"{t['linear']:.4g}" == "0.01087"
    assert t["trivial"] == pytest.approx(0.015, rel=1e-12)
    assert t["n_d"] == 1024


def test_theory_nd_equals_r(capsys):
    assert main(["theory", "--ns", "4096", "--nd", "1024", "--p", "0.045", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["theory", "--ns", "4096", "--r", "0.25", "--p", "0.045", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b


def test_theory_table(capsys):
    assert main(["theory", "--ns", "4096", "--r", "0.1", "--p", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "e2_bound" in out and "mmse_elementwise" in out and "n_d=410" in out


@pytest.mark.parametrize("args,needle", [
    (["theory", "--ns", "1000"], "n_s must be a power of two"),
    (["theory", "--ns", "4096", "--r", "1.5"], "r must be in the open interval (0, 1)"),
    (["theory", "--ns", "4096", "--r", "0"], "r must be in the open interval (0, 1)"),
    (["theory", "--ns", "4096", "--nd", "4096"], "n_d must be an integer in 1..n_s-1"),
    (["theory", "--ns", "4096", "--p", "0"], "p must be in (0, 1]"),
    (["theory", "--ns", "4096", "--p", "1.2"], "p must be in (0, 1]"),
    (["theory", "--ns", "4096", "--p", "nan"], "p must be a finite number"),
    (["theory", "--ns", "inf"], "n_s must be a finite number"),
    (["theory", "--ns", "4096", "--r", "abc"], "--r must be a comma-separated list"),
    (["theory", "--bogus"], "No such option"),
    (["run", "--plugins", "nonexistent_decoder", "--ns", "256"], "unknown decoder 'nonexistent_decoder'"),
])
def test_bad_input_one_line_exit_2(args, needle):
    res = run_cli(*args)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr
    assert len(err.splitlines()) == 1, err
    assert needle in err
