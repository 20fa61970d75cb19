"""The flat module names of decoderbench 0.1 (``decoderbench.store``, ``decoderbench.plugins``, ...) as aliases.

The package is laid out by stage (``model/``, ``contract/``, ``results/``, ``run/``, ``board/``); a plugin or
script written against the flat layout keeps working: ``import decoderbench.scoring`` gives the very module
object ``decoderbench.run.scoring`` (one module, one state: patching one patches the other), with a
``DeprecationWarning`` naming the new path. Nothing in decoderbench or its built-in plugins imports an old name
(tests/test_layers.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old flat name -> its module's path in the stage layout
MOVED = {
    "data": "model.data", "evalkey": "model.evalkey", "hadamard": "model.hadamard", "encoders": "model.encoders",
    "channel": "model.channel", "theory": "model.theory", "exact": "model.exact", "symmetry": "model.symmetry",
    "decoder": "contract.decoder", "options": "contract.options", "hookspecs": "contract.hookspecs",
    "plugins": "contract.registry", "activation": "contract.activation",
    "rows": "results.rows", "store": "results.store",
    "scoring": "run.scoring", "runner": "run.runner", "worker": "run.worker", "sweep": "run.sweep",
    "grids": "run.grids", "progress": "run.progress", "ray_executor": "run.ray_executor", "memcheck": "run.memcheck",
    "leaderboard": "board.leaderboard", "plots": "board.plots", "phase": "board.phase", "scaling": "board.scaling",
    "site": "board.site", "unrolled": "board.unrolled",
}


_REAL_SPECS: dict = {}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``decoderbench.<old>`` and loads it as the module now at ``decoderbench.<stage>.<name>``."""

    def find_spec(self, fullname, path=None, target=None):
        pkg, _, short = fullname.partition(".")
        if pkg != "decoderbench" or short not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = "decoderbench." + MOVED[spec.name.partition(".")[2]]
        warnings.warn(f"{spec.name} is now {new} (the package is laid out by stage); the old name is an alias",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        _REAL_SPECS[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the import machinery gave the module the alias's spec; it keeps its own
        module.__spec__ = _REAL_SPECS[module.__spec__.name]


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
