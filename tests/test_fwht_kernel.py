"""The AVX2 kernel (decoderbench/model/_fwht_avx2.c): bit for bit the radix-2 transform, and the rug's operators
fused with it bit for bit the unfused arithmetic.

The reference is the radix-2 algorithm written in numpy float32, stages h = 1, 2, ..., n/2, each output a + c or
a - c. fht-cpu is held to the same reference: that is why rows made with either backend are the same rows
(``hadamard.SAME_ARITHMETIC``, ``backend_for``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from decoderbench.model import _kernel, hadamard
from decoderbench.model.encoders import PersianRug
from decoderbench.model.hadamard import backend, backend_for, fwht, fwht_

needs_kernel = pytest.mark.skipif(_kernel.KERNEL is None, reason=f"AVX2 kernel: {_kernel.why_not}")


def radix2(x: np.ndarray) -> np.ndarray:
    """The radix-2 transform of the rows of x in float32, stages h = 1, 2, ..., n/2 in that order."""
    y = np.array(x, dtype=np.float32).reshape(-1, x.shape[-1])
    B, n = y.shape
    h = 1
    while h < n:
        v = y.reshape(B, n // (2 * h), 2, h)
        a, c = v[:, :, 0, :].copy(), v[:, :, 1, :].copy()
        v[:, :, 0, :] = a + c
        v[:, :, 1, :] = a - c
        h *= 2
    return y.reshape(x.shape)


def bits(t) -> np.ndarray:
    return np.asarray(t, dtype=np.float32).view(np.int32)


def batch(B: int, n: int, seed: int, specials: bool = True) -> torch.Tensor:
    x = torch.randn(B, n, generator=torch.Generator().manual_seed(seed)) * 10.0 ** torch.randint(
        -3, 4, (B, n), generator=torch.Generator().manual_seed(seed + 1))
    if specials and B > 1:  # signed zeros, infinities, subnormal and overflowing sums in the last row
        sp = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-40, -3e-39, 3e38, 3e38])
        x[-1, : min(n, 8)] = sp[: min(n, 8)]
    return x


@needs_kernel
@pytest.mark.parametrize("n", [2**k for k in range(3, 17)])
def test_kernel_is_the_radix2_transform_bit_for_bit(n):
    x = batch(3, n, n)
    with np.errstate(invalid="ignore", over="ignore"):
        want = radix2(x.numpy())
    out = torch.empty_like(x)
    _kernel.KERNEL.fwht(x, out)
    assert np.array_equal(bits(out), bits(want))
    assert backend(x) == "avx2"
    assert np.array_equal(bits(fwht(x)), bits(want))
    y = x.clone()
    assert fwht_(y) is y and np.array_equal(bits(y), bits(want))  # in place, no copy


@needs_kernel
@pytest.mark.parametrize("n", [2**17, 2**20])
def test_kernel_on_rows_beyond_one_block(n):
    x = batch(2, n, 5, specials=False)
    out = torch.empty_like(x)
    _kernel.KERNEL.fwht(x, out)
    assert np.array_equal(bits(out), bits(radix2(x.numpy())))


@pytest.mark.skipif(hadamard._fht_cpu is None, reason="fht-cpu (the `fast` extra) is not installed")
@pytest.mark.parametrize("n", [8, 64, 1024, 4096, 2**16, 2**20])
def test_fht_cpu_is_the_same_arithmetic(n):
    """The ground of SAME_ARITHMETIC: fht-cpu computes the radix-2 order too, so its rows equal the kernel's."""
    x = batch(3 if n <= 2**16 else 1, n, n + 3)
    arr = x.numpy().copy()
    with np.errstate(invalid="ignore", over="ignore"):
        want = radix2(x.numpy())
    hadamard._fht_cpu.fht(arr, axis=1, inplace=True, num_threads=1)
    assert np.array_equal(bits(arr), bits(want))


@needs_kernel
def test_backend_choice_and_recorded_name():
    assert backend(torch.zeros(2, 4096)) == "avx2"
    assert backend(torch.zeros(4096)) == "avx2"
    assert backend(torch.zeros(2, 4)) != "avx2"  # a row shorter than one register
    assert backend(torch.zeros(2, 4096, dtype=torch.float64)) != "avx2"
    assert backend(torch.zeros(2, 4096, requires_grad=True)) == "torch"
    assert backend(torch.zeros(1, 2**20)) == "avx2"
    # rows record the arithmetic: the kernel's rows are fht-cpu's rows
    assert backend_for("cpu", "float32", 4096) == "fht_cpu"


def test_disabled_by_environment():
    env = dict(os.environ, DECODERBENCH_FWHT_DISABLE="avx2")
    code = ("import torch; from decoderbench.model import _kernel, hadamard; "
            "print(_kernel.KERNEL is None, hadamard.backend(torch.zeros(2, 4096)) != 'avx2', _kernel.why_not)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("True True disabled by DECODERBENCH_FWHT_DISABLE"), out


def _reference_ops(rug: PersianRug, x: torch.Tensor, h: torch.Tensor):
    """encode, decode and apply from the radix-2 reference and the rug's definition (appendix F of the paper:
    W_in x = n_d^-1/2 (H x)[S], W_out h = n_d^-1/2 H (h scattered into S), R x = n_d^-1 H (m * (H x)))."""
    S = rug.S.numpy()
    scale = np.float32(rug._scale)
    with np.errstate(invalid="ignore", over="ignore"):
        enc = radix2(x.numpy())[..., S] * scale
        z = np.zeros((*h.shape[:-1], rug.n_s), np.float32)
        z[..., S] = h.numpy() * scale
        dec = radix2(z)
        m = (rug.mask.numpy() * np.float32(1.0 / rug.n_d)).astype(np.float32)
        app = radix2(radix2(x.numpy()) * m)
    return enc, dec, app


@needs_kernel
@pytest.mark.parametrize("n_s,n_d", [(8, 3), (64, 7), (1024, 102), (4096, 1024), (4096, 409), (16384, 1638)])
def test_rug_operators_fused_bit_for_bit(n_s, n_d):
    rug = PersianRug(n_s, n_d, seed=n_d)
    x = batch(5, n_s, n_s, specials=False)
    h = batch(5, n_d, n_d + 1, specials=False)
    enc, dec, app = _reference_ops(rug, x, h)
    assert rug._fused(x)
    assert np.array_equal(bits(rug.encode(x)), bits(enc))
    assert np.array_equal(bits(rug.decode(h)), bits(dec))
    assert np.array_equal(bits(rug.adjoint(h)), bits(dec))
    buf = torch.full((5, n_s), 7.0)
    assert rug.adjoint(h, out=buf) is buf and np.array_equal(bits(buf), bits(dec))
    assert np.array_equal(bits(rug.apply(x)), bits(app))
    y = x.clone()
    assert rug.apply(y, inplace=True) is y and np.array_equal(bits(y), bits(app))
    # leading dimensions, one sample, an empty batch, a non-contiguous batch
    x3 = x[:4].reshape(2, 2, n_s)
    assert np.array_equal(bits(rug.encode(x3)), bits(enc[:4].reshape(2, 2, n_d)))
    assert np.array_equal(bits(rug.encode(x[1])), bits(enc[1]))
    assert np.array_equal(bits(rug.decode(h[2])), bits(dec[2]))
    assert rug.encode(x[:0]).shape == (0, n_d) and rug.decode(h[:0]).shape == (0, n_s)
    xt = x.T.contiguous().T  # same values, column-major
    assert not xt.is_contiguous()
    assert np.array_equal(bits(rug.encode(xt)), bits(enc))
    assert np.array_equal(bits(rug.apply(xt, inplace=True)), bits(app))
    assert torch.equal(xt, x)  # a batch that is not contiguous is not overwritten


@needs_kernel
@pytest.mark.parametrize("n_s,n_d", [(1024, 102), (4096, 1024)])
def test_fused_equals_unfused_path(n_s, n_d, monkeypatch):
    """The fused path against the one every other install takes (fht-cpu: bit for bit; torch: to rounding)."""
    x = batch(6, n_s, 11, specials=False)
    h = batch(6, n_d, 12, specials=False)
    fused = PersianRug(n_s, n_d, seed=1)
    got = (fused.encode(x), fused.decode(h), fused.apply(x))
    monkeypatch.setattr(hadamard, "_AVX2", None)
    plain = PersianRug(n_s, n_d, seed=1)
    assert not plain._fused(x)
    want = (plain.encode(x), plain.decode(h), plain.apply(x))
    for g, w in zip(got, want):
        if backend(x) == "fht_cpu":
            assert np.array_equal(bits(g), bits(w))
        else:
            assert torch.allclose(g, w, rtol=1e-5, atol=1e-4 * float(w.abs().max()))


@needs_kernel
def test_threads_calling_side_by_side():
    """Harness threads run kernels at once (ctypes releases the GIL): each gets its own rows' results."""
    rug = PersianRug(4096, 1024, seed=3)
    xs = [batch(128, 4096, 100 + i, specials=False) for i in range(6)]
    alone = [rug.encode(x) for x in xs]
    with ThreadPoolExecutor(3) as ex:
        together = list(ex.map(rug.encode, xs))
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


def test_rug_without_the_kernel_is_still_exact(monkeypatch):
    """Where the kernel is missing the rug takes fht-cpu or torch: the same operators."""
    monkeypatch.setattr(hadamard, "_AVX2", None)
    rug = PersianRug(256, 64, seed=0)
    x = torch.randn(3, 256, dtype=torch.float64)
    W = rug.w_in().double()
    assert torch.allclose(PersianRug(256, 64, seed=0, dtype=torch.float64).encode(x), x @ W.T, atol=1e-10)
    xf = x.float()
    assert not rug._fused(xf)
    assert torch.allclose(rug.encode(xf).double(), x @ W.T, atol=1e-4)


def test_missing_library_is_reported_not_fatal(monkeypatch):
    """An install without a C compiler has no library: the loader says so and the transform falls back."""
    monkeypatch.setattr(_kernel.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("DECODERBENCH_FWHT_DISABLE", raising=False)
    kernel, why = _kernel._load()
    assert kernel is None and why.startswith("not built")
    monkeypatch.setattr(hadamard, "_AVX2", None)
    x = torch.randn(3, 64)
    assert backend(x) in ("fht_cpu", "torch")
    assert torch.allclose(fwht(fwht(x)), 64 * x, atol=1e-4)
