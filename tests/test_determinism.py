"""Determinism: the same unit gives bit-identical numbers for every built-in decoder, whatever the
torch thread count (1 or 2), the order of cells and decoders, in-process, isolated or in worker
processes (tests/test_ray.py adds the Ray executor). Small cells (n_s = 256), 256 samples, the cheap
options of tests/test_conformance.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from decoderbench.contract import registry as plugins
from decoderbench.run.runner import WorkUnit
from decoderbench.run.worker import Guard, execute_processes, run_guarded

sys.path.insert(0, str(Path(__file__).parent))
from test_conformance import CHEAP  # noqa: E402

CELLS = [(256, 64, 0.05), (256, 128, 0.1)]


def builtin_names() -> list[str]:
    return sorted(n for n, r in plugins.decoders().items() if r.source.startswith("decoderbench=="))


def units(cells, names) -> list[WorkUnit]:
    return [WorkUnit(n_s, n_d, p, name, min_samples=256, max_samples=256,
                     options=json.dumps(CHEAP.get(name, {}), sort_keys=True)) for n_s, n_d, p in cells for name in names]


def numbers(rows) -> dict:
    return {r["key"]: (r["decoder"], r["status"], r["loss"], r["loss_se"], r["n_eval"]) for r in rows}


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference():
    """Every built-in on both cells, one thread, in order, in-process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = numbers(run_guarded(u, Guard(isolate=False)) for u in units(CELLS, builtin_names()))
    finally:
        torch.set_num_threads(before)
    assert len(ref) == len(CELLS) * len(builtin_names()) >= 20
    assert all(v[1] == "ok" for v in ref.values()), {k: v for k, v in ref.items() if v[1] != "ok"}
    return ref


def test_two_threads_reversed_order_same_bits(reference, threads):
    threads(2)
    again = numbers(run_guarded(u, Guard(isolate=False)) for u in units(CELLS[::-1], builtin_names()[::-1]))
    assert again == reference


def test_two_worker_processes_same_bits(reference):
    rows = [row for _, row in execute_processes(units(CELLS, builtin_names()), guard=Guard(isolate=False), workers=2,
                                                threads=1)]
    assert numbers(rows) == reference


def test_isolated_same_bits(reference):
    # one cell; of the trained architectures only `trained` (the others share its code path)
    names = [n for n in builtin_names() if not n.startswith("trained-")]
    rows = [run_guarded(u, Guard(isolate=True)) for u in units(CELLS[:1], names)]
    assert all(r["isolated"] for r in rows)
    got = numbers(rows)
    assert got == {k: reference[k] for k in got}


def test_worker_processes_take_their_cell_columns_from_the_parent():
    """execute_processes computes a cell's theory and exact references once and hands them to its units'
    processes (a fresh process per unit recomputed them: 0.7 s per unit at n_s 4096): the same values."""
    from decoderbench.run import runner

    u = WorkUnit(256, 64, 0.05, "linear", min_samples=256, max_samples=256)
    cols = runner.cell_columns(u)
    assert set(runner.EXACT_COLUMNS) <= set(cols) and cols["mmse_elementwise_exact"] is not None
    rows = [row for _, row in execute_processes([u, u], guard=Guard(isolate=False), workers=2, threads=1)]
    assert all({k: r[k] for k in cols} == cols for r in rows)
    try:  # a row takes the handed columns
        runner.hand_cell_columns(u, {**cols, "mmse_elementwise_exact": 1.0})
        assert runner.start_row(u)["mmse_elementwise_exact"] == 1.0
    finally:
        runner._HANDED.clear()
