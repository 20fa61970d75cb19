"""A decoder's worker leads its own process group, killed with the worker when its unit ends: processes the
decoder started do not outlive the unit, and one that holds the worker's pipe open does not turn the
worker's death into a timeout."""

from __future__ import annotations

import os
import textwrap
import time

import pytest

import decoderbench as db
from decoderbench import api

PLUGIN = textwrap.dedent('''
    import os, subprocess, sys, time
    import decoderbench as db

    class Spawner(db.Decoder):
        """Honest, but leaves a `sleep 600` behind in fit."""
        name = "spawner"
        kind = "elementwise"
        pidfile = None

        def fit(self, train):
            p = subprocess.Popen(["sleep", "600"])
            with open(os.environ["DECODERBENCH_TEST_PIDFILE"], "a") as f:
                f.write(f"{p.pid}\\n")

        def decode(self, z):
            return z.clamp(min=0)

    class ForkThenDie(Spawner):
        """Forks a child that holds every inherited descriptor (the pipe included) and sleeps; then exits."""
        name = "fork_then_die"

        def fit(self, train):
            pid = os.fork()
            if pid == 0:
                time.sleep(600)
                os._exit(0)
            with open(os.environ["DECODERBENCH_TEST_PIDFILE"], "a") as f:
                f.write(f"{pid}\\n")
            os._exit(3)
''')


def _isolated_row(tmp_path, monkeypatch, module: str, source: str, cls_name: str, **kwargs) -> dict:
    """The row of class ``cls_name`` of a plugin module written from ``source``, scored in a worker process
    (isolate=True; importable there through sys.path) on a small cell."""
    import importlib

    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = getattr(importlib.import_module(module), cls_name)
    return api.records(db.evaluate([cls], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", isolate=True,
                                   progress=False, **kwargs))[0]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
@pytest.mark.parametrize("name, status, words", [("spawner", "ok", None),
                                                 ("fork_then_die", "error", "exited with code 3")])
def test_what_a_decoder_starts_dies_with_its_unit(tmp_path, monkeypatch, name, status, words):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("DECODERBENCH_TEST_PIDFILE", str(pidfile))
    row = _isolated_row(tmp_path, monkeypatch, "spawn_plugin", PLUGIN,
                        {"spawner": "Spawner", "fork_then_die": "ForkThenDie"}[name], timeout=120)
    assert row["status"] == status and row["isolated"] is True, row
    if words:
        assert words in row["error"]
    # (status error, not timeout: the worker's exit was seen although the forked child held its pipe open)
    pids = [int(x) for x in pidfile.read_text().split()]
    assert pids
    for _ in range(50):
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), [p for p in pids if _alive(p)]


REDUCER = textwrap.dedent('''
    import os
    import torch
    import decoderbench as db

    def _planted(path):
        open(path, "w").write("code ran in the process that unpickled me")
        return torch.zeros(1)

    class Payload:
        def __reduce__(self):
            return (_planted, (os.environ["DECODERBENCH_TEST_PLANT"],))

    class Reducer(db.Decoder):
        """decode returns an object whose unpickling would run a function (a frame walk to the scored x, in
        the audit that found it)."""
        name = "reducer"
        kind = "elementwise"

        def decode(self, z):
            return Payload()

    class TensorSubclass(torch.Tensor):
        pass

    class Subclassed(Reducer):
        """decode returns a Tensor subclass (whose methods would run in the harness)."""
        name = "subclassed"

        def decode(self, z):
            return z.clamp(min=0).as_subclass(TensorSubclass)
''')


@pytest.mark.parametrize("name, words", [("reducer", "decode returned a reduce_plugin.Payload, not a torch.Tensor"),
                                         ("subclassed", "not a torch.Tensor")])
def test_nothing_but_plain_data_crosses_from_a_worker(tmp_path, monkeypatch, name, words):
    """An isolated decoder's output is never unpickled as an object in the harness: a payload whose
    __reduce__ would run code is named by its type and becomes an error row, and the code never runs."""
    plant = tmp_path / "planted"
    monkeypatch.setenv("DECODERBENCH_TEST_PLANT", str(plant))
    row = _isolated_row(tmp_path, monkeypatch, "reduce_plugin", REDUCER,
                        {"reducer": "Reducer", "subclassed": "Subclassed"}[name])
    assert row["status"] == "error" and words in row["error"], row
    assert not plant.exists()


def test_the_plain_unpickler_refuses_any_class():
    import pickle

    from decoderbench.run.worker import _PlainUnpickler, plain

    ok = plain({"a": (1, 2.5, "x", b"y", None, True), "v": torch_version()})
    assert pickle.loads(pickle.dumps(ok)) == _PlainUnpickler(__import__("io").BytesIO(pickle.dumps(ok))).load()
    with pytest.raises(pickle.UnpicklingError, match="only plain data"):
        _PlainUnpickler(__import__("io").BytesIO(pickle.dumps(__import__("collections").OrderedDict(a=1)))).load()


def torch_version():
    import torch

    return torch.__version__  # a str subclass (TorchVersion): plain() makes it a str
