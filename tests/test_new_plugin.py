"""`decoderbench new-plugin NAME --kind KIND`: one template of every kind generated, installed and scored.

Each distribution is installed offline (no index, no build isolation) into one fresh --target folder, as
tests/test_third_party.py installs the example; then `decoderbench run` scores all five (each isolated in a
worker process, as any third-party decoder), and the tests each template ships pass against the installed
plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from decoderbench import KINDS, cli
from decoderbench.template import names_for, render_plugin

from test_third_party import CELL, cli as run_cli, pip_install


def test_every_kind_renders_a_distribution_with_its_contract_notes():
    for kind in KINDS:
        files = render_plugin(f"my-{kind}", kind)
        module = files[f"decoderbench_my_{kind}.py"]
        assert f'kind = "{kind}"' in module and "super().__init__(ctx)" in module
        assert "generator(purpose)" in module and "train.pairs(n)" in module and "version" in module
        assert f'my-{kind} = "decoderbench_my_{kind}"' in files["pyproject.toml"]
        compile(module, "module", "exec")
    assert "ctx.encoder" in render_plugin("x", "iterative")["decoderbench_x.py"]
    assert "encoder_weight" in render_plugin("x", "learned")["decoderbench_x.py"]


@pytest.mark.parametrize("args, words", [
    (["new-plugin", "bad name!"], "not a decoder name"),
    (["new-plugin", "ok", "--kind", "nope"], "--kind must be one of"),
    (["new-plugin", "all"], "reserved"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    assert cli.main([*args, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_template_of_every_kind_installs_runs_and_passes_its_own_test(shared_tmp, capsys):
    names = [f"my-{k}" for k in KINDS]
    for name, kind in zip(names, KINDS):
        assert cli.main(["new-plugin", name, "--kind", kind, "--dir", str(shared_tmp / "src")]) == 0
    assert cli.main(["new-plugin", names[0], "--dir", str(shared_tmp / "src")]) == 2  # never overwrites
    capsys.readouterr()
    target = shared_tmp / "site"
    for name in names:
        pip_install(shared_tmp / "src" / names_for(name)["dist"], target)
    allow = ",".join(["rug", *names])
    out = run_cli(["run", "--plugins", ",".join(names), *CELL, "--json"], target, allow, shared_tmp)
    assert out.returncode == 0, out.stderr
    rows = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(names)
    for name, kind in zip(names, KINDS):
        row = rows[name]
        assert row["status"] == "ok" and row["kind"] == kind and row["isolated"], (name, row["error"])
        assert row["source"] == f"{names_for(name)['dist']}==0.1.0"
        assert row["loss"] < row["trivial"], (name, row["loss"], row["trivial"])
    env = {**os.environ, "DECODERBENCH_PLUGINS": allow,
           "PYTHONPATH": os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
    tests = [str(shared_tmp / "src" / names_for(n)["dist"] / "tests") for n in names]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(shared_tmp),
                          *tests], capture_output=True, text=True, env=env, cwd=shared_tmp, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "5 passed" in res.stdout
