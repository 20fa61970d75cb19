"""The plugin manager: built once, entry points loaded on first use, failures isolated.

Every decoder and encoder, built-in or third-party, arrives through the entry-point group
``decoderbench`` and the hooks of ``decoderbench.contract.hookspecs``. A plugin that fails to import or to
register is recorded in ``load_errors()`` (and turns into an error row when selected); the others
still load.

Third-party code is never imported in this (the harness's) process. Built-in entry points (distribution
decoderbench) are imported here; a third-party entry point is known from its distribution's metadata (entry
point name, module, distribution name and version) and from a *description* that a worker process reports
after importing it in its own process (:func:`decoderbench.run.worker.describe_entry_points`): for each decoder its
name, kind, requirements, version, description and declared options, as plain data (JSON-like, read with the
restricted unpickler). The harness registers a stand-in class per described decoder (:func:`_described_class`):
it carries those attributes, and building it raises, so such a decoder runs only in a worker. Every
third-party entry point is described by one worker started once per process (the descriptions are cached by
entry point and distribution version until :func:`reset`); the same worker, kept for the run, checks the
options of the units of described decoders. A plugin whose import or registration fails, or that kills its
describing worker, is recorded like a failure here, and the others are described by a fresh worker.

Importing third-party plugins in this process is an explicit choice: ``--no-isolate`` (``isolate=False``)
calls :func:`trust_in_process`, and ``DECODERBENCH_TRUSTED_PLUGINS`` (comma-separated entry-point names, or
``all``) names entry points that load here like built-ins: only those can add commands (the
``decoderbench_register_commands`` hook) or encoders that a run builds (a third-party encoder only described
is listed, and refused by :func:`get_encoder` with the reason). Workers import the one entry point whose
decoder they run.

Name collisions: built-in plugins load and register first, then the others in entry-point order. The
names of the built-in entry points are reserved: a third-party entry point of the same name is refused
and reported (never imported), and the built-in loads. A later
registration of a name already taken is refused *alone* (:func:`collisions` names both
distributions); everything else of both plugins still loads. ``decoderbench plugins`` lists every
failure and collision and exits 1 when there is one; ``run`` prints them too. A decoder name that is
not registered while some plugin failed to load becomes an error row naming those plugins (it may
have been theirs), not "unknown decoder".

Environment: ``DECODERBENCH_TRUSTED_PLUGINS`` (above); ``DECODERBENCH_PLUGINS`` restricts which entry points load (comma-separated entry-point
names; an empty value loads none), the switch tests use to run with throwaway plugins only.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .decoder import Cell, Decoder, check_decoder_class
from ..errors import BadInput

ENTRY_POINT_GROUP = "decoderbench"
hookimpl = pluggy.HookimplMarker("decoderbench")


@dataclass(frozen=True)
class Registered:
    """A registered decoder or encoder class and where it came from."""

    name: str
    cls: type
    kind: str
    source: str  # "distribution==version" or the plugin's name when registered by hand
    plugin: str  # the pluggy plugin name (entry-point name or module name)
    version: str


_pm: pluggy.PluginManager | None = None
_sources: dict[str, str] = {}
_versions: dict[str, str] = {}  # plugin name -> version replacing its decoders' own (register_plugin)
_errors: dict[str, str] = {}  # plugin name -> why it failed to load or register (selectable: an error row)
_collisions: dict[str, list] = {}  # plugin name -> refused registrations of taken names (the rest loaded)
_ep_refused: dict[str, list] = {}  # third-party entry points named like a built-in plugin (never imported)
_decoders: dict[str, Registered] | None = None
_encoders: dict[str, Registered] | None = None
TRUSTED_ENV = "DECODERBENCH_TRUSTED_PLUGINS"
_trusted: object = None  # None: from TRUSTED_ENV; "all" or a set of entry-point names imported in this process
_remote: list[dict] = []  # third-party entry points not imported here: {name, value, dist} in load order
_descriptions: dict = {}  # (entry point, module, dist==version) -> what a worker reported (plain data)
_may_describe = True  # False in workers: an entry point neither trusted nor described is left out
_discovery = {"worker_starts": 0, "seconds": 0.0}  # what discovery cost this process (one start per run)


def _dist_label(dist) -> str:
    if dist is None:
        return "unknown"
    try:
        return f"{dist.metadata['Name']}=={dist.version}"
    except Exception:  # pragma: no cover
        return "unknown"


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every entry point of group ``decoderbench`` loaded."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("decoderbench")
    pm.add_hookspecs(hookspecs)
    allowed = os.environ.get("DECODERBENCH_PLUGINS")
    allow = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
    eps = list(md.entry_points(group=ENTRY_POINT_GROUP))
    # built-in entry points first, and their names reserved: a third-party entry point named like one is
    # refused alone (reported, never imported) and the built-in loads
    builtin = [ep for ep in eps if _is_builtin_source(_dist_label(getattr(ep, "dist", None)))]
    reserved = {ep.name for ep in builtin}
    first = {id(ep) for ep in builtin}
    for ep in builtin + [ep for ep in eps if id(ep) not in first]:
        if allow is not None and ep.name not in allow:
            continue
        if ep.name in reserved and id(ep) not in first:
            _ep_refused.setdefault(ep.name + "@" + _dist_label(getattr(ep, "dist", None)), []).append(
                f"plugin {ep.name!r} of {_dist_label(getattr(ep, 'dist', None))} refused: {ep.name!r} is the name "
                "of a built-in plugin of decoderbench (rename the entry point); the built-in loaded")
            continue
        if pm.has_plugin(ep.name) or ep.name in _errors or any(r["name"] == ep.name for r in _remote):
            continue
        label = _dist_label(getattr(ep, "dist", None))
        if not _is_builtin_source(label) and not _is_trusted(ep.name):  # described by a worker, never imported
            _remote.append({"name": ep.name, "value": ep.value, "dist": label})
            _sources[ep.name] = label
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # isolate a broken plugin
            _errors[ep.name] = f"plugin {ep.name!r} failed to load: {type(exc).__name__}: {exc}"
            continue
        _sources[ep.name] = _dist_label(getattr(ep, "dist", None))
    _pm = pm
    return pm


def _is_trusted(name: str) -> bool:
    t = _trusted
    if t is None:
        env = os.environ.get(TRUSTED_ENV)
        t = None if env is None else ("all" if env.strip() == "all" else {x.strip() for x in env.split(",") if x.strip()})
    return t == "all" or (isinstance(t, (set, frozenset)) and name in t)


def trust_in_process(names="all") -> None:
    """Import third-party entry points in this process from now on (``"all"`` or a set of entry-point names),
    as ``--no-isolate`` asks; described ones are imported now (hand-registered plugins stay). Whoever calls it
    vouches for that code."""
    global _trusted
    _trusted = "all" if names == "all" else set(names)
    if _pm is None:
        return
    by_name = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        by_name.setdefault((ep.name, ep.value, _dist_label(getattr(ep, "dist", None))), ep)
    for r in [r for r in _remote if _is_trusted(r["name"])]:
        _remote.remove(r)
        _errors.pop(r["name"], None)
        ep = by_name.get(_key(r))
        try:
            if ep is None:
                raise ModuleNotFoundError(f"entry point {r['name']} = {r['value']} is no longer installed")
            _pm.register(ep.load(), name=r["name"])
        except Exception as exc:  # isolate a broken plugin
            _errors[r["name"]] = f"plugin {r['name']!r} failed to load: {type(exc).__name__}: {exc}"
    _reset_registries()


def described(reg) -> dict | None:
    """The worker-reported description of a decoder or encoder only described here (None for a loaded one)."""
    return getattr(getattr(reg, "cls", None), "_described", None)


def discovery_cost() -> dict:
    """``{"worker_starts": n, "seconds": s}``: the worker processes started to describe third-party plugins in
    this process, and the time they took (start, imports and answers)."""
    return dict(_discovery)


def register_plugin(plugin, name: str | None = None, source: str | None = None, version: str | None = None) -> str:
    """Register a plugin object or module by hand (tests, notebooks); returns its pluggy name. Its decoders'
    source is ``source`` (default ``local:<name>``; it must start with ``local:``: code of this session);
    ``version``, when given, replaces the version of the decoders it registers (session code: the API adds a
    digest of the code, so that a store never reuses a row of edited code)."""
    pm = get_plugin_manager()
    name = pm.register(plugin, name=name)
    _sources[name] = source if source is not None and str(source).startswith("local:") else f"local:{name}"
    if version is not None:
        _versions[name] = str(version)
    _reset_registries()
    return name


def unregister_plugin(name: str) -> None:
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _sources.pop(name, None)
    _versions.pop(name, None)
    _reset_registries()


def reset() -> None:
    """Forget everything (the next call reloads entry points)."""
    global _pm, _trusted, _may_describe
    _pm = None
    _trusted = None
    _may_describe = True
    _remote.clear()
    _descriptions.clear()
    _discovery.clear()
    _discovery.update(worker_starts=0, seconds=0.0)
    from ..run import worker

    worker.close_describer()
    _sources.clear()
    _versions.clear()
    _errors.clear()
    _collisions.clear()
    _ep_refused.clear()
    _reset_registries()


def _reset_registries() -> None:
    global _decoders, _encoders
    _decoders = None
    _encoders = None
    _collisions.clear()


def _is_builtin_source(source: str) -> bool:
    return str(source).startswith("decoderbench==")


def _describe_remote() -> None:
    """Fill the cache with a description of every third-party entry point not imported here (one worker)."""
    missing = [r for r in _remote if _key(r) not in _descriptions]
    if not missing or not _may_describe:
        return
    from ..run import worker

    got = worker.describe_entry_points(missing, _discovery)
    for r in missing:
        _descriptions[_key(r)] = got.get(r["name"]) or {"error": f"plugin {r['name']!r} failed to load: no description"}


def _key(r: dict) -> tuple:
    return (r["name"], r["value"], r["dist"])


def _described_class(item: dict, what: str, source: str):
    """A stand-in for a described third-party decoder or encoder: its reported attributes; building it raises."""
    from .decoder import Decoder
    from ..model.encoders import Encoder

    def refuse(self, *a, **k):
        raise RuntimeError(f"{what} {item.get('name')!r} of {source} runs only in a worker: third-party code is not "
                           f"imported in the harness (run it isolated, or with --no-isolate / isolate=False, or name "
                           f"its entry point in {TRUSTED_ENV})")

    if what == "decoder":
        ns = {"name": str(item.get("name", "")), "kind": str(item.get("kind", "")),
              "requires": frozenset(str(x) for x in item.get("requires") or ()), "version": str(item.get("version", "1")),
              "description": str(item.get("description") or ""), "_described": item, "__init__": refuse}
        if item.get("encoder_weight"):
            ns["encoder_weight"] = refuse
        return type(str(item.get("qualname") or "Described").rsplit(".", 1)[-1], (Decoder,), ns)
    ns = {"name": str(item.get("name", "")), "capabilities": frozenset(str(x) for x in item.get("capabilities") or ()),
          "__doc__": str(item.get("description") or ""), "_described": item, "__init__": refuse}
    return type(str(item.get("qualname") or "Described").rsplit(".", 1)[-1], (Encoder,), ns)


def _collect(hookname: str, check, kind_of) -> dict[str, Registered]:
    pm = get_plugin_manager()
    _describe_remote()
    found: dict[str, Registered] = {}
    caller = getattr(pm.hook, hookname)
    impls = caller.get_hookimpls()  # registration order (pluggy calls them in reverse)
    what = "encoder" if hookname.endswith("encoders") else "decoder"
    field = what + "s"

    def rank(pname):
        src = _sources.get(pname, pname)
        return 0 if _is_builtin_source(src) else (2 if str(src).startswith("local:") else 1)

    # built-ins first, so that a third-party plugin can never take a built-in's name; then the described
    # third-party entry points and those imported here, then session plugins
    steps = [(rank(impl.plugin_name), impl.plugin_name, impl) for impl in impls]
    steps += [(1, r["name"], r) for r in _remote if _key(r) in _descriptions]
    steps.sort(key=lambda t: t[0])
    for _, pname, impl in steps:
        source = _sources.get(pname, pname)

        def register(cls, _pname=pname, _source=source):
            check(cls)
            if cls.name in found:  # refused alone: the plugin's other registrations go on
                first = found[cls.name]
                _collisions.setdefault(_pname, []).append(
                    f"plugin {_pname!r} ({_source}): {what} name {cls.name!r} refused, already registered by "
                    f"{first.source} (plugin {first.plugin!r}); the rest of both plugins loaded")
                return
            found[cls.name] = Registered(cls.name, cls, kind_of(cls), _source, _pname,
                                         _versions.get(_pname) or str(getattr(cls, "version", "1")))

        if isinstance(impl, dict):  # described by a worker: plain data only
            desc = _descriptions[_key(impl)]
            if desc.get("error"):
                _errors[pname] = str(desc["error"])
                continue
            try:
                for item in desc.get(field) or []:
                    register(_described_class(item, what, source))
            except Exception as exc:
                _errors[pname] = f"plugin {pname!r} failed to register: {type(exc).__name__}: {exc}"
                continue
            if desc.get(f"{field}_error"):
                _errors[pname] = str(desc[f"{field}_error"])
            continue
        try:
            impl.function(register=register)
        except Exception as exc:
            _errors[pname] = f"plugin {pname!r} failed to register: {type(exc).__name__}: {exc}"
    return found


def validate_described(items: list) -> list:
    """Check options of described decoders in their describing worker: ``items`` are ``(decoder name,
    options JSON, n_s, n_d, p)``; returns for each ``None`` or the one-line refusal."""
    from ..run import worker

    reg = decoders()
    todo = []
    for name, opts, n_s, n_d, p in items:
        r = next(x for x in _remote if x["name"] == reg[name].plugin)
        todo.append((r, name, opts, n_s, n_d, p))
    return worker.validate_described_options(todo, _discovery)


def _check_encoder_class(cls) -> None:
    from ..model.encoders import Encoder

    if not (isinstance(cls, type) and issubclass(cls, Encoder)) or not getattr(cls, "name", ""):
        raise ValueError(f"an encoder must be a named subclass of decoderbench.Encoder, got {cls!r}")


def decoders() -> dict[str, Registered]:
    """Every registered decoder by name, in registration order."""
    global _decoders
    if _decoders is None:
        _decoders = _collect("decoderbench_register_decoders", check_decoder_class, lambda c: c.kind)
    return _decoders


def encoders() -> dict[str, Registered]:
    """Every registered encoder by name."""
    global _encoders
    if _encoders is None:
        _encoders = _collect("decoderbench_register_encoders", _check_encoder_class, lambda c: "encoder")
    return _encoders


def load_errors() -> dict[str, str]:
    """Plugins that failed to load or register, or had a registration refused: {plugin name: message}."""
    decoders()
    encoders()
    out = dict(_errors)
    for p, msgs in {**_ep_refused, **_collisions}.items():
        out[p] = "; ".join(([out[p]] if p in out else []) + msgs)
    return out


def failures() -> dict[str, str]:
    """Plugins that failed to load or register (each becomes an error row when selected): {plugin: message}."""
    decoders()
    encoders()
    return dict(_errors)


def collisions() -> dict[str, list]:
    """Refused registrations of names already taken: {plugin name: [message naming both distributions]}."""
    decoders()
    encoders()
    return {k: list(v) for k, v in {**_ep_refused, **_collisions}.items()}


def error_for(name: str) -> str:
    """Why decoder ``name`` cannot run: its plugin's failure, or the list of plugins that failed to load."""
    fails = failures()
    if name in fails:
        return fails[name]
    if fails:
        return (f"decoder {name!r} is not registered; plugins that failed to load (one of them may provide it): "
                + "; ".join(fails.values()))
    return f"plugins: unknown decoder {name!r}; registered: {', '.join(decoders()) or '(none)'}"


def get_decoder(name: str) -> Registered:
    d = decoders()
    if name not in d:
        raise BadInput(f"plugins: unknown decoder {name!r}; registered: {', '.join(d) or '(none)'}")
    return d[name]


def get_encoder(name: str) -> Registered:
    e = encoders()
    if name not in e:
        raise BadInput(f"encoder must be one of {', '.join(e) or '(none)'}, got {name!r}")
    if described(e[name]) is not None:  # the harness builds the encoder: its code would run here
        raise BadInput(f"encoder {name!r} of {e[name].source} is third-party code, which the harness does not import; "
                       f"name its entry point {e[name].plugin!r} in {TRUSTED_ENV} to use it (it then runs in this "
                       "process, beside the scorer)")
    return e[name]


# here rather than in decoder.py: it looks decoders up in the registry, and decoder.py imports nothing of plugins.py
def check_unit_options(units) -> None:
    """Bad decoder options in any of ``units`` (``runner.WorkUnit`` s) raise BadInput (one line
    ``decoder.option: message``) before anything runs: a decoder's declared ``Options`` schema
    (:mod:`decoderbench.contract.options`) checks its unit's options; a decoder that declares none may still have a
    ``validate_options(options, cell)`` classmethod (the older protocol)."""
    import json as _json

    seen = set()
    remote = []  # described third-party decoders: checked in the worker that described them
    for u in units:
        sig = (u.decoder, u.options, u.n_s, u.n_d, u.p)
        if sig in seen:
            continue
        seen.add(sig)
        try:
            reg = get_decoder(u.decoder)
        except ValueError:
            continue  # a broken plugin becomes its row
        desc = described(reg)
        if desc is not None:  # a described third-party decoder: its options are checked in the describing worker
            if desc.get("options") is not None or desc.get("legacy_validate"):
                remote.append(sig)
            if desc.get("legacy_validate"):
                import warnings

                warnings.warn(f"{u.decoder}: validate_options is deprecated; declare the options as a nested "
                              "`class Options(decoderbench.Options)` instead", DeprecationWarning, stacklevel=2)
            continue
        if getattr(reg.cls, "Options", None) is not None:
            from .options import check as check_declared

            check_declared(reg.cls, _json.loads(u.options), Cell(u.n_s, u.n_d, u.p), name=u.decoder)
            continue
        check = getattr(reg.cls, "validate_options", None)
        if callable(check) and getattr(check, "__func__", None) is not Decoder.validate_options.__func__:
            import warnings

            warnings.warn(f"{u.decoder}: validate_options is deprecated; declare the options as a nested "
                          "`class Options(decoderbench.Options)` instead", DeprecationWarning, stacklevel=2)
            try:
                check(_json.loads(u.options), Cell(u.n_s, u.n_d, u.p))
            except ValueError as exc:  # the decoder's one line, as the project's bad-input error (CLI: exit 2)
                raise BadInput(str(exc).splitlines()[0] if str(exc) else f"{u.decoder}: bad options") from None
    if remote:
        for line in validate_described(remote):
            if line:
                raise BadInput(line)
