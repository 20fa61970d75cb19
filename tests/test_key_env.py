"""The evaluation key never reaches an isolated decoder's process: not in its ``os.environ``, not in its
initial environment block (``/proc/self/environ``), not in its parent's (the forkserver's) block, although
the harness had the key in its environment before the first worker started. (A process of the same user can
still read the harness's own block, ``/proc/<harness>/environ``: the README's Trust section says so.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SECRET = "s3cret-key-for-the-environ-test"

PLUGIN = textwrap.dedent('''
    import os
    import decoderbench as db

    def _blocks():
        out = {"os.environ": " ".join(f"{k}={v}" for k, v in os.environ.items())}
        for name, pid in (("self", os.getpid()), ("parent", os.getppid())):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    out[name] = f.read().decode("utf-8", "replace")
            except OSError as exc:
                out[name] = f"unreadable: {exc}"
        return out

    class Snoop(db.Decoder):
        name = "snoop"
        kind = "elementwise"

        def fit(self, train):
            seen = {k: ("SECRET" if SECRET in v else "clean") for k, v in _blocks().items()}
            return {"seen": seen}

        def decode(self, z):
            return z.clamp(min=0)
''').replace("SECRET in v", f"{SECRET!r} in v")

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import decoderbench as db
    from decoderbench import api
    from snoop_plugin import Snoop
    rows = api.records(db.evaluate([Snoop], n_s=256, r=0.25, p=0.05, max_samples=256, isolate=True,
                                   device="cpu", progress=False))
    print(json.dumps({"isolated": rows[0]["isolated"], "status": rows[0]["status"],
                      "params": rows[0]["params"], "stream": rows[0]["eval_stream"],
                      "harness_still_has_key": os.environ.get("DECODERBENCH_EVAL_KEY") == sys.argv[1]}))
''')


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_isolated_decoder_sees_no_key_anywhere_in_its_environment(tmp_path):
    (tmp_path / "snoop_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "DECODERBENCH_EVAL_KEY": SECRET,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SCRIPT, SECRET], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == "ok" and got["isolated"] is True, got
    assert got["stream"].startswith("key-")  # the harness scored with the secret key
    assert got["harness_still_has_key"]  # and its own os.environ is as the user left it
    assert got["params"]["seen"] == {"os.environ": "clean", "self": "clean", "parent": "clean"}, got["params"]
