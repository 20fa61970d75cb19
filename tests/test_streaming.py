"""Streaming: no built-in decoder nor the harness allocates O(n_s n_d) or O(n_s^2).

At n_s = 2^16, r = 0.5 one dense W_in would take 8 GB and R 16 GB (float32); the whole run, five decoders
fitted and scored, must stay under the memory check's own estimate (about 0.9 GB with its margin)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from decoderbench import memcheck


@pytest.mark.slow
def test_cell_at_2_16_streams(tmp_path):
    n_s = 2**16
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-m", "decoderbench", "run", "--plugins", "relu,linear,topk,oracle,vamp",
                          "--ns", str(n_s), "--r", "0.5", "--p", "0.01", "--min-samples", "2", "--max-samples", "2",
                          "--device", "cpu", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert {r["decoder"] for r in rows} == {"relu", "linear", "topk", "oracle", "vamp"}
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    if peak <= before * 1024:  # an earlier child was larger: nothing to learn from the high-water mark
        pytest.skip("an earlier child process set a higher peak")
    need = memcheck.MARGIN * memcheck.need_bytes(n_s)["host"]
    assert peak < need, (peak / 2**20, need / 2**20)
    assert peak < 0.25 * (n_s * n_s // 2) * 4  # far below one dense W_in (8 GB)
