"""The i.i.d. Gaussian encoder (plugins/gaussian.py): seeding, operators and its honest interference."""

from __future__ import annotations

import math

import pytest
import torch

from decoderbench import SparseSampler
from decoderbench.contract import registry as plugins
from decoderbench.model.data import variance
from decoderbench_plugins.gaussian import GAUSSIAN_MAX_NS, Gaussian


def test_registered_without_capabilities():
    reg = plugins.get_encoder("gaussian")
    assert reg.cls is Gaussian
    assert Gaussian.capabilities == frozenset()


def test_seeded_and_dtype_independent():
    a = Gaussian(256, 64, seed=3, dtype=torch.float64)
    b = Gaussian(256, 64, seed=3, dtype=torch.float64)
    c = Gaussian(256, 64, seed=4, dtype=torch.float64)
    f = Gaussian(256, 64, seed=3, dtype=torch.float32)
    assert torch.equal(a.W, b.W)
    assert not torch.equal(a.W, c.W)
    assert torch.equal(f.W, a.W.to(torch.float32))  # the same matrix, cast
    assert a.w_in().shape == (64, 256)


def test_entries_are_n_0_1_over_nd():
    n_s, n_d = 1024, 128
    W = Gaussian(n_s, n_d, seed=0, dtype=torch.float64).W
    n = W.numel()
    # mean 0 (sd 1/sqrt(n_d n)); variance 1/n_d (sd sqrt(2/n)/n_d): within 4 standard errors
    assert abs(float(W.mean())) < 4 / math.sqrt(n_d * n)
    assert abs(float(W.var()) * n_d - 1) < 4 * math.sqrt(2 / n)


def test_operators_are_w_and_its_transpose():
    enc = Gaussian(512, 100, seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 512, generator=g, dtype=torch.float64)
    h = torch.randn(3, 100, generator=g, dtype=torch.float64)
    W = enc.w_in()
    assert torch.allclose(enc.encode(x), x @ W.T, atol=1e-12)
    assert torch.allclose(enc.adjoint(h), h @ W, atol=1e-12)
    # <W x, h> = <x, W^T h>
    assert torch.allclose((enc.encode(x) * h).sum(-1), (x * enc.adjoint(h)).sum(-1), atol=1e-10)
    assert torch.equal(enc.decode(h), enc.adjoint(h))
    assert torch.allclose(enc.apply(x), x @ (W.T @ W), atol=1e-10)
    with pytest.raises(ValueError, match="x must have last dimension 512"):
        enc.encode(h)


def test_interference_matches_the_dense_formula():
    n_s, n_d, p = 256, 48, 0.1
    enc = Gaussian(n_s, n_d, seed=2, dtype=torch.float64)
    R = enc.W.T @ enc.W
    off = R - torch.diag(torch.diagonal(R))
    s, q = off.sum(1), (off**2).sum(1)
    mu = 0.5 * p * float(s.mean())
    sigma = math.sqrt(variance(p) * float(q.mean()) + 0.25 * p * p * float(s.var(unbiased=False)))
    got = enc.interference(p)
    assert got[0] == pytest.approx(mu, abs=1e-12)
    assert got[1] == pytest.approx(sigma, rel=1e-10)
    # the ensemble value: E q_i = (n_s - 1)/n_d, E s_i = 0 (a loose check, this matrix is one draw)
    assert got[1] ** 2 == pytest.approx(variance(p) * (n_s - 1) / n_d, rel=0.1)


def test_interference_matches_simulation():
    """nu_i = sum_{j != i} R_ij x_j over random rows and samples: mean mu and std sigma."""
    n_s, n_d, p = 256, 64, 0.2
    enc = Gaussian(n_s, n_d, seed=5, dtype=torch.float64)
    mu, sigma = enc.interference(p)
    x = SparseSampler(n_s, p, 0, "test-gaussian", dtype=torch.float64).sample(4000)
    diag = (enc.W**2).sum(0)
    nu = enc.apply(x) - diag * x
    n_eff = x.shape[0]  # rows within one sample are correlated; use samples as the unit
    per_sample = nu.mean(-1)
    assert abs(float(per_sample.mean()) - mu) < 4 * float(per_sample.std()) / math.sqrt(n_eff)
    assert float(nu.std()) == pytest.approx(sigma, rel=0.03)


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"n_s must be at most 2\*\*14"):
        Gaussian(2 * GAUSSIAN_MAX_NS, 16)
    with pytest.raises(ValueError, match="n_d"):
        Gaussian(64, 64)
    with pytest.raises(ValueError, match="n_s must be a power of two"):
        Gaussian(100, 10)
