"""fwht: exact agreement with scipy's Sylvester Hadamard matrix, every backend, dtype and shape."""

import numpy as np
import pytest
import scipy.linalg
import torch

from decoderbench.model import hadamard
from decoderbench.model.hadamard import _fwht_torch, backend, fwht, hadamard_matrix

TOL = {torch.float64: 1e-9, torch.float32: 1e-3}


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 128, 256, 2048, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_matches_dense(n, dtype):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(7, n, generator=g, dtype=torch.float64)
    H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    want = x @ H
    got = fwht(x.to(dtype)).double()
    # relative to the scale of the entries (sqrt(n) for a random vector)
    assert (got - want).abs().max().item() <= TOL[dtype] * max(1.0, n**0.5)


@pytest.mark.parametrize("n", [2, 16, 512, 8192])
def test_torch_backend_matches_dense(n):
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    assert torch.allclose(_fwht_torch(x), x @ H, atol=1e-9, rtol=0)


def test_involution_and_shapes():
    x = torch.randn(2, 3, 1024, dtype=torch.float64)
    y = fwht(x)
    assert y.shape == x.shape
    assert torch.allclose(fwht(y), 1024 * x, atol=1e-9)
    # input not modified
    x0 = x.clone()
    fwht(x)
    assert torch.equal(x, x0)
    # one row, non-contiguous input
    xt = torch.randn(1024, 4, dtype=torch.float64).T
    assert torch.allclose(fwht(xt), fwht(xt.contiguous()), atol=1e-12)
    assert torch.allclose(fwht(xt[0]), fwht(xt[:1])[0], atol=1e-12)


def test_hadamard_matrix_is_sylvester():
    for n in (1, 2, 8, 32):
        assert np.array_equal(hadamard_matrix(n, torch.float64).numpy(), scipy.linalg.hadamard(n))


def test_other_dtypes_and_autograd_use_torch_path():
    x = torch.randn(4, 64, dtype=torch.float32, requires_grad=True)
    assert backend(x) == "torch"
    y = fwht(x)
    y.sum().backward()
    H = hadamard_matrix(64, torch.float32)
    assert torch.allclose(x.grad, H.sum(1).expand(4, 64), atol=1e-5)
    xb = torch.randn(4, 64).to(torch.bfloat16)
    assert fwht(xb).dtype == torch.bfloat16


def test_fallback_when_simd_disabled(monkeypatch):
    monkeypatch.setattr(hadamard, "_DISABLED", {"fht_cpu"})
    x = torch.randn(5, 256, dtype=torch.float64)
    assert backend(x) == "torch"
    H = torch.from_numpy(scipy.linalg.hadamard(256).astype(np.float64))
    assert torch.allclose(fwht(x), x @ H, atol=1e-9)


@pytest.mark.parametrize("bad", [torch.zeros(3, 12), torch.zeros(3, 0), torch.zeros(()), torch.zeros(4, 8, dtype=torch.int64)])
def test_bad_input(bad):
    with pytest.raises((ValueError, TypeError)):
        fwht(bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_cuda_matches_cpu(dtype):
    x = torch.randn(16, 4096, dtype=dtype)
    assert torch.allclose(fwht(x.cuda()).cpu(), fwht(x), atol=TOL[dtype] * 64, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fwht_in_place_matches_fwht(dtype):
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(0), dtype=dtype)
    want = fwht(x)
    y = x.clone()
    assert hadamard.fwht_(y) is y
    assert torch.equal(y, want)


@pytest.mark.parametrize("n", [1, 2, 64, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("simd", [True, False])
def test_fwht_inplace_matches_out_of_place(n, dtype, simd, monkeypatch):
    if not simd:
        monkeypatch.setattr(hadamard, "_DISABLED", {"fht_cpu"})
    x = torch.randn(5, n, dtype=dtype, generator=torch.Generator().manual_seed(n))
    want = fwht(x)
    y = x.clone()
    ptr = y.data_ptr()
    out = hadamard.fwht_(y)
    assert out is y and y.data_ptr() == ptr
    assert torch.equal(y, want)  # same backend, same arithmetic: bit-identical
    # a 1-D vector too (a GEMM of one row may sum in another order: equal to rounding)
    v = x[0].clone()
    assert torch.allclose(hadamard.fwht_(v), want[0], atol=TOL[dtype] * n**0.5, rtol=0)


def test_fwht_inplace_noncontiguous_and_bad_input():
    xt = torch.randn(64, 4, dtype=torch.float64).T  # not contiguous: transformed out of place, copied back
    want = fwht(xt)
    assert torch.equal(hadamard.fwht_(xt), want)
    with pytest.raises(RuntimeError):  # torch refuses to overwrite a leaf that requires grad
        hadamard.fwht_(torch.randn(2, 64, requires_grad=True))
    with pytest.raises(ValueError, match="power of two"):
        hadamard.fwht_(torch.zeros(2, 12))


@pytest.mark.parametrize("n", [2**6, 2**11, 2**13, 2**16])
def test_torch_backend_every_factorisation(n):
    """The flat-GEMM last block and the batched inner blocks agree with fht-cpu / the definition at sizes
    with one, two and three Kronecker factors."""
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = _fwht_torch(x)
    assert torch.allclose(_fwht_torch(y), n * x, atol=1e-9 * n)  # H H = n I
    if n <= 2**13:
        H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
        assert torch.allclose(y, x @ H, atol=1e-9 * n**0.5, rtol=0)
    else:  # row 0 of H is all ones, column j of x @ H at j = 0 is the row sum
        assert torch.allclose(y[:, 0], x.sum(1), atol=1e-9 * n)


@pytest.mark.parametrize("simd", [True, False])
def test_fwht_owned_transforms_in_place_only_where_free(simd, monkeypatch):
    if not simd:
        monkeypatch.setattr(hadamard, "_DISABLED", {"fht_cpu"})
    x = torch.randn(4, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want = fwht(x)
    y = x.clone()
    got = hadamard.fwht_owned(y)
    assert torch.equal(got, want)
    assert (got.data_ptr() == y.data_ptr()) == (backend(y) == "fht_cpu")  # no copy back on the torch path


def test_fresh_empty_from_numpy_only_when_large():
    """Outputs from HUGE_MIN_BYTES on come from numpy (huge pages asked for); smaller ones from torch."""
    small = hadamard.fresh_empty((3, 5), torch.float32)
    assert small.shape == (3, 5) and small.dtype == torch.float32 and small.is_contiguous()
    rows = hadamard.HUGE_MIN_BYTES // (4 * 1024)
    big = hadamard.fresh_empty((rows, 1024), torch.float32)
    assert big.shape == (rows, 1024) and big.dtype == torch.float32 and big.is_contiguous()
    ours = hadamard.fwht(big.normal_())  # a transform into such an output is the transform
    assert torch.allclose(ours[:2], hadamard._fwht_torch(big[:2]), atol=1e-3)
    assert hadamard.fresh_empty((2, 4), torch.bfloat16).dtype == torch.bfloat16
