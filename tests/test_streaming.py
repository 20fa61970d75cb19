"""Streaming: no built-in decoder nor the harness allocates O(n_s n_d) or O(n_s^2).

At n_s = 2^16, r = 0.5 one dense W_in would take 8 GB and R 16 GB (float32); the whole run, five decoders
fitted and scored, must stay under a quarter of one W_in (measured alone: about 460 MB; the memory check
estimates 870 MB with its margin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_cell_at_2_16_streams(tmp_path):
    n_s = 2**16
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["run", "--plugins", "relu,linear,topk,oracle,vamp", "--ns", str(n_s), "--r", "0.5", "--p", "0.01",
            "--min-samples", "2", "--max-samples", "2", "--device", "cpu", "--json"]
    # the child reports its own peak resident set: VmHWM of its own address space. (Not getrusage's ru_maxrss:
    # Linux carries the high-water mark of the address space the child replaced at exec into it, and a
    # vforked child's is the test process's own: 2.3 GB late in the suite, whatever the child did.)
    code = ("import sys; from decoderbench.cli import main; rc = main(sys.argv[1:]); "
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
            "print('PEAK_KB', hwm, file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert {r["decoder"] for r in rows} == {"relu", "linear", "topk", "oracle", "vamp"}
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    peak = int(out.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) * 1024  # kB on Linux
    dense_w_in = n_s * (n_s // 2) * 4  # one float32 W_in at this cell: 8 GB
    assert peak < dense_w_in / 4, f"peak RSS {peak / 2**20:.0f} MB"
