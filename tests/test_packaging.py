"""The distribution ships every module: each folder under decoderbench/ and plugins/ that Python imports as a
package (a folder of .py or .toml files) is listed in pyproject.toml's ``packages`` (a wheel leaves out what is
not listed: an editable install hides that)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {v: k for k, v in cfg.get("package-dir", {}).items()}
    for top, name in (("decoderbench", "decoderbench"), (dirs.get("plugins", "plugins"), "plugins")):
        for folder in [ROOT / name, *(p for p in (ROOT / name).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")) and not any(folder.glob("*.toml")):
                continue
            pkg = ".".join([top, *folder.relative_to(ROOT / name).parts])
            assert pkg in listed, f"{folder.relative_to(ROOT)} is not in pyproject's packages (as {pkg})"
