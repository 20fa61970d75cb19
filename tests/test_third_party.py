"""Third-party decoders: a separate distribution, installed with pip, found through the entry point.

Two distributions are built and installed with the running interpreter's pip (offline: no index, no
build isolation, setuptools from this environment): `examples/decoderbench-softshrink/`, and the
plugin example of README.md (the code between its `plugin-example` markers, copied into a fresh
folder). Each goes into a fresh `--target` folder put on `PYTHONPATH` of the `decoderbench` command, so
the shared environment is never modified and nothing needs uninstalling; importlib.metadata finds the
distribution there exactly as in site-packages. `run --plugins all` is checked with the entry points
limited (DECODERBENCH_PLUGINS) to the rug, linear and the new plugin, to keep it to seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from decoderbench.contract import registry as plugins
from decoderbench.run.runner import WorkUnit, run_unit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "decoderbench-softshrink"
CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "512", "--device", "cpu"]


def pip_install(src: Path, target: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def cli(args: list[str], target: Path, allow: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DECODERBENCH_PLUGINS": allow,
           "PYTHONPATH": os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
    script = Path(sys.executable).with_name("decoderbench")  # the console script of this environment
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "decoderbench"]
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def copy_source(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def softshrink_site(tmp_path_factory):
    src = copy_source(EXAMPLE, tmp_path_factory.mktemp("src") / EXAMPLE.name)
    target = tmp_path_factory.mktemp("site")
    pip_install(src, target)
    return target


def test_example_is_a_distribution_of_its_own():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "decoderbench-softshrink"
    assert meta["project"]["entry-points"]["decoderbench"] == {"softshrink": "decoderbench_softshrink"}
    assert not (EXAMPLE / "build").exists() and not list(EXAMPLE.glob("*.egg-info"))


def test_installed_example_is_listed_by_plugins(softshrink_site, tmp_path):
    eps = next(softshrink_site.glob("decoderbench_softshrink-*.dist-info")) / "entry_points.txt"
    assert "[decoderbench]" in eps.read_text() and "softshrink = decoderbench_softshrink" in eps.read_text()
    out = cli(["plugins", "--json"], softshrink_site, "rug,linear,softshrink", tmp_path)
    assert out.returncode == 0, out.stderr
    listed = {r["name"]: r for r in json.loads(out.stdout)}
    assert listed["softshrink"]["kind"] == "elementwise"
    assert listed["softshrink"]["source"] == "decoderbench-softshrink==0.1.0"
    assert listed["linear"]["source"].startswith("decoderbench==")


@pytest.mark.slow
def test_run_all_includes_the_installed_example(softshrink_site, tmp_path):
    out = cli(["run", "--plugins", "all", *CELL, "--json"], softshrink_site, "rug,linear,softshrink", tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"linear", "softshrink"}
    assert all(r["status"] == "ok" for r in rows.values())
    ss = rows["softshrink"]
    assert ss["source"] == "decoderbench-softshrink==0.1.0"
    assert set(ss["params"]) >= {"a", "lam", "c"}
    # a shrinkage beats the best linear decoder at this cell by far more than the noise
    assert ss["loss"] + 3 * ss["loss_se"] < rows["linear"]["loss"] - 3 * rows["linear"]["loss_se"]


def test_installed_example_in_process(softshrink_site, monkeypatch):
    monkeypatch.syspath_prepend(str(softshrink_site))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,softshrink")
    plugins.reset()
    try:
        reg = plugins.get_decoder("softshrink")
        assert reg.source == "decoderbench-softshrink==0.1.0" and reg.plugin == "softshrink"
        # described by a worker, not imported here: in-process it refuses to run until asked for explicitly
        assert plugins.described(reg)["kind"] == "elementwise" and "decoderbench_softshrink" not in sys.modules
        row = run_unit(WorkUnit(256, 64, 0.05, "softshrink", min_samples=256, max_samples=256))
        assert row["status"] == "error" and "runs only in a worker" in row["error"], row
        plugins.trust_in_process()  # what --no-isolate does
        row = run_unit(WorkUnit(256, 64, 0.05, "softshrink", min_samples=256, max_samples=256))
        assert row["status"] == "ok" and row["loss"] > 0
        assert "decoderbench_softshrink" in sys.modules
    finally:
        monkeypatch.undo()
        plugins.reset()


# ----------------------------------------------------------------------------- README example


def readme_example() -> tuple[str, str, str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- plugin-example:start -->(.*?)<!-- plugin-example:end -->", text, re.S)
    assert m, "README.md lacks the plugin-example markers"
    section = m.group(1)
    py = re.findall(r"```python\n(.*?)```", section, re.S)
    toml = re.findall(r"```toml\n(.*?)```", section, re.S)
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)
    install = [line for block in bash for line in block.splitlines() if "pip install" in line]
    assert len(py) == 1 and len(toml) == 1 and len(install) == 1, "one python, one toml block, one install line"
    return py[0], toml[0], install[0]


@pytest.mark.slow
def test_readme_plugin_example_works_when_copied(tmp_path):
    module, pyproject, install = readme_example()
    meta = tomllib.loads(pyproject)
    dist = meta["project"]["name"]
    (ep_name, ep_module), = meta["project"]["entry-points"]["decoderbench"].items()
    (mod_name,) = meta["tool"]["setuptools"]["py-modules"]
    assert ep_module == mod_name
    assert f"./{dist}" in install  # the install line installs the folder the README describes
    src = tmp_path / dist
    src.mkdir()
    (src / f"{mod_name}.py").write_text(module)
    (src / "pyproject.toml").write_text(pyproject)
    target = tmp_path / "site"
    pip_install(src, target)

    out = cli(["plugins", "--json"], target, f"rug,linear,{ep_name}", tmp_path)
    assert out.returncode == 0, out.stderr
    mine = [r for r in json.loads(out.stdout) if (r.get("source") or "").startswith(f"{dist}==")]
    assert len(mine) == 1 and mine[0]["kind"] in ("elementwise", "filtering", "reference", "iterative", "learned")
    name = mine[0]["name"]

    out = cli(["run", "--plugins", "all", *CELL, "--json"], target, f"rug,linear,{ep_name}", tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert rows[name]["status"] == "ok" and rows[name]["loss"] > 0 and rows["linear"]["status"] == "ok"


# ----------------------------------------------------------------------------- notebook code = the same code installed

NOTEBOOK_CODE = '''
import torch

from decoderbench import Decoder, hookimpl
from decoderbench.contract.activation import activation_decoder


class Scaled(Decoder):
    """c relu(z - t), t the 1 - p quantile of the training z, c by least squares."""

    name = "scaled"
    kind = "elementwise"

    def fit(self, train):
        z, x = train.pairs(64)
        self.t = float(torch.quantile(z.reshape(-1)[:100000], 1 - self.ctx.p))
        y = torch.relu(z - self.t)
        self.c = float((x * y).sum() / (y * y).sum())
        return {"t": self.t, "c": self.c}

    def decode(self, z):
        return self.c * torch.relu(z - self.t)


def squash(y):
    return torch.nn.functional.softplus(y, beta=8.0)


@hookimpl
def decoderbench_register_decoders(register):
    register(Scaled)
    register(activation_decoder(squash))
'''

NB_PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "decoderbench-nbcheck"
version = "0.1.0"
dependencies = ["decoderbench"]

[project.entry-points.decoderbench]
nbcheck = "decoderbench_nbcheck"

[tool.setuptools]
py-modules = ["decoderbench_nbcheck"]
'''


@pytest.mark.slow
def test_notebook_decoder_row_equals_the_installed_plugin_row(tmp_path):
    """A Decoder subclass and an activation defined in a session (no install step) give the rows that the
    same code installed as a third-party plugin gives through `decoderbench run` (there: isolated in a worker
    process), bit for bit: loss, SE, samples, fitted parameters (timings aside)."""
    import decoderbench as db
    from decoderbench import api

    src = tmp_path / "decoderbench-nbcheck"
    src.mkdir()
    (src / "decoderbench_nbcheck.py").write_text(NOTEBOOK_CODE)
    (src / "pyproject.toml").write_text(NB_PYPROJECT)
    target = tmp_path / "site"
    pip_install(src, target)
    import torch

    # the same torch thread count as this process: fitted float64 sums move in their last bits with it
    out = cli(["run", "--plugins", "scaled,squash", *CELL, "--json", "--threads", str(torch.get_num_threads())],
              target, "rug,nbcheck", tmp_path)
    assert out.returncode == 0, out.stderr
    installed = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert {r["source"] for r in installed.values()} == {"decoderbench-nbcheck==0.1.0"}
    assert all(r["isolated"] for r in installed.values())

    notebook: dict = {"__name__": "notebook"}
    exec(compile(NOTEBOOK_CODE, "<notebook cell>", "exec", dont_inherit=True), notebook)  # as a notebook cell defines them
    df = db.evaluate([notebook["Scaled"], notebook["squash"]], n_s=256, r=0.25, p=0.05, max_samples=512,
                     device="cpu", progress=False)
    mine = {r["decoder"]: r for r in api.records(df)}
    assert set(mine) == set(installed) == {"scaled", "squash"}
    for name, row in mine.items():
        assert row["source"].startswith("local:notebook.") and row["isolated"] is False
        assert row["status"] == "ok", row["error"]
        for col in ("loss", "loss_se", "n_eval", "ratio_e2", "status"):
            assert row[col] == installed[name][col], (name, col)
        drop = lambda d: {k: v for k, v in d.items() if not k.endswith("_s")}  # noqa: E731
        assert drop(row["params"]) == drop(installed[name]["params"]), name


@pytest.mark.slow
def test_readme_fista_example_works_when_copied():
    """The README's second example (an iterative decoder): it passes the contract checks from a session and
    beats the best linear decoder by far at the test cell."""
    import decoderbench as db
    from decoderbench import api
    from decoderbench.testing import check_decoder

    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- fista-example:start -->\s*```python\n(.*?)```\s*<!-- fista-example:end -->", text, re.S)
    assert m, "README.md lacks the fista-example block"
    ns: dict = {"__name__": "readme_fista"}
    exec(compile(m.group(1), "<README fista>", "exec", dont_inherit=True), ns)  # as a fresh session would
    row = check_decoder(ns["Fista"], options={"n_iter": 30})
    assert row["kind"] == "iterative" and row["source"] == "local:readme_fista.Fista"
    lin = api.records(db.evaluate(["linear"], n_s=256, r=0.25, p=0.05, max_samples=512, device="cpu",
                                  progress=False))[0]
    assert row["loss"] < 0.5 * lin["loss"]
