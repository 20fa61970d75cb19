"""The Python API: what a notebook calls and the command line wraps.

Three lines from a notebook to a table::

    import decoderbench as db
    df = db.evaluate([MyDecoder, "relu", "vamp", torch.nn.functional.gelu], n_s=4096, r=0.25, p=0.045)
    print(db.Board(df).markdown())

* :func:`evaluate` scores decoders on cells and returns one row per (cell, seed, decoder) as a pandas
  DataFrame with the results store's columns. ``decoders`` mixes registered names (``"relu"``, ``"all"``),
  :class:`~decoderbench.Decoder` subclasses defined in the session, and activations (a torch function or
  ``nn.Module`` ``act``, scored as ``act(a z + b)``: :mod:`decoderbench.contract.activation`). With ``store`` the rows
  are reused and added exactly as ``decoderbench run`` does; without it nothing touches the disk.
* :func:`theory` is ``decoderbench theory --json`` as a dict; :func:`load_results` reads a store;
  :func:`verify` recomputes a store's rows and returns the verdicts; :class:`Board` makes the leaderboard's
  tables, Markdown, figures and site from rows, computing their aggregate once.

**One resolver** (:func:`resolve`) turns each spec into what runs, a ``plugins.Registered`` (name, class,
kind, version, source): a registered name keeps its source (``decoderbench==...`` for the built-ins, the
distribution for an installed plugin); a class or callable of the session gets the source
``local:<module>.<qualname>`` and a version ending in ``+local.<digest of its code>`` (so a store never
reuses the row of an edited notebook function). Session code is the user's own: it runs in this process
(``isolate`` may ask for a worker process, which works only for classes the worker can import), and its
rows say so (``source`` ``local:...``, ``isolated`` False); installed third-party decoders keep their
isolation.

**Bad input** (a spec that is not a name, a ``Decoder`` subclass or a callable; an impossible cell; an
unknown or ill-typed option; an activation that fails, returns the wrong shape or non-finite values on a
test batch) raises ``ValueError`` (``decoderbench.errors.BadInput``) or ``TypeError`` naming it, before
anything runs and before a store is created or written.

The command line (``decoderbench run``, ``verify``, ``leaderboard``) parses its options into these calls
(:func:`build_grid`, :func:`prepare`, :func:`execute`, :func:`verify_rows`, :class:`Board`) and prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ._validate import SAMPLING_DEFAULTS
from .contract.decoder import STOP_COLUMNS
from .errors import BadInput
from .results import rows as _rows
from .contract.registry import hookimpl

ROW_COLUMNS = list(_rows.SUMMARY_COLUMNS)  # the summary columns (the row schema declares them)
DEFAULT_RESULTS = "results"
BOARD_SUBDIR = "board"  # a store's own boards: <store>/board/<grid name, or "all">
ADHOC_DEFAULTS = {"n_s": 4096, "p": 0.045, **SAMPLING_DEFAULTS}


# ----------------------------------------------------------------------------- cells and grids


def _as_list(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple, set, frozenset)):
        return list(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        out = v.tolist()
        return out if isinstance(out, list) else [out]
    return [v]


def build_grid(grid=None, *, n_s=None, r=None, n_d=None, p=None, seeds=None, encoder=None, dtype=None,
               target_se=None, min_samples=None, max_samples=None):
    """The grid a run means, and whether it is ad hoc: ``(Grid, adhoc)``.

    ``grid`` (a built-in grid's name, a TOML file, or a ``Grid``) with the cell axes given replacing its own;
    or, without ``grid``, the ad-hoc grid of the axes given (``n_s`` default 4096, ``r`` 0.25, ``p`` 0.045,
    seeds 0, precision 1%, 2048 to 131072 samples); with neither, the default grid. Axes are scalars or
    lists, as ``--ns/--r/--nd/--p/--seed`` take them."""
    from .run.grids import Grid, adhoc_grid, load_grid
    from ._validate import check_seed

    ns_l, r_l, nd_l, p_l = (_as_list(v) for v in (n_s, r, n_d, p))
    r_l = None if r_l is None else [float(_num("r", v)) for v in r_l]
    p_l = None if p_l is None else [float(_num("p", v)) for v in p_l]
    if min_samples is not None and max_samples is not None and min_samples > max_samples:
        raise BadInput(f"--min-samples must be at most --max-samples, got --min-samples {min_samples} > "
                       f"--max-samples {max_samples}")
    seeds_l = None if seeds is None else [check_seed(s) for s in _as_list(seeds)]
    if r_l is not None and nd_l is not None:
        raise BadInput("--r and --nd: give one of them, not both")
    adhoc = grid is None and any(v is not None for v in (ns_l, r_l, nd_l, p_l))
    if adhoc:
        g = adhoc_grid(ns_l or [ADHOC_DEFAULTS["n_s"]], r_l, nd_l, p_l or [ADHOC_DEFAULTS["p"]], seeds_l or [0],
                       target_rel_se=ADHOC_DEFAULTS["target_rel_se"] if target_se is None else target_se,
                       min_samples=(min(ADHOC_DEFAULTS["min_samples"], max_samples or ADHOC_DEFAULTS["max_samples"])
                                    if min_samples is None else min_samples),
                       max_samples=ADHOC_DEFAULTS["max_samples"] if max_samples is None else max_samples,
                       encoder=encoder or "rug", dtype=dtype or "float32")
        return g, True
    g = grid if isinstance(grid, Grid) else load_grid(grid if grid is not None else "default")
    g = g.override(ns=ns_l, r=r_l, nd=nd_l, p=p_l, seeds=seeds_l, target_rel_se=target_se, max_samples=max_samples,
                   min_samples=min_samples)
    if encoder is not None or dtype is not None:
        g = dataclasses.replace(g, encoder=encoder or g.encoder, dtype=dtype or g.dtype)
    return g, False


def _num(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise BadInput(f"{name} must be a number, got {v!r}")
    return v


def cells_grid(cells, *, seeds=None, encoder=None, dtype=None, target_se=None, min_samples=None, max_samples=None):
    """The ad-hoc grid of explicit cells: ``decoderbench.Cell`` s or ``(n_s, n_d, p)`` tuples."""
    from .contract.decoder import Cell
    from .run.grids import CellSpec

    items = [cells] if isinstance(cells, Cell) or (isinstance(cells, tuple) and len(cells) == 3
                                                  and not isinstance(cells[0], (Cell, tuple))) else list(cells)
    if not items:
        raise BadInput("cells: give at least one cell")
    specs = []
    for c in items:
        if not isinstance(c, Cell):
            if not (isinstance(c, (tuple, list)) and len(c) == 3):
                raise TypeError(f"cells: a cell is a decoderbench.Cell or an (n_s, n_d, p) tuple, got {c!r}")
            c = Cell(*c)
        specs.append(CellSpec(n_s=(c.n_s,), p=(c.p,), n_d=(c.n_d,)))
    first = specs[0]
    g, _ = build_grid(None, n_s=first.n_s[0], n_d=first.n_d[0], p=first.p[0], seeds=seeds, encoder=encoder,
                      dtype=dtype, target_se=target_se, min_samples=min_samples, max_samples=max_samples)
    return dataclasses.replace(g, specs=tuple(specs))


# ----------------------------------------------------------------------------- decoders: the resolver


def check_decoder_name(name: str) -> str:
    """A decoder name must look like one (it names rows and files)."""
    if not name.replace("-", "_").replace(".", "_").isidentifier() or len(name) > 100:
        raise BadInput(f"--plugins: {name!r} is not a decoder name (letters, digits, - _ .)")
    return name


def select_decoders(spec: str) -> list[str]:
    """Names from a ``--plugins`` string: 'all' or a comma-separated list. An unknown name is bad input, unless
    some plugin failed to load (it may have been that plugin's): then it becomes an error row saying so."""
    from .contract import registry as plugins

    registered = list(plugins.decoders())
    broken = plugins.failures()
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise BadInput(f"--plugins must be 'all' or a comma-separated list of: {', '.join(registered)}")
    if names == ["all"]:
        # broken plugins are selected too, so their failure shows as an error row
        return registered + [b for b in broken if b not in registered]
    unknown = [n for n in names if n not in registered and n not in broken]
    if unknown and not broken:
        raise BadInput(f"--plugins: unknown decoder {unknown[0]!r}; registered: {', '.join(registered)}")
    for n in unknown:
        check_decoder_name(n)
    return list(dict.fromkeys(names))


def plugin_problems() -> list[str]:
    """One line per plugin that failed to load or register, and per refused (colliding) registration."""
    from .contract import registry as plugins

    lines = [f"broken plugin: {m}" for m in plugins.failures().values()]
    lines += [f"name collision: {m}" for msgs in plugins.collisions().values() for m in msgs]
    return lines


def _qualified(obj) -> str:
    """``module.qualname`` of a class or callable (a torch builtin by its public name, e.g. ``torch.relu``)."""
    name = getattr(obj, "__name__", None)
    if name and not hasattr(obj, "__code__") and not isinstance(obj, type):
        import sys

        for modname in ("torch", "torch.nn.functional", "torch.special"):
            mod = sys.modules.get(modname)
            if mod is not None and getattr(mod, name, None) is obj:
                return f"{modname}.{name}"
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
    return f"{mod}.{qual}"


def resolve(spec, name: str | None = None):
    """What ``spec`` runs, as a ``plugins.Registered`` (name, cls, kind, source, plugin, version).

    * a registered decoder's name: its registration;
    * a ``Decoder`` subclass: itself (the registered one if it is that very class), else source
      ``local:<module>.<qualname>`` and version ``<cls.version>+local.<code digest>``;
    * any other callable (a torch function or ``nn.Module``): the activation decoder ``act(a z + b)``
      (:func:`decoderbench.contract.activation.activation_decoder`), named after the callable unless ``name`` is
      given (a registered name the callable's own name takes gets the suffix ``_act``, e.g.
      ``torch.relu`` -> ``relu_act``).

    TypeError for anything else; ValueError (bad input) for an unknown name or an activation that fails its
    check."""
    from .contract import registry as plugins
    from .contract.activation import activation_decoder, callable_name, code_digest
    from .contract.decoder import Decoder, check_decoder_class

    if isinstance(spec, plugins.Registered):
        return spec
    if isinstance(spec, str):
        if name is not None:
            raise TypeError(f"name= renames a class or callable, not the registered decoder {spec!r}")
        reg = plugins.decoders()
        if spec in reg:
            return reg[spec]
        if plugins.failures():  # some plugin failed to load (it may have been this one's): an error row says so
            check_decoder_name(spec)
            return plugins.Registered(spec, None, None, None, spec, "?")
        raise BadInput(f"unknown decoder {spec!r}; registered: {', '.join(reg) or '(none)'} "
                       "(or pass a Decoder subclass or a callable)")
    if isinstance(spec, type):
        if not issubclass(spec, Decoder):
            raise TypeError(f"decoder {spec!r} is a class but not a subclass of decoderbench.Decoder")
        if name is not None:
            spec = type(spec.__name__, (spec,), {"name": name, "__module__": spec.__module__,
                                                 "__qualname__": spec.__qualname__})
        try:
            check_decoder_class(spec)
        except ValueError as exc:
            raise BadInput(f"decoder class {_qualified(spec)}: {exc}") from None
        reg = plugins.decoders().get(spec.name)
        if reg is not None and reg.cls is spec:
            return reg
        desc = plugins.described(reg)
        if desc is not None and desc.get("qualname") == f"{spec.__module__}.{spec.__qualname__}":
            # the installed third-party class itself, imported here by the caller: its registration (scored in
            # a worker, as installed), with the class for whoever asked by the class (testing.check_decoder)
            return dataclasses.replace(reg, cls=spec)
        if reg is not None:
            raise BadInput(f"decoder class {_qualified(spec)}: name {spec.name!r} is taken by the registered decoder "
                           f"from {reg.source}; give the class another name (or name=...)")
        return plugins.Registered(spec.name, spec, spec.kind, f"local:{_qualified(spec)}", _qualified(spec),
                                  f"{spec.version}+local.{code_digest(spec)}")
    if callable(spec):
        own = name or callable_name(spec)
        if name is None and own in plugins.decoders():
            own = f"{own}_act"
        check_decoder_name(own)
        cls = activation_decoder(spec, name=own)
        where = _qualified(spec)
        return plugins.Registered(own, cls, cls.kind, f"local:{where}", f"{where}:{own}",
                                  f"{cls.version}+local.{code_digest(spec)}")
    raise TypeError(f"a decoder is a registered name, a decoderbench.Decoder subclass or a callable "
                    f"(an activation), got {spec!r} of type {type(spec).__name__}")


def resolve_all(decoders) -> list:
    """Every spec of ``decoders`` resolved (a string may be ``'all'`` or a comma-separated list; a
    ``(spec, name)`` pair renames a class or callable); names must be unique."""
    if isinstance(decoders, (str, type)) or callable(decoders) and not isinstance(decoders, (list, tuple)):
        decoders = [decoders]
    out = []
    for spec in decoders:
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
            out.append(resolve(spec[0], name=spec[1]))
        elif isinstance(spec, str):
            out += [resolve(n) for n in select_decoders(spec)]
        else:
            out.append(resolve(spec))
    if not out:
        raise BadInput("decoders: give at least one decoder")
    seen: dict = {}
    for reg in out:
        if reg.name in seen and seen[reg.name] is not reg and seen[reg.name].cls is not reg.cls:
            raise BadInput(f"decoders: two different decoders are named {reg.name!r}; rename one "
                           f"(a (decoder, name) pair, or name=)")
        seen.setdefault(reg.name, reg)
    return list({r.name: r for r in out}.values())


def is_local(reg) -> bool:
    return str(reg.source or "").startswith("local:") and reg.cls is not None


class _SessionPlugin:
    """A throwaway plugin that registers one session-defined decoder (see :func:`session`)."""

    def __init__(self, cls):
        self.cls = cls

    @hookimpl
    def decoderbench_register_decoders(self, register):
        register(self.cls)


@contextlib.contextmanager
def session(regs):
    """Make the session-defined decoders among ``regs`` known to the harness while the block runs (so the
    sweep, the store's keys and the guard treat them like registered ones), then forget them."""
    from .contract import registry as plugins

    mine = []
    try:
        for reg in regs:
            if not is_local(reg) or plugins.decoders().get(reg.name) is not None:
                continue
            pname = f"decoderbench-session:{reg.plugin}"  # the version with the code digest makes the keys
            mine.append(plugins.register_plugin(_SessionPlugin(reg.cls), name=pname, source=reg.source,
                                                version=reg.version))
        yield
    finally:
        for pname in mine:
            with contextlib.suppress(Exception):
                plugins.unregister_plugin(pname)


# ----------------------------------------------------------------------------- a run: prepare, execute


@dataclass
class RunPlan:
    """Everything a run needs, checked, with nothing run and nothing written yet (:func:`prepare`)."""

    grid: object
    adhoc: bool
    regs: list
    units: list
    guard: object
    executor: object
    device: str
    store_dir: object = None
    problems: list = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.regs]


def prepare(regs, grid, *, adhoc: bool = False, options=None, device: str = "auto", isolate=None, timeout=None,
            memory_limit=None, executor: str = "local", workers=1, address=None, store=None) -> RunPlan:
    """Check a run and build its units, guard and executor; raises bad input before anything runs. ``regs``:
    resolved decoders (:func:`resolve`) or registered names. Session decoders must be registered
    (:func:`session`) around this call and :func:`execute`."""
    from .contract import registry as plugins
    from .run import sweep

    timeout, memory_limit, workers = check_execution(timeout, memory_limit, executor, workers)
    if isolate is False:  # explicitly in-process: third-party plugins are imported in this process from now on
        plugins.trust_in_process()
    regs = [resolve(r) if isinstance(r, str) else r for r in regs]
    if any(is_local(r) for r in regs) and (executor != "local" or workers != 1):
        local = [r.name for r in regs if is_local(r)]
        raise BadInput(f"decoders {', '.join(local)} are defined in this session and run in this process: "
                       "use executor='local' with workers=1 (or install them as a plugin)")
    plugins.get_encoder(grid.encoder)
    if options:
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise TypeError("options must map decoder names to dicts of options, e.g. {'topk': {'k': 12}}")
        unknown = sorted(set(options) - {r.name for r in regs})
        if unknown:
            raise BadInput(f"options: no decoder {unknown[0]!r} in this run (decoders: "
                           f"{', '.join(r.name for r in regs)})")
        merged = {**grid.options, **{k: {**grid.options.get(k, {}), **v} for k, v in options.items()}}
        grid = dataclasses.replace(grid, options=merged)
    dev = sweep.resolve_device(device)
    units = sweep.units_for(grid, [r.name for r in regs], device=dev)
    from .contract.registry import check_unit_options

    check_unit_options(units)  # bad decoder options: one line, before anything is fitted
    from .run.memcheck import check_units

    check_units(units, workers if executor == "local" else 1)  # a cell too large for this machine's memory
    guard = guard_for(grid, isolate, timeout, memory_limit)
    ex = sweep.make_executor(executor, workers=workers, guard=guard, address=address)
    return RunPlan(grid=grid, adhoc=adhoc, regs=list(regs), units=units, guard=guard, executor=ex, device=dev,
                   store_dir=store, problems=plugin_problems())


def busy_cores_now(interval: float = 0.1) -> float | None:
    """How many cores are busy now: the machine's non-idle CPU time over ``interval`` seconds (``/proc/stat``),
    in cores; None where ``/proc/stat`` cannot be read (not Linux). This process sleeps meanwhile, so it does not
    count itself."""
    import time

    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
        cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
        v = [int(x) for x in lines[0].split()[1:]]  # user nice system idle iowait irq softirq steal ...
        return cpus, sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)

    try:
        cpus, total0, idle0 = sample()
        time.sleep(interval)
        _, total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0 or cpus < 1:
        return None
    return cpus * (1.0 - (idle1 - idle0) / (total1 - total0))


def free_cores() -> int:
    """The CPU cores not busy now: the cores this process may use, less the cores busy over the last 0.1 s
    (:func:`busy_cores_now`, rounded; the 1-minute load average where that cannot be measured), at least 1. A
    shared machine then gets as many torch threads as it has idle cores, instead of every core (oversubscribed
    intra-op threads made rows 10-40x slower at load 4-6). Measured now, not averaged: the load average lags a
    minute, so a run started just after another job ended got one thread on an idle machine."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        cpus = os.cpu_count() or 1
    now = busy_cores_now()
    if now is not None:
        busy = int(round(now))
    else:
        try:
            busy = int(round(os.getloadavg()[0]))
        except (AttributeError, OSError):  # pragma: no cover
            busy = 0
    return max(1, cpus - min(busy, cpus - 1))


def check_threads(threads) -> int:
    """``auto`` (:func:`free_cores`) or an integer in 1..1024; BadInput naming ``--threads`` otherwise."""
    if threads is None or str(threads).strip() == "auto":
        return free_cores()
    try:
        v = float(str(threads).strip())
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v != int(v) or not 1 <= v <= 1024:
        raise BadInput(f"--threads must be auto or an integer in 1..1024, got {threads!r}")
    return int(v)


def check_execution(timeout=None, memory_limit=None, executor: str = "local", workers=1):
    """The execution options checked (bad input names the option): ``(timeout, memory_limit, workers)``."""
    from .run import sweep
    from .run import worker

    if timeout is not None:
        timeout = worker.check_timeout(timeout, "--timeout")
    if memory_limit is not None:
        memory_limit = worker.check_memory_limit(memory_limit)
    if isinstance(workers, str):
        try:
            workers = int(workers.strip())
        except ValueError:
            raise BadInput(f"--workers must be an integer >= 1, got {workers!r}") from None
    if executor not in sweep.EXECUTORS:
        raise BadInput(f"--executor must be one of {', '.join(sweep.EXECUTORS)}, got {executor!r}")
    sweep.check_workers(workers)
    return timeout, memory_limit, workers


def guard_for(grid, isolate, timeout_s, memory_mb):
    """The worker.Guard of a run: ``timeout`` replaces the grid's [timeout] for every decoder."""
    from .run import worker

    timeouts = dict(getattr(grid, "timeouts", {}) or {})
    default = timeouts.pop("default", worker.DEFAULT_TIMEOUT_S)
    if timeout_s is not None:
        default, timeouts = timeout_s, {}
    if isolate not in (None, "auto", True, False):
        raise BadInput(f"isolate must be None, 'auto', True or False, got {isolate!r}")
    if isolate is False:  # explicitly in-process: third-party plugins are imported in this process from now on
        from .contract import registry as plugins

        plugins.trust_in_process()
    return worker.Guard(isolate="auto" if isolate is None else isolate, timeout_s=default,
                        memory_limit_mb=memory_mb, timeouts=timeouts)


@dataclass
class RunResult:
    """What :func:`execute` returns: the sweep's rows and counts, and the store's row files that failed
    validation before and after the run."""

    sweep: object
    store: object = None
    bad_before: dict = field(default_factory=dict)
    bad_after: dict = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return self.sweep.rows


def execute(plan: RunPlan, *, command: str = "", force: bool = False, progress=False) -> RunResult:
    """Run a prepared plan: rows reused from and written to its store (if any) exactly as ``run`` does."""
    from .results.store import ResultsStore
    from .run import sweep, worker

    store = plan.store_dir
    if store is not None:  # a root harness's third-party workers (another user) must not be able to change it
        worker.check_store_private(store.path if isinstance(store, ResultsStore) else store)
    if store is not None and not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    bad_before = store.problems() if store is not None else {}
    res = sweep.run_sweep(plan.units, store=store, force=force, command=command, grid=plan.grid.name,
                          progress=progress, executor=plan.executor)
    return RunResult(sweep=res, store=store, bad_before=bad_before,
                     bad_after=store.problems() if store is not None else {})


def with_sampling(grid, sampling: dict):
    """``grid`` with per-decoder sampling overrides ``{name: {target_rel_se|min_samples|max_samples: value}}``."""
    from .run.grids import SAMPLING_KEYS, _check_count, _check_target

    if not isinstance(sampling, dict) or not all(isinstance(v, dict) for v in sampling.values()):
        raise TypeError("sampling must map decoder names to dicts, e.g. {'vamp': {'max_samples': 256}}")
    over = {k: dict(v) for k, v in grid.sampling_overrides.items()}
    for name, d in sampling.items():
        for key, v in d.items():
            if key not in SAMPLING_KEYS:
                raise BadInput(f"sampling.{name}: unknown key {key!r}; allowed: {', '.join(SAMPLING_KEYS)}")
            over.setdefault(name, {})[key] = (_check_target(v, f"sampling.{name}.{key}") if key == "target_rel_se"
                                              else _check_count(v, f"sampling.{name}.{key}"))
        target, lo, hi = dataclasses.replace(grid, sampling_overrides=over).sampling_for(name)
        if lo > hi:
            raise BadInput(f"sampling.{name}: min_samples {lo} > max_samples {hi}")
    return dataclasses.replace(grid, sampling_overrides=over)


def _call_text(decoders, kwargs) -> str:
    def show(v):
        if isinstance(v, str):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(show(x) for x in v) + "]"
        if isinstance(v, (int, float, bool)) or v is None:
            return repr(v)
        return _qualified(v) if (isinstance(v, type) or callable(v)) else repr(v)

    args = [show(_as_list(decoders) if not isinstance(decoders, str) else decoders)]
    args += [f"{k}={show(v)}" for k, v in kwargs.items() if v is not None and k != "progress"]
    return f"python: decoderbench.evaluate({', '.join(args)})"


def evaluate(decoders, cells=None, *, n_s=None, r=None, n_d=None, p=None, seeds=None, grid=None, options=None,
             store=None, device: str = "auto", progress=True, force: bool = False, isolate=None, timeout=None,
             memory_limit=None, executor: str = "local", workers: int = 1, address=None, encoder=None, dtype=None,
             target_se=None, min_samples=None, max_samples=None, sampling=None):
    """Score ``decoders`` on cells; one row per (cell, seed, decoder) as a pandas DataFrame (the store's columns).

    ``decoders``: a registered name (or ``"all"``, or a comma-separated list), a ``Decoder`` subclass, a
    callable ``act`` (scored as ``act(a z + b)``), a ``(spec, name)`` pair, or a list of these.
    Cells: ``cells`` as a ``decoderbench.Cell`` or ``(n_s, n_d, p)`` tuple or a list of them, or a grid name or
    file; or the axes ``n_s``, ``r`` (or ``n_d``), ``p`` and ``seeds``, scalars or lists, as the command line's
    ``--ns/--r/--nd/--p/--seed`` (with ``grid``: replacing the grid's). With none of them, the default grid.
    ``options``: ``{decoder name: {option: value}}``. Sampling: ``target_se`` (relative standard error that
    stops sampling, default 1%), ``min_samples``, ``max_samples`` (a cap that keeps a costly decoder
    affordable); ``sampling``: per-decoder overrides, ``{"vamp": {"max_samples": 256}}``, as a grid's
    ``[sampling.NAME]``. ``store``: a results folder to reuse rows from and write new rows to (as ``run --out``);
    None: nothing is written. ``isolate``, ``timeout``, ``memory_limit``, ``executor``, ``workers``,
    ``address``, ``force``: as ``decoderbench run``'s options.
    """
    from .run.grids import Grid

    kwargs = dict(cells=cells if isinstance(cells, (str, Path)) else None, n_s=n_s, r=r, n_d=n_d, p=p, seeds=seeds,
                  grid=grid if isinstance(grid, (str, Path)) else None, options=options, store=store and str(store),
                  device=device if device != "auto" else None, encoder=encoder, dtype=dtype, target_se=target_se,
                  min_samples=min_samples, max_samples=max_samples, sampling=sampling)
    samp = dict(seeds=seeds, encoder=encoder, dtype=dtype, target_se=target_se, min_samples=min_samples,
                max_samples=max_samples)
    if cells is not None and isinstance(cells, (str, Path, Grid)):
        if grid is not None:
            raise BadInput("cells names a grid: give the grid once (cells= or grid=)")
        grid, cells = (str(cells) if isinstance(cells, Path) else cells), None
    if cells is not None:
        if any(v is not None for v in (n_s, r, n_d, p, grid)):
            raise BadInput("give cells either as cells= or as n_s=/r=/n_d=/p= (or grid=), not both")
        g, adhoc = cells_grid(cells, **samp), True
    else:
        g, adhoc = build_grid(grid, n_s=n_s, r=r, n_d=n_d, p=p, **samp)
    if sampling:
        g = with_sampling(g, sampling)
    regs = resolve_all(decoders)
    with session(regs):
        plan = prepare(regs, g, adhoc=adhoc, options=options, device=device, isolate=isolate, timeout=timeout,
                       memory_limit=memory_limit, executor=executor, workers=workers, address=address, store=store)
        res = execute(plan, command=_call_text(decoders, kwargs), force=force, progress=progress)
    return frame(res.rows)


# ----------------------------------------------------------------------------- rows <-> DataFrames


def frame(rows: list[dict]):
    """Rows as a DataFrame with the row schema's columns: the summary columns first
    (``rows.SUMMARY_COLUMNS``), then the other declared columns in the schema's order, then any column a row
    carries that the schema does not declare, sorted."""
    import pandas as pd

    rows = [{k: v for k, v in r.items()} for r in rows]
    present = {k for r in rows for k in r}
    declared = [c.name for c in _rows.COLUMNS if c.name in present and c.name not in ROW_COLUMNS]
    cols = list(ROW_COLUMNS) + declared + sorted(present - set(ROW_COLUMNS) - set(declared))
    return pd.DataFrame.from_records(rows, columns=cols)


def records(rows) -> list[dict]:
    """A DataFrame (or rows) back to row dicts: missing values (NaN, NaT) as None, numpy scalars as Python's."""
    if isinstance(rows, list):
        return [dict(r) for r in rows]
    out = []
    for rec in rows.to_dict("records"):
        row = {}
        for k, v in rec.items():
            if hasattr(v, "item") and not isinstance(v, (list, dict)) and getattr(v, "ndim", 0) == 0:
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            row[k] = v
        out.append(row)
    return out


def theory(n_s, r=None, n_d=None, p=0.045, exact: bool = False, seed: int = 0) -> dict:
    """The exact per-cell theory (``decoderbench theory --json``): sigma, trivial, linear, elementwise MMSE,
    E.2 bound, ReLU theory, VAMP/AMP state evolution. ``r`` (default 0.25) or ``n_d``. With ``exact`` also the
    finite-size references of the rug of ``seed`` with no Gaussian assumption (``theory --exact --seed``)."""
    from ._validate import check_nd, check_ns, check_p, check_seed, nd_from_r
    from .model.theory import cell_theory

    if r is not None and n_d is not None:
        raise BadInput("r and n_d: give one of them, not both")
    ns = check_ns(n_s)
    nd = check_nd(n_d, ns) if n_d is not None else nd_from_r(ns, 0.25 if r is None else r)
    t = cell_theory(ns, nd, check_p(p))
    if exact:
        from .model.exact import exact_references

        t = {**t, **exact_references(ns, nd, t["p"], seed=check_seed(seed))}
    return t


def read_store(path, what: str = "--results"):
    """The results store at ``path``, for reading: anything else is bad input that says it cannot be read."""
    from .results.store import MARKER, ResultsStore, StoreError

    pth = Path(path)
    if not pth.exists():
        raise StoreError(f"{what} {path}: cannot read it: no such results store (no such folder)")
    if not (pth / MARKER).is_file():
        raise StoreError(f"{what} {path}: cannot read it: not a decoderbench results store (no {MARKER})")
    try:
        return ResultsStore(pth, create=False)
    except StoreError as exc:
        raise StoreError(f"{what} {path}: cannot read it: {str(exc).split(': ', 1)[-1]}") from None


def load_results(path):
    """Every row of the results store at ``path`` as a DataFrame (the store refuses, naming the files, when a
    row file fails validation)."""
    return frame(read_store(path, "results").rows())


def grid_rows(store, grid) -> list[dict]:
    """The store's rows of the grid's cells, seeds, encoder, dtype (and decoders, if the grid names them)."""
    from .board.leaderboard import select_rows

    return select_rows(store.rows(), cells=grid.cells(), seeds=set(grid.seeds), encoder=grid.encoder,
                       dtype=grid.dtype, decoders=None if grid.plugins == "all" else set(grid.plugins))


# ----------------------------------------------------------------------------- verify


def check_fraction(fraction) -> float:
    try:
        frac = float(fraction)
    except (TypeError, ValueError):
        raise BadInput(f"--sample must be a fraction in (0, 1], got {fraction!r}") from None
    if isinstance(fraction, bool) or not (math.isfinite(frac) and 0 < frac <= 1):
        raise BadInput(f"--sample must be a fraction in (0, 1], got {fraction!r}")
    return frac


#: Columns a recomputation need not reproduce: times, versions (compared apart, as the environment), the
#: traceback's text, and where the row ran. Every other column the runner makes is a result and must match.
NOT_RESULTS = frozenset({"fit_time_s", "eval_time_s", "wall_time_s", "python_version", "torch_version",
                         "decoderbench_version", "decoder_version", "source", "traceback", "isolated", "threads"})
#: Keys of ``params`` that describe the run, not the result: times (every key ending in ``_s``, seconds), thread
#: counts, the trained model's cache.
PARAMS_NOT_RESULTS = frozenset({"train_time_s", "total_train_time_s", "threads", "reused", "resumed_from_step",
                                "model_path", "cache_rejected", "cache_error"})


#: Relative tolerance for the floats inside ``params`` (fitted scalars, training losses): their float64 sums are
#: reduced in an order that depends on the thread count, so their last bits may move (measured: 1e-16
#: relative) while the scored loss, in float32, reproduces bit for bit.
PARAMS_RTOL = 1e-9
#: and an absolute tolerance, for fitted values that are zero in exact arithmetic (an intercept of 2.5e-11 moved by
#: 3e-17 between one and two threads)
PARAMS_ATOL = 1e-12


def _same(a, b, rtol: float = 0.0) -> bool:
    if rtol and isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
        return abs(a - b) <= rtol * max(abs(a), abs(b)) + PARAMS_ATOL
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float) and math.isnan(a) and b is None or isinstance(b, float) and math.isnan(b) and a is None:
        return True  # a missing number is stored as null
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, rtol) for x, y in zip(a, b))
    return a == b


def result_differences(stored: dict, new: dict) -> list[tuple[str, str]]:
    """``[(column, 'column stored X, recomputed Y')]`` for every result column (every column of the recomputed
    row but :data:`NOT_RESULTS`; in ``params`` every key but :data:`PARAMS_NOT_RESULTS`) that differs: bit for
    bit, except floats in ``params`` (to :data:`PARAMS_RTOL` relative plus :data:`PARAMS_ATOL`)."""
    out = []
    for col in sorted(new):
        if col in NOT_RESULTS:
            continue
        if col in STOP_COLUMNS and col not in stored:
            continue  # a row made before these columns: they copy params entries, compared below
        a, b = stored.get(col), new.get(col)
        if col == "params":
            a = {k: v for k, v in (a or {}).items() if k not in PARAMS_NOT_RESULTS and not k.endswith("_s")}
            b = {k: v for k, v in (b or {}).items() if k not in PARAMS_NOT_RESULTS and not k.endswith("_s")}
            keys = sorted(k for k in set(a) | set(b) if not _same(a.get(k), b.get(k), PARAMS_RTOL))
            out += [(f"params.{k}", f"params.{k} stored {a.get(k)!r}, recomputed {b.get(k)!r}") for k in keys]
            continue
        if col == "error" and a and b and str(a).split(":")[0] == str(b).split(":")[0] and \
                stored.get("status") == new.get("status") != "ok":
            continue  # the same failure (its message may carry a path or an address)
        if not _same(a, b):
            out.append((col, f"{col} stored {a!r}, recomputed {b!r}"))
    return out


def verify_rows(store, fraction=1.0, seed: int = 0, isolate=None, timeout=None) -> tuple[list[dict], int]:
    """Recompute a seeded sample of a store's rows; ``(report, n_rows)``, one entry per row checked with its
    ``verdict``: ``reproduced`` (every result column bit for bit: :func:`result_differences`), ``differs`` (what
    differs, column by column, and the environment's differences: decoder version, results format, transform
    backend, evaluation key, eval batch), ``bad`` (the file fails validation), ``not-ok`` (a timeout row: not
    recomputed; error and skipped rows are recomputed like ok rows), ``cannot`` (its unit cannot be rebuilt, e.g. its decoder is not installed) or
    ``unreadable``. Runs are deterministic on CPU, so a row that does not reproduce was computed elsewhere or
    edited."""
    import random

    from .contract import registry as plugins
    from .run import worker
    from ._validate import check_seed
    from .model.evalkey import ENV as _KEY_ENV, eval_stream_id
    from .model.evalkey import eval_batch_size
    from .results.rows import RESULTS_FORMAT
    from .run.runner import WorkUnit, transform_backend_for

    frac = check_fraction(fraction)
    seed = check_seed(seed)
    if timeout is not None:
        timeout = worker.check_timeout(timeout, "--timeout")
    guard = worker.Guard(isolate="auto" if isolate is None else bool(isolate),
                         timeout_s=timeout or worker.DEFAULT_TIMEOUT_S)
    if isolate is False:  # explicitly in-process (as guard_for)
        plugins.trust_in_process()
    keys = store.keys()
    if not keys:
        raise BadInput(f"--results {store.path}: the store holds no rows")
    n = max(1, math.ceil(frac * len(keys) - 1e-9))
    chosen = sorted(random.Random(seed).sample(keys, n))
    report = []
    for key in chosen:
        name = f"rows/{key}.parquet"
        row, why = store.read_checked(key)
        stored = row if row is not None else store.read_raw(key)
        entry = {"file": name, "key": key, "verdict": None, "detail": why}
        if stored is None:
            entry.update(verdict="unreadable")
            report.append(entry)
            continue
        entry.update({k: stored.get(k) for k in ("decoder", "n_s", "n_d", "p", "seed", "status")})
        if stored.get("status") == "timeout":  # recomputing it would take its whole time limit again
            entry.update(verdict="bad" if why else "not-ok", detail=why or "status timeout: not recomputed")
            report.append(entry)
            continue
        try:
            unit = WorkUnit.from_row(stored)
            reg = plugins.get_decoder(unit.decoder)
        except (ValueError, KeyError, TypeError) as exc:
            entry.update(verdict="bad" if why else "cannot",
                         detail=(why + "; " if why else "") + f"cannot rebuild its unit: {exc}")
            report.append(entry)
            continue
        env_diff = []
        if str(stored.get("decoder_version")) != str(reg.version):
            env_diff.append(f"decoder version {stored.get('decoder_version')} stored, {reg.version} installed")
        here_backend = transform_backend_for(unit.device, unit.dtype, unit.n_s)
        if stored.get("transform_backend") not in (None, here_backend):
            env_diff.append(f"transform backend {stored.get('transform_backend')} stored, {here_backend} here")
        if stored.get("eval_stream") not in (None, eval_stream_id()):
            env_diff.append(f"evaluation key {stored.get('eval_stream')} stored, {eval_stream_id()} here "
                            f"(set {_KEY_ENV} as for the run)")
        if stored.get("results_format") not in (None, RESULTS_FORMAT):
            env_diff.append(f"results format {stored.get('results_format')} stored, {RESULTS_FORMAT} here "
                            "(the meaning of its numbers changed: decoderbench/results/rows.py RESULTS_FORMAT)")
        here_batch = eval_batch_size(unit.n_s, unit.device)
        if stored.get("eval_batch") not in (None, here_batch):
            env_diff.append(f"eval batch {stored.get('eval_batch')} stored, {here_batch} here")
        new = worker.run_guarded(unit, guard)
        diffs = result_differences(stored, new)
        entry["recomputed_loss"] = new.get("loss")
        entry["stored_loss"] = stored.get("loss")
        entry["columns_differing"] = [c for c, _ in diffs]
        if not diffs and not why:
            entry["verdict"] = "reproduced"
        else:
            parts = [why] if why else []
            parts += [d for _, d in diffs[:6]] + ([f"and {len(diffs) - 6} more column(s)"] if len(diffs) > 6 else [])
            parts += env_diff
            entry.update(verdict="bad" if why else "differs", detail="; ".join(parts))
        report.append(entry)
    return report, len(keys)


def verify(path, fraction=1.0, *, seed: int = 0, decoders=(), isolate=None, timeout=None):
    """Recompute a sample (``fraction``) of the store's rows; a DataFrame of verdicts, one row per row checked
    (see :func:`verify_rows`). ``decoders``: session-defined classes or callables whose rows to recompute too
    (the same specs as for :func:`evaluate`)."""
    import pandas as pd

    check_fraction(fraction)
    store = read_store(path)
    regs = resolve_all(list(decoders)) if decoders else []
    with session(regs):
        report, _ = verify_rows(store, fraction, seed=seed, isolate=isolate, timeout=timeout)
    return pd.DataFrame.from_records(report)


# ----------------------------------------------------------------------------- the board


class Board:
    """The leaderboard of some rows (a DataFrame from :func:`evaluate` or :func:`load_results`, or row dicts),
    their aggregate computed once: ``tables()`` (DataFrames), ``markdown()``, ``files()`` (what ``decoderbench
    leaderboard`` writes), ``figures(dir)``, ``site(dir)``, ``write(dir)``."""

    def __init__(self, rows, title: str = "decoderbench leaderboard", command: str = ""):
        from .board.leaderboard import aggregate, select_rows

        self.rows = select_rows(records(rows))
        if not self.rows:
            raise BadInput("Board: no rows")
        self.title = title
        self.command = command or "python: decoderbench.Board(rows)"
        self.agg = aggregate(self.rows)

    def files(self, figure: bool = False) -> dict[str, str]:
        """{file name: text}: ``summary.md``, ``cells.md`` and ``rows.json``; with ``figure`` the summary shows
        the headline figure (written by :meth:`figures`)."""
        from .board import leaderboard

        out = leaderboard.render(self.rows, title=self.title, command=self.command, figure=figure, agg=self.agg)
        out[leaderboard.ROWS_FILE] = leaderboard.rows_json(self.rows)
        return out

    def markdown(self) -> str:
        """The summary and the per-cell tables, with their provenance header."""
        from .board.leaderboard import header

        f = self.files()
        head = header(self.title, self.command, self.rows) + "\n\n"
        cells = f["cells.md"][len(head):] if f["cells.md"].startswith(head) else f["cells.md"]
        return f["summary.md"] + "\n\n" + cells

    def summary(self) -> str:
        """The summary alone, without the header (what ``run`` prints at its end)."""
        from .board.leaderboard import summary_markdown

        return summary_markdown(self.agg)

    def tables(self) -> dict:
        """``{"cells": DataFrame, "summary": DataFrame}``: one row per ranked (cell, decoder) entry, and one per
        decoder with its median and worst ratio to the E.2 bound per regime."""
        import pandas as pd

        from .board.leaderboard import decoder_summary

        cells = []
        for cell, a in self.agg.items():
            enc, dtype, n_s, n_d, p = cell
            for rank, e in enumerate(a["scored"], 1):
                cells.append({"n_s": n_s, "n_d": n_d, "r": n_d / n_s, "p": p, "encoder": enc, "dtype": dtype,
                              "rank": rank, "regime": a["regime"],
                              **{k: v for k, v in e.items() if not isinstance(v, (list, dict))}})
        summ = []
        for d in decoder_summary(self.agg):
            flat = {k: v for k, v in d.items() if not isinstance(v, dict)}
            for g, vals in d.items():
                if isinstance(vals, dict):
                    flat.update({f"{g}_{k}": v for k, v in vals.items()})
            summ.append(flat)
        return {"cells": pd.DataFrame.from_records(cells), "summary": pd.DataFrame.from_records(summ)}

    def figures(self, out_dir) -> list[Path]:
        """Every figure into ``out_dir`` (PNG and SVG); the PNG paths."""
        from .board.plots import make_figures

        return make_figures(self.rows, Path(out_dir), agg=self.agg)

    def figure(self, path, which: str = "loss_vs_r") -> Path | None:
        """One figure into ``path`` (PNG, and SVG beside it): ``loss_vs_r`` (loss against r, per p and n_s, with
        the theory curves) or ``loss_vs_p2_over_r``; None when no row is ranked."""
        from .board import plots

        draw = {"loss_vs_r": plots.plot_loss_vs_r, "loss_vs_p2_over_r": plots.plot_loss_vs_p2_over_r}
        if which not in draw:
            raise BadInput(f"which must be one of {', '.join(draw)}, got {which!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return draw[which](self.rows, path, agg=self.agg)

    def site(self, out_dir, figures=()) -> list[Path]:
        """The static site into ``out_dir`` (needs the ``site`` extra); the paths written."""
        from .board.site import write_site

        return write_site(self.rows, Path(out_dir), title=self.title, command=self.command, figures=list(figures),
                          agg=self.agg)

    def write(self, out_dir, figures: bool = True, html: bool = False) -> list[Path]:
        """What ``decoderbench leaderboard`` writes: the tables and rows.json, the figures, the site."""
        from .board.leaderboard import write_files
        from .board.site import SITE_DIR

        out_dir = Path(out_dir)
        written = write_files(self.files(figure=figures), out_dir)
        figs = self.figures(out_dir) if figures else []
        written += figs
        if html:
            written += [pg for pg in self.site(out_dir / SITE_DIR, figures=figs) if pg.suffix == ".html"]
        return written

    def _repr_markdown_(self) -> str:  # a notebook shows the board
        return self.markdown()


def default_board_dir(store_dir, grid_name: str | None = None) -> Path:
    """The one output policy of every command that writes a board (``leaderboard``, ``unrolled``, and the trained
    plugin's ``trained-board`` and ``symmetry``): without --out, into ``<store>/board/<name>``, inside the store's
    folder, never into the checkout; --out names any other folder (the committed ``leaderboards/...``)."""
    return Path(store_dir) / BOARD_SUBDIR / (grid_name or "all")


__all__ = ["evaluate", "theory", "load_results", "verify", "Board", "resolve", "build_grid", "prepare", "execute",
           "session", "frame", "records"]
