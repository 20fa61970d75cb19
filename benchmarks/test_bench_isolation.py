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
"""

from __future__ import annotations

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


def test_describe(benchmark, tmp_path, monkeypatch):
    info = tmp_path / "decoderbench_softshrink-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: decoderbench-softshrink\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[decoderbench]\nsoftshrink = decoderbench_softshrink\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "decoderbench-softshrink"))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,softshrink")

    def discover():
        plugins.reset()  # forget the cache and the describing worker: a cold discovery
        assert plugins.described(plugins.get_decoder("softshrink")) is not None
        return plugins.discovery_cost()

    try:
        cost = benchmark.pedantic(discover, rounds=3, iterations=1)
        assert cost["worker_starts"] == 1
    finally:
        plugins.reset()
