"""The sweep: a grid and decoders in, work units out, rows computed or reused, one writer to the store.

The pieces are separate so that a later executor can fan units out over processes or machines:

* :func:`units_for` turns a grid and decoder names into plain, picklable ``WorkUnit`` s (the device
  already resolved, so that it is part of each unit's key);
* :func:`plan` splits them into rows already done in the store (reused) and units to compute;
* an executor yields ``(unit, row)`` pairs as rows finish, in any order: :func:`make_executor` builds
  one from ``--executor local|ray``, ``--workers`` and a :class:`~decoderbench.run.worker.Guard`
  (isolation, time and memory limits); every executor runs each unit through
  :func:`decoderbench.run.worker.run_guarded`, so the rows are the same whichever runs them;
* :func:`run_sweep` is the single writer: it stamps each finished row (command, versions, time) and
  writes it to the store at once, then drives the progress bar.
"""

from __future__ import annotations

import datetime as _dt
import functools
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import BadInput
from .._version import __version__
from .grids import Grid
from .runner import RESULTS_FORMAT, WorkUnit, resolve_device, run_unit  # noqa: F401 (resolve_device, run_unit re-exported)
from ..results.store import STORE_FORMAT, ResultsStore

BROKEN_VERSION = "?"  # the version runner.run_unit uses in the key of a decoder that failed to load


def decoder_versions(names: Iterable[str]) -> dict[str, str]:
    """name -> registered version (``?`` for a decoder whose plugin failed to load)."""
    from ..contract import registry as plugins

    reg = plugins.decoders()
    return {n: (reg[n].version if n in reg else BROKEN_VERSION) for n in names}


def units_for(grid: Grid, decoders: list[str], device: str = "cpu") -> list[WorkUnit]:
    """Every (cell, seed, decoder) unit of the grid, cell-major, with the grid's sampling and options.

    ``device`` must already be resolved (:func:`resolve_device`): it is part of every unit's key.
    """
    if device == "auto":
        raise BadInput("units_for: resolve the device first (resolve_device('auto'))")
    from .grids import MAX_UNITS

    cells = grid.cells()
    n = len(cells) * len(grid.seeds) * len(decoders)
    if n > MAX_UNITS:
        raise BadInput(f"grid {grid.name}: {len(cells)} cells x {len(grid.seeds)} seeds x {len(decoders)} decoders = "
                       f"{n} rows: more than {MAX_UNITS} in one run; split the grid or choose fewer decoders")
    units = []
    for n_s, n_d, p in cells:
        for seed in grid.seeds:
            for name in decoders:
                target, min_s, max_s = grid.sampling_for(name)
                units.append(WorkUnit(n_s, n_d, p, name, seed=seed, encoder=grid.encoder, device=device,
                                      dtype=grid.dtype, target_rel_se=target, min_samples=min_s, max_samples=max_s,
                                      options=grid.options_json(name)))
    return list(dict.fromkeys(units))


@dataclass
class Plan:
    """Units split by whether the store already holds their row."""

    keys: dict  # unit -> key
    reused: dict = field(default_factory=dict)  # unit -> stored row
    todo: list = field(default_factory=list)  # units to compute


def plan(units: list[WorkUnit], store: ResultsStore | None, force: bool = False) -> Plan:
    """Which rows exist (status ok or skipped, same key) and which must be computed."""
    versions = decoder_versions({u.decoder for u in units})
    pl = Plan(keys={u: u.key(versions[u.decoder]) for u in units})
    for u in units:
        row = None if (store is None or force) else store.done(pl.keys[u])
        if row is not None:
            pl.reused[u] = row
        else:
            pl.todo.append(u)
    return pl


def execute_serial(units: Iterable[WorkUnit], before: Callable[[WorkUnit], None] | None = None, guard=None
                   ) -> Iterator[tuple[WorkUnit, dict]]:
    """The serial executor: run the units one by one, yielding ``(unit, row)`` as each finishes, each decoder
    guarded (``worker.run_guarded`` under ``guard``, default ``worker.Guard()``: third-party decoders in a child
    process). The one serial loop: ``make_executor("local", 1)`` and ``run_sweep``'s default both use it."""
    from . import worker

    guard = guard or worker.Guard()
    for u in units:
        if before is not None:
            before(u)
        yield u, worker.run_guarded(u, guard)


EXECUTORS = ("local", "ray")


def check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise BadInput(f"--workers must be an integer >= 1, got {workers!r}")
    return workers


def make_executor(kind: str = "local", workers: int = 1, guard=None, address: str | None = None):
    """An executor ``(units, before) -> iterator of (unit, row)``; bad arguments raise BadInput before anything runs.

    ``local`` with one worker runs the units one by one in this process (each decoder guarded, third-party
    ones in a child process); with ``workers > 1`` each unit runs in a local worker process, ``workers`` at
    once. ``ray`` fans units out as Ray tasks (``address``: an existing cluster; default a local instance).
    """
    from . import worker

    if kind not in EXECUTORS:
        raise BadInput(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    check_workers(workers)
    guard = guard or worker.Guard()
    if kind == "ray":
        from . import ray_executor

        return ray_executor.RayExecutor(guard=guard, address=address, workers=workers)
    if address is not None:
        raise BadInput("--address is for --executor ray (the address of a Ray cluster)")
    if workers == 1:
        return functools.partial(execute_serial, guard=guard)

    def processes(units, before=None):
        return worker.execute_processes(units, before, guard=guard, workers=workers)

    return processes


def stamp(row: dict, unit: WorkUnit, command: str, grid: str) -> dict:
    """Add the provenance columns a stored row carries (the runner's row has the rest): ``rows.stamped``."""
    from ..results import rows
    from ..results.rows import process_key_columns

    u = unit.fields()
    return rows.stamped(row, u, process_key_columns(u),
                        provenance=dict(command=command, grid=grid, store_format=STORE_FORMAT,
                                        results_format=rows.RESULTS_FORMAT,
                                        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")),
                        defaults={"decoderbench_version": __version__})


@dataclass
class SweepResult:
    rows: list  # one row per unit, in unit order
    n_reused: int
    n_computed: int
    n_failed: int
    wall_s: float

    @property
    def counts_line(self) -> str:
        return (f"{self.n_reused} rows reused, {self.n_computed} computed"
                + (f" ({self.n_failed} failed)" if self.n_failed else "") + f" in {self.wall_s:.1f} s")


def unit_label(u: WorkUnit) -> str:
    return f"n_s={u.n_s} r={u.n_d / u.n_s:.3g} p={u.p:g} seed={u.seed} {u.decoder}"


def run_sweep(units: list[WorkUnit], store: ResultsStore | None = None, force: bool = False, command: str = "",
              grid: str = "", progress: bool = False, executor=execute_serial) -> SweepResult:
    """Compute the units' missing rows (all of them with ``force``), writing each to ``store`` at once.

    ``executor(units, before)`` yields ``(unit, row)`` pairs in any order; this function is the only
    writer. With ``progress`` a tqdm bar on stderr shows the current cell and decoder and an ETA; with
    ``progress="lines"`` plain lines (rows done, current unit, ETA) at most every 30 s, for a log.
    """
    t0 = time.perf_counter()
    if store is not None:
        store.clean_temporaries()
    pl = plan(units, store, force)
    results: dict = dict(pl.reused)
    n_failed = 0
    bar = None
    if progress == "lines" and pl.todo:  # stderr not a terminal: plain lines now and then (progress.py)
        from .progress import LineProgress

        bar = LineProgress(total=len(pl.todo), reused=len(pl.reused))
    elif progress and pl.todo:
        from tqdm import tqdm

        width = shutil.get_terminal_size((100, 20)).columns  # falls back when the terminal reports 0
        bar = tqdm(total=len(pl.todo), file=sys.stderr, unit="row", ncols=max(width, 60),
                   desc=f"{len(pl.reused)} reused", bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} "
                   "[{elapsed}<{remaining}]")

    def before(u: WorkUnit) -> None:
        if bar is not None:
            bar.set_description_str(unit_label(u), refresh=True)

    # with --force, a stored row counts as done only if another run rewrote it since the plan
    seen_hash = {u: (store.read(pl.keys[u]) or {}).get("row_hash") for u in pl.todo} if (store is not None and force) \
        else {}
    locks: dict = {}  # unit -> held claim
    deferred: list = []  # units another process had claimed
    counts = {"reused": len(pl.reused), "computed": 0, "failed": 0}

    def reusable(u: WorkUnit) -> dict | None:
        """The stored row of u if it is done (with --force: only if another run wrote it since the plan)."""
        row = store.done(pl.keys[u])
        if row is not None and force and row.get("row_hash") == seen_hash.get(u):
            return None
        return row

    def claimed(todo):
        """The units to compute, each claimed in the store first (lazily, as the executor asks)."""
        for u in todo:
            if store is None:
                yield u
                continue
            lock = store.claim(pl.keys[u])
            if lock is None:  # another run is computing it
                deferred.append(u)
                continue
            row = reusable(u)  # finished by another run since the plan
            if row is not None:
                lock.release()
                results[u] = row
                counts["reused"] += 1
                if bar is not None:
                    bar.update(1)
                continue
            locks[u] = lock
            yield u

    def take(u: WorkUnit, row: dict) -> None:
        row = stamp(row, u, command, grid)
        if row.get("key") != pl.keys[u]:  # the runner and the plan must agree on the key
            raise RuntimeError(f"key mismatch for {unit_label(u)}: planned {pl.keys[u]}, row {row.get('key')}")
        if store is not None:
            store.write(row)  # written before its claim is released
        lock = locks.pop(u, None)
        if lock is not None:
            lock.release()
        results[u] = row
        counts["computed"] += 1
        counts["failed"] += row.get("status") in ("error", "timeout")
        if bar is not None:
            bar.update(1)

    try:
        for u, row in executor(claimed(pl.todo), before):
            take(u, row)
        for u in deferred:  # wait for the other run's claim, then reuse its row (or compute, if it failed)
            locks[u] = store.claim(pl.keys[u], wait=True)
            row = reusable(u)
            if row is not None:
                locks.pop(u).release()
                results[u] = row
                counts["reused"] += 1
                if bar is not None:
                    bar.update(1)
                continue
            for uu, row in executor([u], before):
                take(uu, row)
    finally:
        for lock in locks.values():
            lock.release()
        if bar is not None:
            bar.close()
    rows = [results[u] for u in units if u in results]
    return SweepResult(rows=rows, n_reused=counts["reused"], n_computed=counts["computed"], n_failed=counts["failed"],
                       wall_s=time.perf_counter() - t0)
