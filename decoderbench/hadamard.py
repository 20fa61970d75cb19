"""The fast Walsh-Hadamard transform.

``fwht(x)`` computes ``x @ H`` along the last axis, where ``H`` is the unnormalised Sylvester
Hadamard matrix of size ``n = x.shape[-1]`` (a power of two), ``H_ij = (-1)^popcount(i & j)``: the
order of ``scipy.linalg.hadamard``. ``H`` is symmetric and ``H H = n I``, so ``fwht(fwht(x)) = n x``.

Backends, chosen per call by device and dtype (``backend()`` says which one a tensor gets):

- ``fht_cpu``: the SIMD C++ package ``fht-cpu`` (optional extra ``fast``), for float32/float64 CPU
  tensors that do not need gradients. Measured fastest on CPU (see benchmarks/).
- ``cuda-kernel``: Dao-AILab's ``fast-hadamard-transform`` CUDA kernel, when installed, for CUDA tensors
  in float32 (called with scale 1, Sylvester order as in its reference implementation).
- ``torch``: a Kronecker factorisation ``H_n = H_a (x) H_b (x) ...`` into dense blocks of at most
  ``_BLOCK`` entries applied by batched GEMMs: O(n log n) work in a few large matrix products, every
  device and dtype, autograd-friendly. Never forms a dense ``n x n`` matrix.
"""

from __future__ import annotations

import functools
import math
import os

import torch

_BLOCK = 64  # largest dense Hadamard block used by the torch backend

try:  # optional SIMD backend for CPU
    import fht_cpu as _fht_cpu  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    _fht_cpu = None

try:  # optional CUDA kernel
    import fast_hadamard_transform as _fht_cuda  # type: ignore
except Exception:  # pragma: no cover
    _fht_cuda = None

_DISABLED = {s.strip() for s in os.environ.get("DECODERBENCH_FWHT_DISABLE", "").split(",") if s.strip()}


@functools.lru_cache(maxsize=64)
def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """The dense Sylvester Hadamard matrix of size n (only for small n: blocks and tests)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"n must be a power of two, got {n!r}")
    if n > 2**14:
        raise ValueError(f"n must be at most 2**14 for a dense Hadamard matrix, got {n}")
    idx = torch.arange(n)
    bits = (idx[:, None] & idx[None, :])
    # popcount parity by folding the bits
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(dtype=dtype, device=device)


def _factors(n: int) -> list[int]:
    """Split n = 2^m into blocks of at most _BLOCK, as even as possible."""
    m = int(math.log2(n))
    kmax = int(math.log2(_BLOCK))
    nblocks = max(1, math.ceil(m / kmax))
    base, extra = divmod(m, nblocks)
    return [2 ** (base + (1 if i < extra else 0)) for i in range(nblocks)]


def _fwht_torch(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    batch = y.shape[0]
    pre = 1
    for k in _factors(n):
        post = n // (pre * k)
        hk = hadamard_matrix(k, y.dtype, str(y.device)) if y.device.type != "cuda" else hadamard_matrix(k, y.dtype, "cpu").to(y.device)
        # axis of size k sits between `pre` and `post` (row-major index i = (i_pre, i_k, i_post))
        y = torch.matmul(hk, y.reshape(batch * pre, k, post))
        pre *= k
    return y.reshape(*lead, n)


def _fwht_fht_cpu(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    out = x.detach().reshape(-1, n).clone(memory_format=torch.contiguous_format)
    arr = out.numpy()
    if arr.shape[0] == 1:
        _fht_cpu.fht(arr[0], inplace=True)
    else:
        _fht_cpu.fht(arr, axis=1, inplace=True, num_threads=torch.get_num_threads())
    return out.reshape(x.shape)


def _fwht_cuda_kernel(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    return _fht_cuda.hadamard_transform(x.reshape(-1, n).contiguous(), scale=1.0).reshape(x.shape)


def backend(x: torch.Tensor) -> str:
    """Name of the backend ``fwht`` uses for this tensor."""
    if x.dtype not in (torch.float32, torch.float64) or x.requires_grad:
        return "torch"
    if x.device.type == "cpu" and _fht_cpu is not None and "fht_cpu" not in _DISABLED:
        return "fht_cpu"
    if (x.device.type == "cuda" and _fht_cuda is not None and x.dtype == torch.float32
            and "cuda-kernel" not in _DISABLED and x.shape[-1] <= 2**15):
        return "cuda-kernel"
    return "torch"


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last axis (Sylvester order), ``x @ H``.

    Works for any leading shape, float32/float64 (and other float dtypes through the torch
    backend), on CPU or CUDA. Returns a new tensor; ``x`` is not modified.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"x.shape[-1] must be a power of two, got {n}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if n == 1 or x.numel() == 0:
        return x.clone()
    b = backend(x)
    if b == "fht_cpu":
        return _fwht_fht_cpu(x)
    if b == "cuda-kernel":
        return _fwht_cuda_kernel(x)
    return _fwht_torch(x)


def fwht_(x: torch.Tensor) -> torch.Tensor:
    """In-place :func:`fwht`: overwrites ``x`` with ``x @ H`` and returns it.

    With the ``fht_cpu`` backend on a contiguous CPU tensor the transform runs in ``x``'s own memory
    (no copy: an iterative decoder keeps its buffers); otherwise it is ``x.copy_(fwht(x))``.
    """
    if (isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1] > 1 and x.numel() > 0
            and x.is_contiguous() and x.is_floating_point() and backend(x) == "fht_cpu"
            and not (x.shape[-1] & (x.shape[-1] - 1))):
        arr = x.detach().view(-1, x.shape[-1]).numpy()
        if arr.shape[0] == 1:
            _fht_cpu.fht(arr[0], inplace=True)
        else:
            _fht_cpu.fht(arr, axis=1, inplace=True, num_threads=torch.get_num_threads())
        return x
    return x.copy_(fwht(x))
