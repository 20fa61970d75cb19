"""The Ray executor: same rows, same numbers as the local run (a local Ray instance with two CPUs).

Skipped with a reason when Ray is not installed (`pip install -e ".[ray]"`). The bad-input checks
(Ray missing, unreachable --address) run either way.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest

from decoderbench.contract import registry as plugins
from decoderbench.cli import main
from decoderbench.run.worker import Guard, run_guarded

sys.path.insert(0, str(Path(__file__).parent))
from test_determinism import CELLS, builtin_names, numbers, units  # noqa: E402


def _err_line(args) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, [ln for ln in err.getvalue().splitlines() if ln.strip()]


def test_ray_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc, lines = _err_line(["run", "--plugins", "linear", "--ns", "256", "--executor", "ray", "--out",
                           str(tmp_path / "never")])
    assert rc == 2 and len(lines) == 1 and 'pip install -e ".[ray]"' in lines[0], lines
    assert not (tmp_path / "never").exists()


ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install -e '.[ray]')")


def test_unreachable_address_is_refused_before_anything_runs(tmp_path):
    rc, lines = _err_line(["run", "--plugins", "linear", "--ns", "256", "--executor", "ray", "--address",
                           "127.0.0.1:1", "--out", str(tmp_path / "never")])
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: --address 127.0.0.1:1"), lines
    assert not (tmp_path / "never").exists()
    rc, lines = _err_line(["run", "--plugins", "linear", "--ns", "256", "--executor", "ray", "--address", "nonsense"])
    assert rc == 2 and "--address must be HOST:PORT" in lines[0]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows(local_ray):
    from decoderbench.run.ray_executor import RayExecutor

    names = builtin_names()
    us = units(CELLS, names)
    local = numbers(run_guarded(u, Guard(isolate=False)) for u in us)
    remote = numbers(row for _, row in RayExecutor(Guard(isolate=False))(us))
    assert remote == local and len(local) == len(us)


def test_cli_ray_run_into_a_store_equals_local(local_ray, tmp_path):
    cell = ["--ns", "256", "--r", "0.25,0.5", "--p", "0.05", "--max-samples", "256", "--min-samples", "256",
            "--device", "cpu", "--plugins", "linear,relu,topk,batchtopk,oracle", "--json"]
    a = io.StringIO()
    with contextlib.redirect_stdout(a):
        assert main(["run", *cell, "--out", str(tmp_path / "local")]) == 0
    b = io.StringIO()
    with contextlib.redirect_stdout(b):
        assert main(["run", *cell, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    ra, rb = json.loads(a.getvalue()), json.loads(b.getvalue())
    assert numbers(ra) == numbers(rb) and len(ra) == 10
    assert plugins.decoders()  # the driver's registry is intact
