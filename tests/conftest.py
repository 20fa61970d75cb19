"""Suite-wide settings, and fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory):
    """The trained plugin's model cache in a folder of this test session, not the user's ~/.cache (a test must
    not depend on, or write into, models another run left there; two suites running at once would share it),
    unless DECODERBENCH_CACHE says otherwise. Set before any worker or forkserver starts, so they inherit it."""
    if "DECODERBENCH_CACHE" in os.environ:
        yield
        return
    os.environ["DECODERBENCH_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    try:
        yield
    finally:
        os.environ.pop("DECODERBENCH_CACHE", None)


def _shared_dir(prefix: str, parent=None) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    d.chmod(0o755)
    return d


@pytest.fixture
def shared_tmp():
    """A fresh folder that other users can read (mode 0755), outside pytest's temporary folders (mode 0700),
    removed after the test. Tests install third-party plugins here: where the harness runs as root, a worker
    that imports one runs as an unprivileged user (``nobody``, or ``DECODERBENCH_WORKER_USER``), which must
    be able to read it. (A folder a worker writes into: ``chmod 0o777`` it.)"""
    d = _shared_dir("decoderbench-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class SharedTmpFactory:
    """``mktemp(name)``: like pytest's ``tmp_path_factory.mktemp``, a fresh folder other users can read."""

    def __init__(self):
        self.base: Path | None = None

    def mktemp(self, name: str) -> Path:
        if self.base is None:
            self.base = _shared_dir("decoderbench-tests-")
        return _shared_dir(f"{name}-", self.base)

    def cleanup(self) -> None:
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_tmp_factory():
    """Session-scoped :func:`shared_tmp` (for module-scoped fixtures): removed when the session ends."""
    f = SharedTmpFactory()
    yield f
    f.cleanup()
