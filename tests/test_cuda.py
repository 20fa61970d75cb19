"""The CUDA path against the CPU path it mirrors: the rug's operators, the scalar posterior, message passing and
a run. Skipped without a CUDA device (this project's CI has none: benchmarks/device_check.sh runs these where
one is lent). The CPU results are the references; tolerances are float32 rounding of the quantities compared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from decoderbench import PersianRug, SparseSampler
from decoderbench.contract.decoder import Cell, DecoderContext
from decoderbench.model.channel import conditional_moments
from decoderbench.model.hadamard import backend, fwht

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")


@pytest.mark.parametrize("n", [8, 1024, 4096, 2**15, 2**16, 2**20])
def test_fwht_cuda_matches_cpu_float64(n):
    """Every CUDA backend (the kernel where installed, up to 2^15; torch beyond) against the CPU transform."""
    x = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    got = fwht(x.to(CUDA))
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), fwht(x), atol=1e-9 * n**0.5, rtol=0)
    xf = x.float().to(CUDA)
    assert torch.allclose(fwht(xf).cpu().double(), fwht(x), atol=2e-5 * n**0.5, rtol=1e-5), backend(xf)


@pytest.mark.parametrize("n_s,n_d", [(4096, 1024), (4096, 409), (65536, 16384)])
def test_rug_operators_cuda_match_cpu(n_s, n_d):
    cpu = PersianRug(n_s, n_d, seed=3, dtype=torch.float64)
    gpu = PersianRug(n_s, n_d, seed=3, device="cuda", dtype=torch.float64)
    assert torch.equal(gpu.S.cpu(), cpu.S)
    x = SparseSampler(n_s, 0.045, 0).sample(8).double()
    h = cpu.encode(x)
    for name, a, b in [("encode", cpu.encode(x), gpu.encode(x.to(CUDA))),
                       ("decode", cpu.decode(h), gpu.decode(h.to(CUDA))),
                       ("apply", cpu.apply(x), gpu.apply(x.to(CUDA))),
                       ("project", cpu.project(x), gpu.project(x.to(CUDA)))]:
        assert b.device.type == "cuda", name
        assert torch.allclose(b.cpu(), a, atol=1e-10, rtol=1e-10), name
    buf = torch.empty(8, n_s, dtype=torch.float64, device=CUDA)
    assert gpu.adjoint(h.to(CUDA), out=buf) is buf and torch.allclose(buf.cpu(), cpu.adjoint(h), atol=1e-10)
    y = x.to(CUDA).clone()
    assert torch.allclose(gpu.apply(y, inplace=True).cpu(), cpu.apply(x), atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.5])
def test_posterior_cuda_matches_cpu(sigma):
    y = torch.linspace(-2.0, 3.0, 20001)
    m_cpu, v_cpu = conditional_moments(y, 0.045, 0.0, sigma)
    m_gpu, v_gpu = conditional_moments(y.to(CUDA), 0.045, 0.0, sigma)
    assert m_gpu.device.type == "cuda"
    assert torch.allclose(m_gpu.cpu(), m_cpu, atol=2e-6, rtol=1e-4)
    assert torch.allclose(v_gpu.cpu(), v_cpu, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["vamp", "amp"])
def test_message_passing_on_cuda_reaches_the_cpu_loss(name):
    from decoderbench_plugins.message_passing import AMP, VAMP

    cls = {"vamp": VAMP, "amp": AMP}[name]
    n_s, n_d, p = 4096, 1024, 0.045
    x = SparseSampler(n_s, p, 0, "cuda-test").sample(64)
    losses = {}
    for dev in ("cpu", "cuda"):
        rug = PersianRug(n_s, n_d, seed=0, device=dev)
        ctx = DecoderContext(cell=Cell(n_s, n_d, p), seed=0, encoder=rug, device=torch.device(dev))
        xd = x.to(dev)
        xhat = cls(ctx).decode(rug.encode(xd))
        assert xhat.device.type == dev
        losses[dev] = float(((xhat - xd) ** 2).sum(-1).mean())
    # r = 0.25, p = 0.045 is in the exact-recovery phase: both near 0, or (if not) within 5% of each other
    assert losses["cuda"] <= max(1e-6, 1.05 * losses["cpu"]), losses


def test_run_on_cuda_scores_against_theory(tmp_path):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "decoderbench", "run", "--device", "cuda", "--plugins", "relu,oracle,linear",
           "--ns", "16384", "--p", "0.045", "--out", str(out), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(res.stdout)
    assert rows and all(r["status"] == "ok" for r in rows), rows
    assert all(r["device"].startswith("cuda") for r in rows)
    for r in rows:  # the Gaussian theory of each, within 5% at n_s = 16384 (measured on CPU: within 1%)
        theory = {"relu": r["relu_theory"], "oracle": r["mmse_elementwise"], "linear": r["linear"]}[r["decoder"]]
        assert abs(r["loss"] / theory - 1.0) < 0.05, (r["decoder"], r["loss"], theory)
