"""Guarded execution (decoderbench.run.worker): every fault costs one row, through a real installed plugin.

`tests/faulty/decoderbench-faulty/` is a distribution of decoders that raise, return NaN or a wrong
shape, sleep forever, call os._exit / sys.exit, segfault and allocate until memory runs out. It is
installed with pip into a fresh --target folder (as tests/test_third_party.py installs the softshrink
example) and run through the `decoderbench` command: each fault is one row with status `error` or
`timeout` and its reason, the honest decoders' rows are computed and stored, the exit code is 1.
Cells are tiny (n_s = 256, 256 samples) and the sleeping decoder's limit is 3 s, set in the grid file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decoderbench.results.store import ResultsStore
from decoderbench.run.worker import Guard, check_timeout

sys.path.insert(0, str(Path(__file__).parent))
from test_third_party import cli, copy_source, pip_install  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAULTY = ROOT / "tests" / "faulty" / "decoderbench-faulty"
ALLOW = "rug,linear,faulty"
GRID = """
name = "faults"
[cells]
n_s = [256]
r = [0.25]
p = [0.05]
[sampling]
min_samples = 256
max_samples = 256
[timeout]
faulty_sleeps = 3
"""
EXPECT = {  # decoder -> (status, a piece of the reason)
    "faulty_raises": ("error", "RuntimeError: boom in fit"),
    "faulty_nan": ("error", "decode returned non-finite values"),
    "faulty_shape": ("error", "decode returned shape (256, 255), expected (256, 256)"),
    "faulty_sleeps": ("timeout", "time limit of 3 s"),
    "faulty_os_exit": ("error", "exited with code 3"),
    "faulty_sys_exit": ("error", "SystemExit: the decoder called sys.exit(0)"),
    "faulty_segfault": ("error", "SIGSEGV"),
    "faulty_memory": ("error", "allocate"),
}
HONEST = ("linear", "faulty_ok", "faulty_prints")  # faulty_prints: `--json` stdout stays JSON


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory):
    src = copy_source(FAULTY, tmp_path_factory.mktemp("src") / FAULTY.name)
    target = tmp_path_factory.mktemp("site")
    pip_install(src, target)
    return target


def _grid(tmp_path: Path) -> Path:
    g = tmp_path / "faults.toml"
    g.write_text(GRID)
    return g


def _check(out: subprocess.CompletedProcess, store: Path, names) -> dict:
    assert out.returncode == 1, out.stderr  # failed rows: exit 1, and the run went on
    rows = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert set(rows) == set(names)
    for name in HONEST:
        assert rows[name]["status"] == "ok" and rows[name]["loss"] > 0, rows[name]
    for name in names:
        if name in EXPECT:
            status, why = EXPECT[name]
            assert rows[name]["status"] == status, (name, rows[name]["status"], rows[name]["error"])
            assert why in rows[name]["error"], (name, rows[name]["error"])
            assert rows[name]["loss"] is None
    if rows["faulty_ok"]["isolated"]:  # its decoder ran in a worker of its own, never beside the scorer
        assert rows["faulty_ok"]["params"]["in_decoder_worker"] is True, rows["faulty_ok"]["params"]
    stored = {r["decoder"]: r for r in ResultsStore(store, create=False).rows()}
    assert set(stored) == set(names)  # every row stored, failures included
    assert {k: v["status"] for k, v in stored.items()} == {k: v["status"] for k, v in rows.items()}
    return rows


def test_every_fault_is_one_row_isolated_by_default(faulty_site, tmp_path):
    names = [*HONEST, *EXPECT]
    store = tmp_path / "store"
    out = cli(["run", "--grid", str(_grid(tmp_path)), "--plugins", ",".join(names), "--memory-limit", "2000",
               "--device", "cpu", "--out", str(store), "--json", "--leaderboard", str(tmp_path / "lb")],
              faulty_site, ALLOW, tmp_path)
    rows = _check(out, store, names)
    assert rows["linear"]["isolated"] is False  # built-in: in-process by default
    assert all(rows[n]["isolated"] is True for n in names if n.startswith("faulty_"))  # third-party: a worker
    # the same rows whether or not a fault ran beside them
    alone = cli(["run", "--grid", str(_grid(tmp_path)), "--plugins", "linear,faulty_ok", "--device", "cpu", "--json"],
                faulty_site, ALLOW, tmp_path)
    assert alone.returncode == 0, alone.stderr
    for r in json.loads(alone.stdout):
        assert r["loss"] == rows[r["decoder"]]["loss"] and r["loss_se"] == rows[r["decoder"]]["loss_se"]


def test_every_fault_is_one_row_with_two_worker_processes(faulty_site, tmp_path):
    names = [*HONEST, *EXPECT]
    store = tmp_path / "store"
    out = cli(["run", "--grid", str(_grid(tmp_path)), "--plugins", ",".join(names), "--memory-limit", "2000",
               "--workers", "2", "--device", "cpu", "--out", str(store), "--json", "--leaderboard",
               str(tmp_path / "lb")], faulty_site, ALLOW, tmp_path)
    _check(out, store, names)


def test_in_process_guard_catches_sys_exit_and_sleep(faulty_site, tmp_path):
    """--no-isolate: sys.exit becomes an error row, a sleeping decoder a timeout row (SIGALRM)."""
    names = [*HONEST, "faulty_sys_exit", "faulty_sleeps", "faulty_raises", "faulty_nan"]
    store = tmp_path / "store"
    out = cli(["run", "--grid", str(_grid(tmp_path)), "--plugins", ",".join(names), "--no-isolate", "--device", "cpu",
               "--out", str(store), "--json", "--leaderboard", str(tmp_path / "lb")], faulty_site, ALLOW, tmp_path)
    rows = _check(out, store, names)
    assert not any(r["isolated"] for r in rows.values())


def test_cli_timeout_overrides_the_grid(faulty_site, tmp_path):
    out = cli(["run", "--grid", str(_grid(tmp_path)), "--plugins", "faulty_sleeps,faulty_ok", "--timeout", "2",
               "--device", "cpu", "--json"], faulty_site, ALLOW, tmp_path)
    rows = {r["decoder"]: r for r in json.loads(out.stdout)}
    assert out.returncode == 1 and rows["faulty_ok"]["status"] == "ok"
    assert rows["faulty_sleeps"]["status"] == "timeout" and "time limit of 2 s" in rows["faulty_sleeps"]["error"]


@pytest.mark.parametrize("args,needle", [
    (["--timeout", "0"], "--timeout must be a positive number"),
    (["--timeout", "-3"], "--timeout must be a positive number"),
    (["--timeout", "nan"], "--timeout must be a positive number"),
    (["--timeout", "abc"], "--timeout must be a positive number"),
    (["--workers", "0"], "--workers must be an integer >= 1"),
    (["--workers", "two"], "--workers must be an integer >= 1"),
    (["--executor", "slurm"], "--executor must be one of local, ray"),
    (["--memory-limit", "1"], "--memory-limit must be"),
    (["--address", "127.0.0.1:1"], "--address"),
])
def test_bad_execution_options_are_refused_before_anything_runs(tmp_path, args, needle):
    from decoderbench.cli import main

    store = tmp_path / "never"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", "--plugins", "linear", "--ns", "256", "--out", str(store), *args])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err.getvalue()
    assert not store.exists()  # nothing ran, no store was made


def test_guard_checks():
    for bad in (0, -1, float("inf"), "x", True):
        with pytest.raises(ValueError, match="--timeout"):
            check_timeout(bad)
    g = Guard(timeout_s=5, timeouts={"vamp": 50})
    assert g.timeout_for("vamp") == 50 and g.timeout_for("relu") == 5
    with pytest.raises(ValueError, match="isolate"):
        Guard(isolate="sometimes")
