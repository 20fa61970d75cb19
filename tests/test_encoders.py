"""The Persian Rug: exact properties of R (SCIENCE.md) and fast-against-dense agreement."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from decoderbench import PersianRug, SparseSampler
from decoderbench.model.data import variance
from decoderbench.model.hadamard import hadamard_matrix


def rug_with(n_s, n_d, want_col0, start=0):
    """First seed >= start whose S does / does not contain column 0."""
    for seed in range(start, start + 10_000):
        rug = PersianRug(n_s, n_d, seed=seed, dtype=torch.float64)
        if rug.col0 == want_col0:
            return rug
    raise AssertionError("no seed found")


CASES = [(16, 4), (64, 8), (256, 64), (1024, 100), (1024, 1023), (2048, 1)]


@pytest.mark.parametrize("n_s,n_d", CASES)
@pytest.mark.parametrize("col0", [True, False])
def test_exact_properties_of_R(n_s, n_d, col0):
    rug = rug_with(n_s, n_d, col0, start=n_s + n_d)
    R = rug.dense()
    assert R.shape == (n_s, n_s)
    assert torch.allclose(torch.diagonal(R), torch.ones(n_s, dtype=R.dtype), atol=1e-12)
    off = R - torch.diag(torch.diagonal(R))
    assert torch.allclose((off**2).sum(1), torch.full((n_s,), n_s / n_d - 1, dtype=R.dtype), atol=1e-9)
    assert torch.allclose(R @ R, (n_s / n_d) * R, atol=1e-9 * n_s / n_d)
    rowsum = n_s / n_d if col0 else 0.0
    assert torch.allclose(R.sum(1), torch.full((n_s,), rowsum, dtype=R.dtype), atol=1e-9)
    assert torch.allclose(R, R.T)
    # P = (n_d/n_s) R is an orthogonal projector of rank n_d
    P = R * (n_d / n_s)
    assert abs(float(torch.trace(P)) - n_d) < 1e-9
    # W_in has orthogonal rows: W_in W_in^T = (n_s/n_d) I
    W = rug.w_in()
    assert torch.allclose(W @ W.T, torch.eye(n_d, dtype=W.dtype) * n_s / n_d, atol=1e-9)


def test_columns_are_distinct_and_seeded():
    a = PersianRug(4096, 1024, seed=3)
    b = PersianRug(4096, 1024, seed=3)
    c = PersianRug(4096, 1024, seed=4)
    assert torch.equal(a.S, b.S)
    assert not torch.equal(a.S, c.S)
    assert len(set(a.S.tolist())) == 1024
    assert int(a.mask.sum()) == 1024


@pytest.mark.parametrize("n_s,n_d", [(256, 64), (1024, 256), (4096, 1024), (4096, 409)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_against_dense(n_s, n_d, dtype):
    rug = PersianRug(n_s, n_d, seed=11, dtype=dtype)
    H = torch.from_numpy(scipy.linalg.hadamard(n_s).astype(np.float64))
    S = rug.S
    W_in = H[:, S].T / math.sqrt(n_d)
    W_out = H[:, S] / math.sqrt(n_d)
    x = SparseSampler(n_s, 0.05, seed=1, dtype=torch.float64).sample(8)
    h = torch.randn(8, n_d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(rug.encode(x.to(dtype)).double(), x @ W_in.T, atol=tol, rtol=0)
    assert torch.allclose(rug.decode(h.to(dtype)).double(), h @ W_out.T, atol=tol * 10, rtol=0)
    assert torch.allclose(rug.adjoint(h.to(dtype)).double(), h @ W_in, atol=tol * 10, rtol=0)
    R = W_out @ W_in
    assert torch.allclose(rug.apply(x.to(dtype)).double(), x @ R.T, atol=tol, rtol=0)
    assert torch.allclose(rug.project(x.to(dtype)).double(), x @ R.T * (n_d / n_s), atol=tol, rtol=0)
    assert torch.allclose(rug.pinv(h.to(dtype)).double(), h @ W_in * (n_d / n_s), atol=tol, rtol=0)


def test_dense_refused_at_scale():
    rug = PersianRug(2**14, 2**12)
    with pytest.raises(ValueError, match="n_s must be at most 2\\*\\*13"):
        rug.dense()
    # the fast path has no such limit and keeps O(n_s) state
    x = SparseSampler(2**14, 0.01, seed=0).sample(2)
    assert rug.apply(x).shape == (2, 2**14)
    assert rug.S.numel() == 2**12 and rug.mask.numel() == 2**14


@pytest.mark.parametrize("kwargs,arg", [
    (dict(n_s=1000, n_d=10), "n_s"), (dict(n_s=0, n_d=1), "n_s"), (dict(n_s=64, n_d=0), "n_d"),
    (dict(n_s=64, n_d=64), "n_d"), (dict(n_s=64, n_d=2.5), "n_d"), (dict(n_s=float("nan"), n_d=1), "n_s"),
    (dict(n_s=64, n_d=8, seed=-1), "seed"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg} "):
        PersianRug(**kwargs)


def test_interference_variance_monte_carlo():
    """Var nu_i = sigma^2 = v (n_s/n_d - 1) at n_s = 4096, within 4 standard errors of the estimate."""
    n_s, n_d, p = 4096, 1024, 0.045
    rug = PersianRug(n_s, n_d, seed=5, dtype=torch.float64)
    mu, sigma = rug.interference(p)
    sampler = SparseSampler(n_s, p, seed=9, purpose="mc", dtype=torch.float64)
    nus = []
    for _ in range(8):
        x = sampler.sample(256)
        nus.append((rug.apply(x) - x).reshape(-1))
    nu = torch.cat(nus)
    # entries of one sample are correlated; estimate the SE of the variance from per-sample variances
    per_sample = torch.stack([((n - mu) ** 2).mean() for n in nu.view(-1, n_s)])
    est, se = float(per_sample.mean()), float(per_sample.std() / math.sqrt(per_sample.numel()))
    assert abs(est - sigma**2) < 4 * se, (est, sigma**2, se)
    assert se < 0.02 * sigma**2  # the test has power to see a 10% error
    # the mean too (column 0 decides it)
    assert abs(float(nu.mean()) - mu) < 4 * float(nu.view(-1, n_s).mean(1).std()) / math.sqrt(2048)
    assert sigma == pytest.approx(math.sqrt(variance(p) * (n_s / n_d - 1)), rel=1e-15)


def test_interference_mean_with_column0():
    n_s, n_d, p = 1024, 256, 0.1
    for col0 in (True, False):
        rug = rug_with(n_s, n_d, col0)
        mu, _ = rug.interference(p)
        assert mu == pytest.approx(0.5 * p * ((n_s / n_d if col0 else 0.0) - 1.0), rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inplace_apply_and_cached_buffers(dtype):
    """apply(x, inplace=True) overwrites x with R x (same numbers as out of place); the index and mask
    buffers are built once per (device, dtype) and reused."""
    rug = PersianRug(1024, 256, seed=2)
    x = SparseSampler(1024, 0.05, seed=3, dtype=dtype).sample(6)
    want = rug.apply(x)
    assert want.dtype == dtype
    y = x.clone()
    got = rug.apply(y, inplace=True)
    assert got.data_ptr() == y.data_ptr()
    assert torch.equal(got, want)
    assert torch.equal(rug.project(x.clone(), inplace=True), rug.project(x))
    assert not torch.equal(rug.apply(x), x)  # the default leaves x alone
    keys = set(rug._buffers)
    rug.encode(x), rug.decode(rug.encode(x)), rug.apply(x)
    assert set(rug._buffers) == keys and (torch.device("cpu"), dtype) in keys
    other = torch.float64 if dtype == torch.float32 else torch.float32
    rug.apply(x.to(other))
    assert (torch.device("cpu"), other) in rug._buffers and len(rug._buffers) == len(keys) + 1


def test_ops_against_dense_in_both_dtypes_and_noncontiguous():
    """Non-contiguous inputs and leading dimensions take the same path to the same numbers."""
    n_s, n_d = 256, 64
    rug = PersianRug(n_s, n_d, seed=4)
    x = SparseSampler(n_s, 0.1, seed=5, dtype=torch.float64).sample(8)
    xt = x.T.contiguous().T  # same values, column-major
    assert not xt.is_contiguous()
    for op in (rug.encode, rug.apply, rug.project):
        assert torch.allclose(op(xt), op(x), atol=1e-12, rtol=0)
    h = rug.encode(x)
    assert torch.allclose(rug.decode(h.T.contiguous().T), rug.decode(h), atol=1e-12, rtol=0)
    assert rug.apply(x.view(2, 4, n_s)).shape == (2, 4, n_s)
    assert torch.allclose(rug.apply(x.view(2, 4, n_s)).view(8, n_s), rug.apply(x), atol=1e-12, rtol=0)
    assert torch.allclose(rug.pinv(h), rug.adjoint(h) * (n_d / n_s), atol=1e-12, rtol=0)


def test_autograd_through_the_rug():
    """Tensors that require grad take the out-of-place path; gradients are the transposes."""
    n_s, n_d = 128, 32
    rug = PersianRug(n_s, n_d, seed=1, dtype=torch.float64)
    W = rug.w_in().double()
    x = torch.randn(3, n_s, dtype=torch.float64, requires_grad=True)
    (rug.encode(x) ** 2).sum().backward()
    assert torch.allclose(x.grad, 2 * (x @ W.T) @ W, atol=1e-10)
    h = torch.randn(3, n_d, dtype=torch.float64, requires_grad=True)
    rug.decode(h).sum().backward()
    assert torch.allclose(h.grad, torch.ones(3, n_s, dtype=torch.float64) @ W.T, atol=1e-10)
    x.grad = None
    rug.apply(x, inplace=True).sum().backward()  # inplace is only allowed, never forced on a grad tensor
    assert torch.allclose(x.grad, torch.ones(3, n_s, dtype=torch.float64) @ (W.T @ W), atol=1e-10)


def test_scratch_buffers_are_per_thread_and_never_returned():
    """encode/adjoint reuse a per-thread scratch buffer (fht-cpu): results never alias it, threads sharing one
    encoder get their own, shapes may alternate, and a pickled encoder starts with empty caches."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    rug = PersianRug(1024, 100, seed=3)
    H = hadamard_matrix(1024, torch.float64)
    xs = [torch.rand(b, 1024) for b in (5, 9, 5, 9)]

    def run(x):
        h = rug.encode(x)
        h_ref = (x.double() @ H)[:, rug.S] / rug.n_d**0.5
        a = rug.adjoint(h)
        a_ref = torch.zeros(x.shape[0], 1024, dtype=torch.float64)
        a_ref[:, rug.S] = h.double() / rug.n_d**0.5
        return h, h_ref, a, a_ref @ H

    first = run(xs[0])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, xs * 4))
    for h, h_ref, a, a_ref in [first] + results:
        assert torch.allclose(h.double(), h_ref, atol=1e-4) and torch.allclose(a.double(), a_ref, atol=1e-4)
    h0 = first[0].clone()
    run(xs[0])  # the scratch buffer is reused: what encode returned before must not change
    assert torch.equal(first[0], h0)
    back = pickle.loads(pickle.dumps(rug))
    assert torch.equal(back.encode(xs[1]), rug.encode(xs[1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjoint_on_fresh_zeroed_pages_is_the_scatter_and_transform(dtype):
    """From FRESH_ZEROS_MIN_BYTES on, the adjoint's (B, n_s) buffer is numpy's calloc'd memory: the result is
    bit for bit the transform of the scaled h scattered into zeros (what the gather path computes), smaller
    batches take torch.zeros, and fresh_zeros gives zeros of the asked shape and dtype either way."""
    from decoderbench.model.encoders import FRESH_ZEROS_MIN_BYTES, fresh_zeros
    from decoderbench.model.hadamard import fwht

    rug = PersianRug(4096, 1024, seed=1)
    for batch in (2, 1 + FRESH_ZEROS_MIN_BYTES // (4096 * torch.finfo(dtype).bits // 8)):
        h = torch.randn(batch, 1024, dtype=dtype)
        full = torch.zeros(batch, 4096, dtype=dtype)
        full[:, rug.S] = h * rug._scale
        assert torch.equal(rug.adjoint(h), fwht(full))
        assert torch.equal(rug.decode(h[0]), fwht(full[0]))  # one sample (1-D)
    for shape in ((3, 5), (FRESH_ZEROS_MIN_BYTES // 4, 2)):
        z = fresh_zeros(shape, dtype)
        assert z.shape == shape and z.dtype == dtype and not bool(z.any())


def test_adjoint_into_a_given_buffer():
    """adjoint(h, out=buf) writes the same bits into buf and returns it, on the fast path and the gather path
    (a tensor that requires grad); an out of the wrong shape, dtype or layout is refused naming it."""
    rug = PersianRug(1024, 256, seed=2)
    h = torch.randn(7, 256, generator=torch.Generator().manual_seed(2))
    buf = torch.full((7, 1024), 3.0)
    assert rug.adjoint(h, out=buf) is buf and torch.equal(buf, rug.adjoint(h))
    hg = h.clone().requires_grad_(True)
    buf2 = torch.empty(7, 1024)
    assert torch.allclose(rug.adjoint(hg, out=buf2), rug.adjoint(h), atol=1e-6, rtol=0)
    for bad in (torch.empty(7, 1023), torch.empty(7, 1024, dtype=torch.float64), torch.empty(1024, 7).T):
        with pytest.raises(ValueError, match="out must be"):
            rug.adjoint(h, out=bad)


def test_encode_gathers_the_same_bits_on_both_paths():
    """Below _GATHER_MIN_ENTRIES encode gathers by index_select, from it on by torch.gather with S broadcast over
    the rows: both are the transform's kept columns, bit for bit (1-D, 2-D and 3-D batches)."""
    from decoderbench.model.encoders import _GATHER_MIN_ENTRIES
    from decoderbench.model.hadamard import fwht

    rug = PersianRug(4096, 1000, seed=4)
    for shape in ((3, 4096), (_GATHER_MIN_ENTRIES // 4096 + 1, 4096), (2, 40, 4096), (4096,)):
        x = torch.rand(shape)
        assert torch.equal(rug.encode(x), fwht(x)[..., rug.S] * rug._scale)
