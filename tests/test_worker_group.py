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
    (tmp_path / "spawn_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("DECODERBENCH_TEST_PIDFILE", str(pidfile))
    import spawn_plugin

    cls = {"spawner": spawn_plugin.Spawner, "fork_then_die": spawn_plugin.ForkThenDie}[name]
    row = api.records(db.evaluate([cls], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", isolate=True,
                                  timeout=120, progress=False))[0]
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
