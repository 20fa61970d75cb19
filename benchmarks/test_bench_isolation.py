"""Cost of isolation per unit: one unit run in a worker process against the same unit in-process, and the
one-time cost of describing a third-party plugin in a worker (discovery).

Run: ``pytest benchmarks/test_bench_isolation.py --benchmark-enable`` (about a minute). Nothing is asserted
about time. The unit: ``relu`` at ``n_s = 256, r = 0.25, p = 0.05``, seed 0, exactly 256 evaluation samples,
on the CPU (the cell of tests/adversarial). ``isolated`` runs its decoder in a worker forked from the
forkserver (started once, outside the timing, as in a run), the harness scoring; ``in_process`` runs it in
this process under the in-process guard. The ratio ``isolated / in_process`` is the price of isolation per
unit; the difference is about a worker's start and the pipe round trips of fit and decode.

``describe``: the discovery of one third-party entry point (examples/decoderbench-softshrink, installed as a
``.dist-info`` on ``sys.path``): a describing worker started, the module imported there, its description
read back. Paid once per run, whatever the number of units (``plugins.discovery_cost()``).

``third_party``: a unit of that third-party decoder (``softshrink``, the cell above), isolated as by default.
Where the harness runs as root, ``nobody`` is its worker's user as by default (the worker drops its privileges,
gets a private home, reaches the Python environment through descriptors), ``root`` keeps the worker root
(``DECODERBENCH_WORKER_USER=root``): their ratio is the price of the change of user (skipped where not root).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from decoderbench.contract import registry as plugins
from decoderbench.run import worker
from decoderbench.run.runner import WorkUnit

UNIT = WorkUnit(256, 64, 0.05, "relu", seed=0, min_samples=256, max_samples=256, device="cpu")
ROOT = Path(__file__).resolve().parents[1]


def _row(isolate: bool) -> dict:
    row = worker.run_guarded(UNIT, worker.Guard(isolate=isolate))
    assert row["status"] == "ok" and row["isolated"] is isolate, row
    return row


@pytest.fixture(scope="module", autouse=True)
def warm():
    _row(True)  # the forkserver (torch preloaded) starts once per run: not part of a unit's cost
    _row(False)


@pytest.mark.parametrize("isolate", [False, True], ids=["in_process", "isolated"])
def test_unit(benchmark, isolate):
    rows = benchmark.pedantic(_row, args=(isolate,), rounds=5, iterations=1)
    benchmark.extra_info["n_samples"] = rows["n_eval"] if "n_eval" in rows else None


@pytest.fixture
def softshrink(monkeypatch):
    """The example plugin installed as a .dist-info in a folder other users can read (a root harness's worker
    for it runs as nobody), removed after."""
    where = Path(tempfile.mkdtemp(prefix="decoderbench-bench-"))
    where.chmod(0o755)
    info = where / "decoderbench_softshrink-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: decoderbench-softshrink\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[decoderbench]\nsoftshrink = decoderbench_softshrink\n")
    monkeypatch.syspath_prepend(str(where))
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "decoderbench-softshrink"))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,softshrink")
    plugins.reset()
    yield
    plugins.reset()
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the harness is not root")
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_third_party(benchmark, softshrink, monkeypatch, user):
    monkeypatch.setenv(worker.WORKER_USER_ENV, user)
    unit = WorkUnit(256, 64, 0.05, "softshrink", seed=0, min_samples=256, max_samples=256, device="cpu")

    def row():
        r = worker.run_guarded(unit, worker.Guard())
        assert r["status"] == "ok" and r["isolated"], r["error"]

    row()  # described once (not part of a unit's cost)
    benchmark.pedantic(row, rounds=5, iterations=1)


def test_describe(benchmark, softshrink):
    def discover():
        plugins.reset()  # forget the cache and the describing worker: a cold discovery
        assert plugins.described(plugins.get_decoder("softshrink")) is not None
        return plugins.discovery_cost()

    try:
        cost = benchmark.pedantic(discover, rounds=3, iterations=1)
        assert cost["worker_starts"] == 1
    finally:
        plugins.reset()
