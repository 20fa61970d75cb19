"""The import graph of a package's modules, and the numbers the layers contract watches.

    python docs/import_graph.py [PACKAGE_DIR] [--list]

PACKAGE_DIR defaults to this checkout's ``decoderbench/``. Every ``import`` / ``from ... import`` of a module
of the package is an edge, whether at module level or inside a function (an import inside a function hides a
dependency; it does not remove it); imports under ``if TYPE_CHECKING:`` are not run and are left out, and so are
the package ``__init__``'s lazy re-exports (its module ``__getattr__``): a facade, not a dependency of the
harness. ``importlib.import_module`` with a literal name counts as an import. It prints:

* modules: the package's modules (``__init__`` included);
* layers: the length (in modules) of the longest import chain, over the whole graph with each cycle folded into
  one node;
* cycles: the strongly connected groups of more than one module (each names its modules);
* upward imports: imports inside functions whose target sits above the importer in the layering of the
  module-level imports (they would close a cycle, or reach up, if made at module level);
* imports inside functions: every project import made inside a function (``def``), whatever its direction.

``--list`` also prints the cycles' and the upward imports' sites. ``tests/test_layers.py`` uses :func:`graph`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    in_function: bool


def _module_name(pkg: str, root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [pkg, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node, in_function: bool, skip_lazy_getattr: bool):
    """Yield (import node, in_function), skipping TYPE_CHECKING blocks (and the package's lazy ``__getattr__``)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _walk_one(sub, in_function, skip_lazy_getattr)
            continue
        yield from _walk_one(child, in_function, skip_lazy_getattr)


def _walk_one(child, in_function: bool, skip_lazy_getattr: bool):
    if isinstance(child, (ast.Import, ast.ImportFrom)):
        yield child, in_function
        return
    if isinstance(child, ast.Call):
        yield child, in_function
    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        if skip_lazy_getattr and not in_function and getattr(child, "name", "") in ("__getattr__", "__dir__"):
            return
        yield from _walk(child, True, skip_lazy_getattr)
        return
    yield from _walk(child, in_function, skip_lazy_getattr)


def _targets(node, modname: str, is_pkg: bool, modules: set[str]):
    """The package's modules that one import node names."""
    package = modname if is_pkg else modname.rpartition(".")[0]
    if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name != "import_module" or not node.args or not isinstance(node.args[0], ast.Constant):
            return
        target = node.args[0].value
        if not isinstance(target, str):
            return
        if target.startswith("."):
            target = package + target
        if target in modules:
            yield target
        return
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name in modules:
                yield a.name
        return
    if node.level:
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base not in modules:
        return
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    yield from submodules
    if len(submodules) < len(node.names):  # names taken from the module itself
        yield base


def graph(package_dir: str | Path) -> tuple[list[str], list[Edge]]:
    """The package's modules and every import edge between them (module level and inside functions)."""
    root = Path(package_dir).resolve()
    pkg = root.name
    files = sorted(root.rglob("*.py"))
    names = {p: _module_name(pkg, root, p) for p in files}
    modules = set(names.values())
    edges = []
    for path, mod in names.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node, in_function in _walk(tree, False, skip_lazy_getattr=is_pkg and mod == pkg):
            for dst in _targets(node, mod, is_pkg, modules):
                if dst != mod:
                    edges.append(Edge(mod, dst, node.lineno, in_function))
    return sorted(modules), edges


def _sccs(nodes, adj):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def _levels(nodes, edges):
    """Each module's layer (1 = imports no module of the package), cycles folded into one node."""
    adj = {}
    for e in edges:
        adj.setdefault(e.src, set()).add(e.dst)
    comps = _sccs(nodes, adj)
    comp_of = {m: i for i, c in enumerate(comps) for m in c}
    memo = {}

    def depth(c):
        if c not in memo:
            memo[c] = 0  # guards nothing (the condensation is acyclic) but keeps recursion finite
            deps = {comp_of[w] for m in comps[c] for w in adj.get(m, ()) if comp_of[w] != c}
            memo[c] = 1 + max((depth(d) for d in deps), default=0)
        return memo[c]

    return {m: depth(comp_of[m]) for m in nodes}, [c for c in comps if len(c) > 1]


def report(package_dir) -> dict:
    modules, edges = graph(package_dir)
    level_all, cycles = _levels(modules, edges)
    level_top, _ = _levels(modules, [e for e in edges if not e.in_function])
    inner = [e for e in edges if e.in_function]
    upward = [e for e in inner if level_top[e.dst] > level_top[e.src]]
    return {
        "modules": len(modules),
        "layers": max(level_all.values(), default=0),
        "cycles": cycles,
        "upward": upward,
        "in_function": inner,
        "module_level": [e for e in edges if not e.in_function],
    }


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    show = "--list" in args
    args = [a for a in args if a != "--list"]
    package_dir = args[0] if args else Path(__file__).resolve().parent.parent / "decoderbench"
    r = report(package_dir)
    print(f"package      {Path(package_dir).resolve()}")
    print(f"modules      {r['modules']}")
    print(f"layers       {r['layers']} (longest import chain, in modules)")
    print(f"cycles       {len(r['cycles'])}" + "".join(f"\n  {' <-> '.join(c)}" for c in r["cycles"]))
    print(f"upward       {len(r['upward'])} (imports inside functions that reach up the module-level layering)")
    print(f"in-function  {len(r['in_function'])} (project imports made inside functions)")
    print(f"module-level {len(r['module_level'])}")
    if show:
        for e in r["upward"]:
            print(f"  up: {e.src}:{e.line} -> {e.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
