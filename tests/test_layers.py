"""The layers contract, over the import graph (every import statement, at module level or inside functions):

* no module of the harness (``decoderbench/``) imports the built-in plugins (``decoderbench_plugins``): the
  harness knows no decoder by name; plugins reach it through hooks only;
* no plugin imports a private name (``_x``) or a private module (``decoderbench._x``) of the harness: plugins
  use the public API, as a third-party plugin must;
* the stages: each module imports only its own stage and the stages below it (imports inside functions
  count), base < model < contract < results < run < board < surface (``STAGE_ORDER``), but for the listed
  upward edges still to be removed (``KNOWN_UPWARD``);
* no import cycle among the harness's modules (imports inside functions count), but for the listed back edges
  still to be removed (``KNOWN_BACK_EDGES``); ``python docs/import_graph.py`` prints the graph's numbers;
* nothing in the harness, the built-in plugins, the benchmarks or the examples imports a flat 0.1 module name
  (``decoderbench.store``): those are aliases for other people's code (``decoderbench/_compat.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                yield node.lineno, node.module, a.name


def test_the_harness_imports_no_plugin():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in sorted((ROOT / "decoderbench").rglob("*.py"))
           for line, mod, _ in _imports(p) if mod.split(".")[0] == "decoderbench_plugins"]
    assert not bad, bad


def test_plugins_import_only_public_names_of_the_harness():
    bad = []
    for p in sorted((ROOT / "plugins").rglob("*.py")):
        for line, mod, name in _imports(p):
            if mod.split(".")[0] != "decoderbench":
                continue
            private_mod = any(part.startswith("_") for part in mod.split(".")[1:])
            private_name = name is not None and name.startswith("_") and not name.endswith("__")
            if private_mod or private_name:
                bad.append(f"{p.relative_to(ROOT)}:{line} imports {mod}" + (f".{name}" if name else ""))
    assert not bad, bad


# ----------------------------------------------------------------------------- cycles (docs/import_graph.py)


def _import_graph():
    import importlib.util
    import sys

    if "decoderbench_import_graph" not in sys.modules:
        spec = importlib.util.spec_from_file_location("decoderbench_import_graph", ROOT / "docs" / "import_graph.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # its dataclass looks its module up there
        spec.loader.exec_module(mod)
    return sys.modules["decoderbench_import_graph"]


#: Imports (made inside functions) that still close a cycle, each to be removed, never added to: ``theory``'s
#: callable-module shim calls ``api.theory``; ``plots.make_figures`` draws ``phase``'s diagram while ``phase`` draws with
#: ``plots``' helpers; ``runner`` runs an isolated decoder through ``worker``, which runs units with ``runner``;
#: the registry (``plugins``) starts the worker that describes third-party entry points, which loads plugins
#: through the registry (the fix: the run layer starts it and hands the registry the descriptions).
KNOWN_BACK_EDGES = {("theory", "api"), ("plots", "phase"), ("runner", "worker"),
                    ("registry", "worker")}

#: The stages, bottom up: base (errors, argument checks, the version, the 0.1 aliases), the model, the decoder
#: contract, results (row schema and store), the run, the board, and the surface (API, CLI, plugin-author tools).
STAGE_ORDER = ("base", "model", "contract", "results", "run", "board", "surface")
BASE = {"errors", "_validate", "validate", "_version", "_compat"}

#: Imports that reach up a stage, each to be removed, never added to (they also close the cycles above):
#: ``theory``'s callable-module shim calls the API; ``unrolled`` runs its sweep through the API; the registry
#: starts the run stage's describing worker.
KNOWN_UPWARD = {("model.theory", "api"), ("board.unrolled", "api"), ("contract.registry", "run.worker")}


def stage_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("api", "cli", "testing", "template", "__main__"):
        return "surface"
    if parts[0] in BASE:
        return "base"
    assert parts[0] in STAGE_ORDER, f"{module}: a module outside the stage folders"
    return parts[0]


def test_each_stage_imports_only_the_stages_below_it():
    ig = _import_graph()
    modules, edges = ig.graph(ROOT / "decoderbench")
    for m in modules:
        stage_of(m)  # every module sits in a stage
    rank = {s: i for i, s in enumerate(STAGE_ORDER)}
    up = {(e.src.partition(".")[2], e.dst.partition(".")[2]): e for e in edges
          if rank[stage_of(e.dst)] > rank[stage_of(e.src)]}
    new = {k: f"{e.src}:{e.line} imports {e.dst}" for k, e in up.items() if k not in KNOWN_UPWARD}
    assert not new, f"imports that reach up a stage: {sorted(new.values())}"
    assert KNOWN_UPWARD <= set(up), f"gone, drop from KNOWN_UPWARD: {KNOWN_UPWARD - set(up)}"


def test_nothing_of_ours_imports_a_flat_alias():
    from decoderbench._compat import MOVED

    bad = []
    for folder in ("decoderbench", "plugins", "benchmarks", "examples", "docs"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            for line, mod, name in _imports(p):
                parts = mod.split(".")
                if parts[0] == "decoderbench" and (
                        (len(parts) > 1 and parts[1] in MOVED) or (len(parts) == 1 and name in MOVED)):
                    bad.append(f"{p.relative_to(ROOT)}:{line} imports {mod}" + (f".{name}" if name else ""))
    assert not bad, bad


def test_the_flat_names_of_0_1_are_aliases_of_the_moved_modules():
    import importlib
    import warnings

    from decoderbench._compat import MOVED

    for old, new in MOVED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alias = importlib.import_module(f"decoderbench.{old}")
        assert alias is importlib.import_module(f"decoderbench.{new}"), old
        assert alias.__spec__.name == f"decoderbench.{new}"
        # the first import of an alias warns, naming the new path (later ones find it in sys.modules)
        assert all(issubclass(w.category, DeprecationWarning) and f"decoderbench.{new}" in str(w.message)
                   for w in caught)


def test_no_import_cycles_but_the_known_back_edges():
    """No cycle among decoderbench's modules, counting imports at module level and inside functions, once the
    listed back edges are left out; each listed edge still exists (remove it from the list when it goes)."""
    ig = _import_graph()
    modules, edges = ig.graph(ROOT / "decoderbench")

    def short(m):
        return m.rpartition(".")[2]

    kept = [e for e in edges if (short(e.src), short(e.dst)) not in KNOWN_BACK_EDGES]
    _, cycles = ig._levels(modules, kept)
    assert not cycles, f"import cycles: {cycles}"
    present = {(short(e.src), short(e.dst)) for e in edges}
    assert KNOWN_BACK_EDGES <= present, f"gone, drop from KNOWN_BACK_EDGES: {KNOWN_BACK_EDGES - present}"
    # the decoder contract sits below the registry: decoder.py imports nothing of plugins.py, even in a function
    assert not [e for e in edges if e.src == "decoderbench.contract.decoder" and e.dst == "decoderbench.contract.registry"]
    # the row schema sits low: it imports only the base and the model (the key columns a process gives a unit);
    # the store checks rows without the run stage
    assert {e.dst for e in edges if e.src == "decoderbench.results.rows"} <= {
        "decoderbench.errors", "decoderbench._validate", "decoderbench.model.evalkey", "decoderbench.model.hadamard"}
    assert not [e for e in edges if e.src.startswith("decoderbench.results.") and e.dst.startswith("decoderbench.run.")]


def test_the_import_graph_script_reports_its_numbers(capsys):
    ig = _import_graph()
    assert ig.main([str(ROOT / "decoderbench")]) == 0
    out = capsys.readouterr().out
    for word in ("modules", "layers", "cycles", "upward", "in-function"):
        assert f"\n{word}" in out
