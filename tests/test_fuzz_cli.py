"""Property tests (hypothesis) over the command line and grid files: every input either runs or is
refused with exactly one line `error: ...` and exit 2; no traceback (main() lets any exception but
the project's BadInput escape, which fails the test), no store half-written.

Inputs mix valid values with garbage (empty, text, negative, NaN, inf, huge, lists with holes); valid
cells are kept cheap (n_s <= 256, a few hundred samples) so that the accepted ones run in seconds.
Counts of inputs tried: `python -m pytest tests/test_fuzz_cli.py --hypothesis-show-statistics`.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoderbench.cli import main
from decoderbench.errors import BadInput
from decoderbench.run.grids import parse_grid

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)

GARBAGE = st.sampled_from(["", " ", "abc", "-1", "0", "nan", "inf", "-inf", "1e400", "1,", ",", "1,,2", "0x10",
                           "１", "3", "2**10", "1e-400", "None", "[1]", "--", "-0", "1.5", "7,abc"])
NS = st.one_of(GARBAGE, st.sampled_from(["64", "128", "256", "64,128", "4096", "2", "1024"]),
               st.text(max_size=6))
R = st.one_of(GARBAGE, st.sampled_from(["0.25", "0.1,0.5", "0.999", "0.001", "1", "0.5"]), st.text(max_size=6))
P = st.one_of(GARBAGE, st.sampled_from(["0.05", "0.1", "1", "0.5,0.01", "1e-9"]), st.text(max_size=6))


def call(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def refused_in_one_line(rc, err) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")


@SETTINGS
@given(ns=NS, r=R, p=P)
def test_theory_runs_or_refuses_in_one_line(ns, r, p):
    # the theory is exact quadrature: n_s only sets n_d, so any accepted n_s is cheap
    rc, out, err = call(["theory", "--ns", ns, "--r", r, "--p", p, "--json"])
    if rc == 0:
        json.loads(out)
    else:
        assert refused_in_one_line(rc, err), (ns, r, p, rc, err)


RUN_NS = st.one_of(GARBAGE, st.sampled_from(["64", "128", "64,128"]))
SAMPLES = st.one_of(GARBAGE, st.sampled_from(["64", "128", "256"]))
TIMEOUT = st.one_of(GARBAGE, st.sampled_from(["30", "2.5", "600"]))
WORKERS = st.one_of(GARBAGE, st.sampled_from(["1", "2"]))
EXECUTOR = st.sampled_from(["local", "local", "slurm", "", "LOCAL", "ray;rm"])
PLUGINS = st.sampled_from(["linear", "relu,linear", "", ",", "nope", "linear,,relu", "../x", "all,linear"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(ns=RUN_NS, r=R, p=P, max_s=SAMPLES, min_s=SAMPLES, timeout=TIMEOUT, workers=WORKERS, executor=EXECUTOR,
       plugins=PLUGINS, seed=st.sampled_from(["0", "1", "-1", "x", "0,1", "1.5"]))
def test_run_runs_or_refuses_in_one_line_and_writes_nothing_when_refused(tmp_path_factory, ns, r, p, max_s, min_s,
                                                                         timeout, workers, executor, plugins, seed):
    out_dir = tmp_path_factory.mktemp("fuzz") / "store"
    args = ["run", "--plugins", plugins, "--ns", ns, "--r", r, "--p", p, "--seed", seed, "--max-samples", max_s,
            "--min-samples", min_s, "--timeout", timeout, "--workers", workers, "--executor", executor,
            "--device", "cpu", "--out", str(out_dir), "--json"]
    rc, out, err = call(args)
    if rc in (0, 1):
        rows = json.loads(out)
        assert rows and all(r["status"] in ("ok", "error", "skipped", "timeout") for r in rows)
    else:
        assert refused_in_one_line(rc, err), (args, rc, err)
        assert not out_dir.exists(), "refused, yet a store was written"


@SETTINGS
@given(extra=st.lists(st.sampled_from(["--json", "--nope", "x", "-h", "--json=1", "", "--ns"]), max_size=3))
def test_plugins_lists_or_refuses(extra):
    rc, out, err = call(["plugins", *extra])
    if "-h" in extra and rc == 0:
        return
    if rc == 0:
        if "--json" in extra:
            json.loads(out)
    else:
        assert refused_in_one_line(rc, err) or rc == 1, (extra, rc, err)


@SETTINGS
@given(name=st.one_of(st.text(max_size=20), st.sampled_from(["../../x", "/abs/path", "..", ".", "a/b", "ok-name",
                                                               "C:\\x", "x\x00y", ".hidden", "name.v2"])))
def test_grid_name_never_leaves_the_output_folder(name):
    text = f"name = {json.dumps(name, ensure_ascii=False)}\n[cells]\nn_s = [64]\nr = [0.25]\np = [0.1]\n"
    try:
        g = parse_grid(text, source="fuzz.toml")
    except BadInput as exc:
        assert "name" in str(exc) or "not valid TOML" in str(exc)
        return
    out = Path("/tmp/out-root")
    target = (out / g.name).resolve()
    assert target.parent == out.resolve() and g.name not in ("", ".", "..") and "/" not in g.name, g.name


BASE = {"--plugins": "linear", "--ns": "64", "--r": "0.25", "--p": "0.1", "--seed": "0", "--max-samples": "64",
        "--min-samples": "64", "--timeout": "60", "--workers": "1", "--executor": "local"}
ONE_BAD = {"--plugins": PLUGINS, "--ns": RUN_NS, "--r": R, "--p": P, "--seed": st.sampled_from(["1", "-1", "x", "0,1"]),
           "--max-samples": SAMPLES, "--min-samples": SAMPLES, "--timeout": TIMEOUT, "--workers": WORKERS,
           "--executor": EXECUTOR}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(data=st.data())
def test_run_with_one_option_garbled(tmp_path_factory, data):
    """A valid cheap run with one option replaced by a generated value: it runs, or refuses in one line."""
    opt = data.draw(st.sampled_from(sorted(ONE_BAD)))
    value = data.draw(ONE_BAD[opt])
    args = dict(BASE, **{opt: value})
    out_dir = tmp_path_factory.mktemp("fuzz1") / "store"
    argv = ["run", *[x for kv in args.items() for x in kv], "--device", "cpu", "--out", str(out_dir), "--json"]
    rc, out, err = call(argv)
    if rc in (0, 1):
        assert json.loads(out)
    else:
        assert refused_in_one_line(rc, err) and opt.lstrip("-").split("-")[0] in err, (argv, err)
        assert not out_dir.exists()


def test_only_bad_input_is_exit_2_other_errors_keep_their_traceback(monkeypatch):
    import pytest

    import decoderbench.model.theory as theory

    def broken(*a, **k):
        raise ValueError("an internal bug, not the user's fault")

    monkeypatch.setattr(theory, "cell_theory", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["theory", "--ns", "64", "--r", "0.25", "--p", "0.1"])


def test_symmetry_p_names_the_option():
    rc, _, err = call(["symmetry", "--p", "abc", "--ns", "64"])
    assert refused_in_one_line(rc, err) and "--p" in err, err
