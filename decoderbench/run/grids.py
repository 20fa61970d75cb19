"""Grids: named sets of cells (and how to sample them) that a sweep runs.

A grid is a TOML file. The built-in ones ship in ``decoderbench/run/grids/*.toml`` and are named by their
file stem (``default``, ``paper-fig2``, ``paper-fig15``); plugins add theirs by name through the hook
``decoderbench_register_grids`` (the trained plugin's ``trained``); ``--grid FILE.toml`` loads one's own.
Every key is checked: an unknown key, a bad value or an impossible cell raises ``BadInput`` (a ``ValueError``) naming
the file and the key or the cell, before anything runs. The keys::

    name = "default"               # optional, the file stem otherwise
    description = "..."            # optional
    plugins = "all"                # optional: "all" or a list of decoder names (--plugins overrides)
    encoder = "rug"                # optional
    dtype = "float32"              # optional: float32 or float64
    seeds = [0]                    # optional

    [cells]                        # the Cartesian product n_s x (r or n_d) x p
    n_s = [4096]
    r = [0.1, 0.25]                # or n_d = [...]; n_d = round(r n_s) must lie in 1..n_s-1
    p = [0.03, 0.045, 0.1]

    [[cell]]                       # optional extra cells, one table each (n_s, r or n_d, p)
    n_s = 4096
    r = 0.5
    p = 0.01

    [where]                        # optional filters on every cell (strict inequalities)
    p_ns_above = 5                 # keep p n_s > 5
    p_over_r_below = 0.1           # keep p / r < 0.1

    [sampling]                     # optional: the standard-error target of runner.run_unit
    target_rel_se = 0.02
    min_samples = 1024
    max_samples = 32768

    [sampling.vamp]                # optional per-decoder overrides of [sampling] (costly decoders)
    max_samples = 128

    [options.trained]              # optional per-decoder options, passed to WorkUnit.options
    max_time_s = 8

    [timeout]                      # optional per-unit time limits in seconds (decoderbench.run.worker);
    default = 3600                 # `default` for every decoder, others by decoder name; --timeout
    vamp = 7200                    # on the command line replaces them all

Ad-hoc cells (``--ns/--r/--nd/--p/--seed`` without ``--grid``) make a grid too (:func:`adhoc_grid`);
with ``--grid`` those options replace the grid's axes (:meth:`Grid.override`), e.g. a smaller ``n_s``
to run the GPU-sized ``paper-fig15`` on a CPU.
"""

from __future__ import annotations

import json
import math
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from ..errors import BadInput
from .._validate import DTYPE_NAMES, SAMPLING_DEFAULTS, check_nd, check_ns, check_p, check_r, check_seed, nd_from_r

DTYPES = DTYPE_NAMES
#: The most cells and seeds a grid may have (counted before any cell is built): a run of more units than
#: this machine could finish is refused in one line instead of building millions of units.
MAX_CELLS = 10_000
MAX_SEEDS = 1_000
#: The most work units (cells x seeds x decoders) one run may have.
MAX_UNITS = 100_000

TOP_KEYS = ("name", "description", "plugins", "encoder", "dtype", "seeds", "cells", "cell", "where", "sampling",
            "options", "timeout")
CELL_KEYS = ("n_s", "r", "n_d", "p")
WHERE_KEYS = ("p_ns_above", "p_over_r_below")
SAMPLING_KEYS = ("target_rel_se", "min_samples", "max_samples")


@dataclass(frozen=True)
class CellSpec:
    """One block of cells: the product of its axes (each a tuple). ``r`` or ``n_d``, not both."""

    n_s: tuple
    p: tuple
    r: tuple | None = None
    n_d: tuple | None = None


@dataclass(frozen=True)
class Grid:
    """A validated grid: which cells, seeds, sampling target and decoder options a sweep runs."""

    name: str
    source: str
    specs: tuple  # of CellSpec
    description: str = ""
    plugins: str | tuple = "all"
    encoder: str = "rug"
    dtype: str = "float32"
    seeds: tuple = (0,)
    where: dict = field(default_factory=dict)
    target_rel_se: float = SAMPLING_DEFAULTS["target_rel_se"]
    min_samples: int = SAMPLING_DEFAULTS["min_samples"]
    max_samples: int = SAMPLING_DEFAULTS["max_samples"]
    options: dict = field(default_factory=dict)  # decoder name -> dict
    sampling_overrides: dict = field(default_factory=dict)  # decoder name -> {sampling key: value}
    timeouts: dict = field(default_factory=dict)  # decoder name (or "default") -> seconds

    def __post_init__(self):
        self.cells()  # validates every cell, raises ValueError naming it

    def cells(self) -> list[tuple[int, int, float]]:
        """Every (n_s, n_d, p) of the grid, in file order, duplicates removed, filters applied. A grid of more
        than :data:`MAX_CELLS` combinations is refused, counted before any is built."""
        count = sum(len(spec.n_s) * len(spec.n_d if spec.n_d is not None else spec.r) * len(spec.p)
                    for spec in self.specs)
        if count > MAX_CELLS:
            raise BadInput(f"grid {self.source}: {count} cells (the product of its n_s, r or n_d and p lists): more "
                           f"than {MAX_CELLS}; split it into several grids")
        if len(self.seeds) > MAX_SEEDS:
            raise BadInput(f"grid {self.source}: {len(self.seeds)} seeds: more than {MAX_SEEDS}")
        out: list[tuple[int, int, float]] = []
        seen = set()
        for spec in self.specs:
            for n_s in spec.n_s:
                ratios = [("n_d", v) for v in spec.n_d] if spec.n_d is not None else [("r", v) for v in spec.r]
                for how, v in ratios:
                    for p in spec.p:
                        label = f"n_s={n_s} {how}={v} p={p}"
                        try:
                            n_d = check_nd(v, n_s) if how == "n_d" else nd_from_r(n_s, v)
                        except ValueError as exc:
                            raise BadInput(f"grid {self.source}: impossible cell {label}: {exc}") from None
                        cell = (n_s, n_d, p)
                        if cell in seen or not self._keep(n_s, n_d, p):
                            continue
                        seen.add(cell)
                        out.append(cell)
        if not out:
            raise BadInput(f"grid {self.source}: no cells left (check [cells], [[cell]] and [where])")
        return out

    def _keep(self, n_s: int, n_d: int, p: float) -> bool:
        w = self.where
        if "p_ns_above" in w and not p * n_s > w["p_ns_above"]:
            return False
        if "p_over_r_below" in w and not p / (n_d / n_s) < w["p_over_r_below"]:
            return False
        return True

    def sampling_for(self, decoder: str) -> tuple[float, int, int]:
        """(target_rel_se, min_samples, max_samples) for ``decoder``: [sampling] with its overrides."""
        o = self.sampling_overrides.get(decoder, {})
        target = o.get("target_rel_se", self.target_rel_se)
        max_s = o.get("max_samples", self.max_samples)
        min_s = o.get("min_samples", min(self.min_samples, max_s))
        return target, min_s, max_s

    def options_json(self, decoder: str) -> str:
        """The WorkUnit.options string for ``decoder``: a JSON object with sorted keys."""
        return json.dumps(self.options.get(decoder, {}), sort_keys=True)

    def override(self, ns=None, r=None, nd=None, p=None, seeds=None, target_rel_se=None, max_samples=None,
                 min_samples=None) -> Grid:
        """A copy with axes replaced in every block (each argument a list, or None to keep the grid's)."""
        if r is not None and nd is not None:
            raise BadInput("--r and --nd: give one of them, not both")
        ns = None if ns is None else tuple(dict.fromkeys(check_ns(v) for v in ns))
        p = None if p is None else tuple(dict.fromkeys(check_p(v) for v in p))
        r = None if r is None else tuple(dict.fromkeys(check_r(v) for v in r))
        nd = None if nd is None else tuple(dict.fromkeys(_check_int(v, "n_d") for v in nd))
        seeds = None if seeds is None else tuple(dict.fromkeys(check_seed(v) for v in seeds))
        specs = []
        for s in self.specs:
            new = s
            if ns is not None:
                new = replace(new, n_s=tuple(ns))
            if p is not None:
                new = replace(new, p=tuple(p))
            if r is not None:
                new = replace(new, r=tuple(r), n_d=None)
            if nd is not None:
                new = replace(new, n_d=tuple(nd), r=None)
            specs.append(new)
        changes = {"specs": tuple(specs)}
        if seeds is not None:
            changes["seeds"] = tuple(seeds)
        if target_rel_se is not None:
            changes["target_rel_se"] = _check_target(target_rel_se, "--target-se")
        if max_samples is not None:
            changes["max_samples"] = _check_count(max_samples, "--max-samples")
            if min_samples is None:
                changes["min_samples"] = min(self.min_samples, changes["max_samples"])
        if min_samples is not None:
            changes["min_samples"] = _check_count(min_samples, "--min-samples")
        given = {k for k, v in (("target_rel_se", target_rel_se), ("max_samples", max_samples),
                                ("min_samples", min_samples)) if v is not None}
        if given:  # an option on the command line applies to every decoder
            changes["sampling_overrides"] = {d: {k: v for k, v in o.items() if k not in given}
                                             for d, o in self.sampling_overrides.items()}
        g = replace(self, **changes)
        if g.min_samples > g.max_samples:
            raise BadInput(f"min_samples must be <= max_samples, got {g.min_samples} > {g.max_samples}")
        return g


def _check_target(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < float(v) < 1):
        raise BadInput(f"{name} must be a number in (0, 1), got {v!r}")
    return float(v)


def _check_count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BadInput(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------- loading


def core_grids() -> dict[str, resources.abc.Traversable]:
    """The grids shipped in the harness (``decoderbench/run/grids/*.toml``): name -> file."""
    base = resources.files("decoderbench.run") / "grids"
    return {f.name[:-5]: f for f in sorted(base.iterdir(), key=lambda f: f.name) if f.name.endswith(".toml")}


_plugin_grids: tuple | None = None  # ((the plugin manager, its grid plugins), {name: file})
_plugin_grid_errors: dict[str, str] = {}


def plugin_grids() -> dict:
    """Grids that plugins register (hook ``decoderbench_register_grids``): name -> file; loaded on first use.

    A registration that fails, names a taken grid or gives no readable file is refused alone and recorded in
    :func:`plugin_grid_errors`; the plugin's other grids still load."""
    global _plugin_grids
    from ..contract import registry as plugins  # the registry sits below the run stage: a downward import

    pm = plugins.get_plugin_manager()
    impls = pm.hook.decoderbench_register_grids.get_hookimpls()
    seen = (pm, tuple(impl.plugin_name for impl in impls))  # plugins.reset() or register_plugin change it
    if _plugin_grids is None or _plugin_grids[0] != seen:
        core = core_grids()
        found: dict = {}
        _plugin_grid_errors.clear()
        for impl in impls:
            def register(name, source, _plugin=impl.plugin_name):
                name = str(name)
                if name in core or name in found:
                    raise ValueError(f"grid name {name!r} is already taken")
                if not hasattr(source, "read_text"):
                    source = Path(source)
                if not source.is_file():
                    raise ValueError(f"grid {name!r}: no such file {source}")
                found[name] = source

            try:
                impl.function(register=register)
            except Exception as exc:  # one broken plugin costs only its grids
                _plugin_grid_errors[impl.plugin_name] = (f"plugin {impl.plugin_name!r} failed to register grids: "
                                                         f"{type(exc).__name__}: {exc}")
        _plugin_grids = (seen, found)
    return dict(_plugin_grids[1])


def plugin_grid_errors() -> dict[str, str]:
    """Plugins whose grids failed to register: {plugin name: message}."""
    plugin_grids()
    return dict(_plugin_grid_errors)


def builtin_grids() -> dict:
    """Every grid known by name: the harness's own, then the plugins' (``decoderbench_register_grids``)."""
    return {**core_grids(), **plugin_grids()}


def load_grid(spec: str) -> Grid:
    """A grid by name (the harness's, then the plugins'), or a TOML file by path (anything ending in .toml or
    naming a file). Plugins load only when ``spec`` is not one of the harness's own grids."""
    spec = str(spec)
    core = core_grids()
    if spec in core:
        return parse_grid(core[spec].read_text(encoding="utf-8"), source=spec, default_name=spec)
    builtins = {**core, **plugin_grids()}
    if spec in builtins:
        return parse_grid(builtins[spec].read_text(encoding="utf-8"), source=spec, default_name=spec)
    path = Path(spec)
    if spec.endswith(".toml") or path.exists():
        if not path.is_file():
            raise BadInput(f"--grid: no such grid file {spec!r}")
        return parse_grid(path.read_text(encoding="utf-8"), source=str(path), default_name=path.stem)
    raise BadInput(f"--grid must be one of {', '.join(builtins)} or a .toml file, got {spec!r}")


def parse_grid(text: str, source: str = "<string>", default_name: str = "grid") -> Grid:
    """Parse and validate a grid's TOML text; every error names ``source`` and the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"grid {source}: not valid TOML: {exc}") from None

    def bad(key: str, msg: str):
        return BadInput(f"grid {source}: {key}: {msg}")

    _unknown(raw, TOP_KEYS, source, "")
    name = raw.get("name", "".join(c if c.isalnum() or c in "-_." else "_" for c in default_name).lstrip(".") or "grid")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", f"must be a non-empty string, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise bad("description", f"must be a string, got {description!r}")
    plugins = raw.get("plugins", "all")
    if plugins != "all":
        if not isinstance(plugins, list) or not plugins or not all(isinstance(x, str) and x for x in plugins):
            raise bad("plugins", f"must be \"all\" or a non-empty list of decoder names, got {plugins!r}")
        plugins = tuple(plugins)
    encoder = raw.get("encoder", "rug")
    if not isinstance(encoder, str) or not encoder:
        raise bad("encoder", f"must be an encoder name, got {encoder!r}")
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise bad("dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise bad("seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise bad("seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}")
    seeds = tuple(dict.fromkeys(seeds))

    specs = []
    if "cells" in raw:
        specs.append(_cell_spec(raw["cells"], "cells", source, lists=True))
    if "cell" in raw:
        if not isinstance(raw["cell"], list):
            raise bad("cell", "must be an array of tables ([[cell]])")
        for i, c in enumerate(raw["cell"]):
            specs.append(_cell_spec(c, f"cell[{i}]", source, lists=False))
    if not specs:
        raise bad("cells", "the grid defines no cells: give [cells] or [[cell]]")

    where = raw.get("where", {})
    if not isinstance(where, dict):
        raise bad("where", "must be a table")
    _unknown(where, WHERE_KEYS, source, "where.")
    for k, v in where.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise bad(f"where.{k}", f"must be a non-negative number, got {v!r}")
    where = {k: float(v) for k, v in where.items()}

    sampling = raw.get("sampling", {})
    if not isinstance(sampling, dict):
        raise bad("sampling", "must be a table")
    per_decoder = {k: v for k, v in sampling.items() if isinstance(v, dict)}
    sampling = {k: v for k, v in sampling.items() if not isinstance(v, dict)}
    _unknown(sampling, SAMPLING_KEYS, source, "sampling.")
    samp = dict(SAMPLING_DEFAULTS)
    samp.update(_sampling_values(sampling, source, "sampling."))
    if "min_samples" not in sampling:
        samp["min_samples"] = min(samp["min_samples"], samp["max_samples"])
    if samp["min_samples"] > samp["max_samples"]:
        raise bad("sampling.min_samples", f"must be <= sampling.max_samples, got {samp['min_samples']} > "
                  f"{samp['max_samples']}")
    overrides = {}
    for dec, table in per_decoder.items():
        _unknown(table, SAMPLING_KEYS, source, f"sampling.{dec}.")
        overrides[dec] = _sampling_values(table, source, f"sampling.{dec}.")
        o = overrides[dec]
        max_s = o.get("max_samples", samp["max_samples"])
        min_s = o.get("min_samples", min(samp["min_samples"], max_s))
        if min_s > max_s:
            raise bad(f"sampling.{dec}.min_samples", f"must be <= max_samples, got {min_s} > {max_s}")

    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise bad("options", "must be a table of tables, e.g. [options.trained]")
    for dec, opts in options.items():
        if not isinstance(opts, dict):
            raise bad(f"options.{dec}", f"must be a table of options, got {opts!r}")
        try:
            json.dumps(opts, allow_nan=False)
        except (TypeError, ValueError):
            raise bad(f"options.{dec}", "values must be numbers, strings, booleans, lists or tables") from None

    timeouts = raw.get("timeout", {})
    if not isinstance(timeouts, dict):
        raise bad("timeout", "must be a table of decoder name (or default) = seconds")
    for dec, t in timeouts.items():
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise bad(f"timeout.{dec}", f"must be a positive number of seconds, got {t!r}")
    timeouts = {k: float(v) for k, v in timeouts.items()}

    return Grid(name=_check_name(name.strip(), source), source=source, specs=tuple(specs), description=description.strip(),
                plugins=plugins, encoder=encoder, dtype=dtype, seeds=seeds, where=where,
                target_rel_se=samp["target_rel_se"], min_samples=samp["min_samples"],
                max_samples=samp["max_samples"], options={k: dict(v) for k, v in options.items()},
                sampling_overrides=overrides, timeouts=timeouts)


def _check_name(name: str, source: str) -> str:
    """A grid name becomes a folder name (leaderboards/<name>): one path component, no traversal."""
    ok = all(c.isalnum() or c in "-_." for c in name) and name not in (".", "..") and not name.startswith(".")
    if not ok or len(name) > 100:
        raise BadInput(f"grid {source}: name: must be a plain folder name (letters, digits, - _ .; not starting "
                       f"with a dot; at most 100 characters), got {name!r}")
    return name


def _sampling_values(table: dict, source: str, prefix: str) -> dict:
    out = {}
    try:
        if "target_rel_se" in table:
            out["target_rel_se"] = _check_target(table["target_rel_se"], "target_rel_se")
        for k in ("min_samples", "max_samples"):
            if k in table:
                out[k] = _check_count(table[k], k)
    except ValueError as exc:
        raise BadInput(f"grid {source}: {prefix}{exc}") from None
    return out


def _unknown(table: dict, allowed, source: str, prefix: str) -> None:
    for k in table:
        if k not in allowed:
            raise BadInput(f"grid {source}: unknown key '{prefix}{k}'; allowed: {', '.join(allowed)}")


def _cell_spec(table, key: str, source: str, lists: bool) -> CellSpec:
    if not isinstance(table, dict):
        raise BadInput(f"grid {source}: {key}: must be a table")
    _unknown(table, CELL_KEYS, source, f"{key}.")
    for k in ("n_s", "p"):
        if k not in table:
            raise BadInput(f"grid {source}: {key}: missing {k}")
    if ("r" in table) == ("n_d" in table):
        raise BadInput(f"grid {source}: {key}: give exactly one of r and n_d")

    def values(k, check):
        v = table[k]
        seq = v if lists else [v]
        what = "a non-empty list of numbers" if lists else "a number"
        if not isinstance(seq, list) or not seq or any(isinstance(x, (bool, str, list, dict)) for x in seq):
            raise BadInput(f"grid {source}: {key}.{k}: must be {what}, got {v!r}")
        try:
            return tuple(dict.fromkeys(check(x) for x in seq))
        except ValueError as exc:
            raise BadInput(f"grid {source}: {key}.{k}: {exc}") from None

    n_s = values("n_s", check_ns)
    p = values("p", check_p)
    if "r" in table:
        return CellSpec(n_s=n_s, p=p, r=values("r", check_r))
    return CellSpec(n_s=n_s, p=p, n_d=values("n_d", lambda x: _check_int(x, "n_d")))


def _check_int(x, name: str) -> int:
    f = float(x)
    if not math.isfinite(f) or f != int(f) or f < 1:
        raise BadInput(f"{name} must be a positive integer, got {x!r}")
    return int(f)


def adhoc_grid(ns: list, r: list | None, nd: list | None, p: list, seeds: list, target_rel_se: float,
               min_samples: int, max_samples: int, encoder: str = "rug", dtype: str = "float32") -> Grid:
    """The grid of ad-hoc ``--ns/--r/--nd/--p/--seed`` cells."""
    if r is not None and nd is not None:
        raise BadInput("--r and --nd: give one of them, not both")
    ns_t = tuple(dict.fromkeys(check_ns(v) for v in ns))
    p_t = tuple(dict.fromkeys(check_p(v) for v in p))
    if nd is not None:
        spec = CellSpec(n_s=ns_t, p=p_t, n_d=tuple(dict.fromkeys(_check_int(v, "--nd") for v in nd)))
    else:
        spec = CellSpec(n_s=ns_t, p=p_t, r=tuple(dict.fromkeys(check_r(v) for v in (r or [0.25]))))
    if dtype not in DTYPES:
        raise BadInput(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return Grid(name="adhoc", source="command line", specs=(spec,), seeds=tuple(dict.fromkeys(check_seed(s) for s in seeds)),
                encoder=encoder, dtype=dtype, target_rel_se=_check_target(target_rel_se, "--target-se"),
                min_samples=_check_count(min_samples, "--min-samples"),
                max_samples=_check_count(max_samples, "--max-samples"))
