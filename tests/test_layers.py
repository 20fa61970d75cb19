"""The layers contract, over the import graph (every import statement, at module level or inside functions):

* no module of the harness (``decoderbench/``) imports the built-in plugins (``decoderbench_plugins``): the
  harness knows no decoder by name; plugins reach it through hooks only;
* no plugin imports a private name (``_x``) or a private module (``decoderbench._x``) of the harness: plugins
  use the public API, as a third-party plugin must.
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
