"""The fast Walsh-Hadamard transform.

``fwht(x)`` computes ``x @ H`` along the last axis, where ``H`` is the unnormalised Sylvester
Hadamard matrix of size ``n = x.shape[-1]`` (a power of two), ``H_ij = (-1)^popcount(i & j)``: the
order of ``scipy.linalg.hadamard``. ``H`` is symmetric and ``H H = n I``, so ``fwht(fwht(x)) = n x``.

Backends, chosen per call by device and dtype (``backend()`` says which one a tensor gets):

- ``avx2``: decoderbench's own kernel (``_fwht_avx2.c``, built at install time where a C compiler with OpenMP
  is found; loaded by ``_kernel.py``), for float32 CPU tensors outside autograd with ``n >= 8``, on CPUs with
  AVX2; preferred wherever it runs. The radix-2 order (stages h = 1, 2, ..., n/2, each output ``a + c`` or
  ``a - c``), so its results are bit for bit those of ``fht_cpu`` (tests/test_fwht_kernel.py) and rows record it
  as ``fht_cpu`` (``backend_for``). Each block of 4096 floats is taken through all its stages while in L1
  (stages 1-32 of each 64 floats in registers, then radix-8 passes), the higher stages in radix-8 passes over
  the row; the out-of-place transform reads the input in its first pass (no copy). Measured on 2 threads, each
  operation alone (``python benchmarks/encoder_cost.py --steady``): ``fwht(x)`` 0.59x fht-cpu's at
  (B, n) = (1024, 4096), 0.77x at (1024, 16384), 0.69x at (256, 65536), in place 0.8-1.0x; the rug's
  encode/decode/apply run fused with it (encoders.py). Measured and not kept: numba kernels (butterflies across 16 rows in lanes were as fast
  as fht-cpu, but moving the rows into lanes cost a copy of the batch: encode 2.3x fht-cpu's ``fwht(x)``; a
  numba gather after fht-cpu 1.28x).
- ``fht_cpu``: the SIMD C++ package ``fht-cpu`` (optional extra ``fast``), for float32/float64 CPU
  tensors that do not need gradients.
- ``cuda-kernel``: Dao-AILab's ``fast-hadamard-transform`` CUDA kernel, when installed, for CUDA tensors
  in float32 (called with scale 1, Sylvester order as in its reference implementation).
- ``torch``: a Kronecker factorisation ``H_n = H_a (x) H_b (x) ...`` into dense blocks of at most
  ``_BLOCK`` entries applied by GEMMs: O(n log n) work in a few large matrix products, every
  device and dtype, autograd-friendly. Never forms a dense ``n x n`` matrix. The block acting on the
  contiguous (last) axis is one flat GEMM ``(B n / k, k) @ H_k``; the others are batched GEMMs whose
  right-hand side has ``n / (pre k) >= k`` columns. On 2 CPU threads this is 2-4x a ``clone()`` of the
  batch at n = 4096..65536 (the earlier all-batched form, whose last block was a batch of
  matrix-vector products, was 10-14x). Measured and not kept (benchmarks/encoder_cost.py,
  benchmarks/test_bench_hadamard.py): blocks of 128 or 256 (no faster, slower at n = 65536), a
  transpose-and-GEMM cycle (as fast at 4096, 2x slower at 65536), radix-2 butterflies in torch ops
  (13x at 4096, 44x at 65536) and ``torch.compile`` of either form (5 s to compile per shape, no faster).

``fwht(x)`` returns a new tensor; ``fwht_(x)`` transforms a contiguous tensor in place (no copy with ``avx2``
and ``fht_cpu``; the other backends compute out of place and copy back) for callers that own their buffer.
"""

from __future__ import annotations

import functools
import math

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

from ._kernel import DISABLED as _DISABLED  # noqa: E402  (DECODERBENCH_FWHT_DISABLE, read once)
from ._kernel import KERNEL as _AVX2  # noqa: E402  (None where not built, not supported or disabled)

#: fwht backends whose results are bit for bit the same: rows record the first name (``backend_for``)
SAME_ARITHMETIC = {"avx2": "fht_cpu"}


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
        if post == 1:  # the contiguous axis: one flat GEMM (B n / k, k) @ H_k (H_k is symmetric)
            y = torch.mm(y.reshape(-1, k), hk)
        else:
            y = torch.matmul(hk, y.reshape(batch * pre, k, post))
        pre *= k
    return y.reshape(*lead, n)


#: below this many entries fht-cpu (and the AVX2 kernel) run on one thread: see ``_kernel.PARALLEL_MIN_ENTRIES``
from ._kernel import PARALLEL_MIN_ENTRIES, rows, threads  # noqa: E402,F401


def _fht_cpu_inplace(y: torch.Tensor) -> None:
    """Transform the rows of a contiguous 2-D CPU tensor in place with fht-cpu."""
    arr = y.numpy()
    if arr.shape[0] == 1:
        _fht_cpu.fht(arr[0], inplace=True)
    else:
        _fht_cpu.fht(arr, axis=1, inplace=True, num_threads=threads(arr.size))


#: CPU outputs from this size on are allocated by numpy, which asks the kernel for transparent huge pages
#: (madvise) on large arrays: a fresh output then costs its first touch in 2 MB faults instead of 4 KB ones.
#: Measured on 2 threads: the AVX2 transform of a (1024, 16384) float32 batch into it 15 ms against 24 ms into
#: torch.empty (x.clone() 19 ms). At (1024, 4096), 16 MB, torch.empty was faster (1.1-1.2 ms against 1.3-3.9:
#: glibc mostly reuses a freed block of that size, numpy's often came as fresh pages), hence 32 MB.
HUGE_MIN_BYTES = 1 << 25
#: CPU buffers from this size on are taken zeroed from numpy (``calloc``), not from ``torch.zeros``.
FRESH_ZEROS_MIN_BYTES = 1 << 22
_NUMPY_FLOAT = {torch.float32: "float32", torch.float64: "float64"}


def _numpy_sized(shape, dtype: torch.dtype, min_bytes: int) -> bool:
    return dtype in _NUMPY_FLOAT and math.prod(shape) * torch.finfo(dtype).bits // 8 >= min_bytes


def fresh_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor; from ``HUGE_MIN_BYTES`` on (float32/float64) allocated by numpy."""
    shape = tuple(shape)
    if _numpy_sized(shape, dtype, HUGE_MIN_BYTES):
        import numpy as np

        return torch.from_numpy(np.empty(shape, dtype=_NUMPY_FLOAT[dtype]))
    return torch.empty(shape, dtype=dtype)


def fresh_zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor. From ``FRESH_ZEROS_MIN_BYTES`` on, float32/float64 buffers come from numpy's
    ``calloc``, whose large blocks are fresh pages the kernel has zeroed: no fill pass (``torch.zeros`` writes
    every page once more). Below that size ``torch.zeros`` is as fast (memory reused from the heap)."""
    shape = tuple(shape)
    if _numpy_sized(shape, dtype, FRESH_ZEROS_MIN_BYTES):
        import numpy as np

        return torch.from_numpy(np.zeros(shape, dtype=_NUMPY_FLOAT[dtype]))
    return torch.zeros(shape, dtype=dtype)


def _fwht_fht_cpu(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    # one copy into a fresh contiguous buffer (the output), then the transform in place
    out = fresh_empty(x.shape, x.dtype).copy_(x.detach())
    _fht_cpu_inplace(out.view(-1, n))
    return out


def _fwht_cuda_kernel(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    return _fht_cuda.hadamard_transform(x.reshape(-1, n).contiguous(), scale=1.0).reshape(x.shape)


def backend(x: torch.Tensor) -> str:
    """Name of the backend ``fwht`` uses for this tensor."""
    return backend_of(x.dtype, x.device, x.shape[-1], x.requires_grad)


def backend_of(dtype: torch.dtype, device: torch.device, n: int, requires_grad: bool = False) -> str:
    """Name of the backend ``fwht`` uses for tensors of ``dtype`` on ``device`` with last dimension ``n``."""
    if dtype not in (torch.float32, torch.float64) or requires_grad:
        return "torch"
    if device.type == "cpu" and dtype == torch.float32 and _AVX2 is not None and n >= 8:
        return "avx2"
    if device.type == "cpu" and _fht_cpu is not None and "fht_cpu" not in _DISABLED:
        return "fht_cpu"
    if (device.type == "cuda" and _fht_cuda is not None and dtype == torch.float32
            and "cuda-kernel" not in _DISABLED and n <= 2**15):
        return "cuda-kernel"
    return "torch"


def _check(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension")
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"x.shape[-1] must be a power of two, got {n}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")


def fwht_(x: torch.Tensor) -> torch.Tensor:
    """In-place :func:`fwht`: overwrites ``x`` with ``x @ H`` and returns it.

    With the ``fht_cpu`` backend on a contiguous CPU tensor the transform runs in ``x``'s own memory (no
    copy, nothing allocated: an iterative decoder keeps its buffers); otherwise it is ``x.copy_(fwht(x))``
    (a leaf that requires grad cannot be overwritten: torch refuses).
    """
    _check(x)
    n = x.shape[-1]
    if n == 1 or x.numel() == 0:
        return x
    if x.is_contiguous():
        b = backend(x)
        if b == "avx2":
            y = x.detach().view(-1, n)
            _AVX2.fwht(y, y)
            return x
        if b == "fht_cpu":
            _fht_cpu_inplace(x.detach().view(-1, n))
            return x
    return x.copy_(fwht(x))


def fwht_owned(x: torch.Tensor) -> torch.Tensor:
    """``fwht`` of a buffer the caller owns and no longer needs: in place where the backend transforms in
    place (``avx2``, ``fht_cpu``: no copy), else out of place (no copy back either). Use the returned tensor."""
    if backend(x) in ("avx2", "fht_cpu") and x.is_contiguous():
        return fwht_(x)
    return fwht(x)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along the last axis (Sylvester order), ``x @ H``.

    Works for any leading shape, float32/float64 (and other float dtypes through the torch
    backend), on CPU or CUDA. Returns a new tensor; ``x`` is not modified.
    """
    _check(x)
    n = x.shape[-1]
    if n == 1 or x.numel() == 0:
        return x.clone()
    b = backend(x)
    if b == "avx2":
        out = fresh_empty(x.shape, x.dtype)
        _AVX2.fwht(rows(x, n), out.view(-1, n))
        return out
    if b == "fht_cpu":
        return _fwht_fht_cpu(x)
    if b == "cuda-kernel":
        return _fwht_cuda_kernel(x)
    return _fwht_torch(x)


def _named(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    from .._validate import DTYPE_NAMES

    dev = torch.device("cpu" if device in ("auto", None) else device)
    return dev, (getattr(torch, dtype) if dtype in DTYPE_NAMES else torch.float32)


def describe_backend(device: str, dtype: str, n_s: int) -> str:
    """One line naming the transform (B, n_s) batches of ``device`` and ``dtype`` get here, and on CPU what a
    faster one would take (printed by ``decoderbench run``)."""
    from ._kernel import why_not

    dev, dt = _named(device, dtype)
    b = backend_of(dt, dev, n_s)
    text = {"avx2": "avx2 (decoderbench's AVX2 kernel, the rug's operators fused with it)",
            "fht_cpu": "fht_cpu (the fht-cpu package)", "cuda-kernel": "cuda-kernel (fast-hadamard-transform)",
            "torch": "torch (dense blocks by GEMM)"}[b]
    if dev.type == "cpu" and b != "avx2" and dt == torch.float32 and why_not:
        text += f"; the AVX2 kernel is {why_not}" if why_not.startswith("not built") else f"; AVX2 kernel: {why_not}"
    return text


def backend_for(device: str, dtype: str, n_s: int) -> str:
    """The ``fwht`` backend this process uses for (B, n_s) tensors of ``device`` and ``dtype`` (names), as rows
    record it: by its arithmetic (``SAME_ARITHMETIC``: the AVX2 kernel's results are fht-cpu's, bit for bit,
    so a row made with either is the same row and resumes or verifies against the other)."""
    dev, dt = _named(device, dtype)
    b = backend_of(dt, dev, n_s)
    return SAME_ARITHMETIC.get(b, b)
