"""Encoders: the map x -> h = W_in x and its transpose.

An encoder has ``n_s``, ``n_d``, ``encode(x)`` (``h = W_in x``, shape (B, n_d)), ``decode(h)``
(``W_out h``, shape (B, n_s)), ``adjoint(h)`` (``W_in^T h``), ``apply(x)`` (``R x = W_out W_in x``)
and a set of ``capabilities`` that decoders may require:

- ``"fast_transform"``: applying W_in and W_in^T costs O(n_s log n_s) per sample.
- ``"orthogonal_rows"``: ``W_in W_in^T = (n_s/n_d) I`` (so ``W_out = W_in^T`` and
  ``P = (n_d/n_s) R`` is a projector).

The Persian Rug (paper 4.2.2, appendix F): ``H`` the Sylvester Hadamard matrix of size ``n_s``,
``S`` ``n_d`` distinct column indices drawn from the seed,
``W_in = n_d^{-1/2} H[:, S]^T``, ``W_out = n_d^{-1/2} H[:, S]``, ``R = n_d^{-1} H[:, S] H[:, S]^T``,
applied as ``W_in x = n_d^{-1/2} (H x)[S]``, ``W_out h = n_d^{-1/2} H (scatter h into S)``,
``R x = n_d^{-1} H (m * (H x))``. Memory besides the batch is O(n_s).

Cost: each operation does the transforms it needs and O(n_s) work per sample besides. Where the AVX2 kernel
runs (float32 on CPU, outside autograd: ``_fused``), each row is transformed where it sits in cache and the
operation rides on the transform: ``encode`` takes its n_d columns from the transformed row, ``decode``/
``adjoint`` scatter the scaled ``h`` into a zeroed scratch block and transform it into the output row, ``apply``
multiplies by the scaled mask between its two transforms; no pass over the batch of their own, the same float32
products and transform as below (bit for bit). Elsewhere (float64, CUDA, autograd, no kernel): ``encode`` one
transform (on CPU with fht-cpu: a copy into a per-thread scratch buffer, reused across calls, transformed in
place) and a gather of the ``n_d`` kept columns; ``decode``/``adjoint`` the scaled ``h`` scattered into a zeroed
(B, n_s) buffer and one in-place transform; ``apply`` one out-of-place transform, one multiply by the cached
scaled mask ``m / n_d`` and one in-place transform (``apply(x, inplace=True)`` transforms ``x`` itself). The
index and mask buffers are built once per device and dtype. Tensors that require grad take the same arithmetic
out of place. benchmarks/encoder_cost.py gives the ratios.
"""

from __future__ import annotations

import math
import threading

import torch

from .._validate import check_nd, check_ns, check_p, check_seed
from .data import derive_seed, interference_sigma, make_generator
from . import hadamard
from .hadamard import FRESH_ZEROS_MIN_BYTES, fresh_zeros  # noqa: F401  (kept importable from here)
from .hadamard import backend, fresh_empty, fwht, fwht_, fwht_owned, hadamard_matrix

DENSE_MAX_NS = 2**13


class _Workspace(threading.local):
    """Scratch tensors of one thread, reused across calls: a fresh (B, n_s) CPU tensor costs its page faults
    on first touch (measured at n_s 65536, B 256: ``x.clone()`` 31 ms of CPU time against 10 ms for
    ``copy_`` into a buffer already touched), as much as the transform itself. Per thread, so that
    decoders running on harness threads never share one; at most ``KEEP`` shapes are kept."""

    KEEP = 2

    def __init__(self):
        self.bufs: dict = {}

    def get(self, name: str, shape, dtype, device) -> torch.Tensor:
        key = (name, tuple(shape), dtype, device)
        b = self.bufs.pop(key, None)
        if b is None:
            b = torch.empty(shape, dtype=dtype, device=device)
        self.bufs[key] = b  # most recently used last
        while len(self.bufs) > self.KEEP:
            self.bufs.pop(next(iter(self.bufs)))
        return b


#: encode gathers its n_d columns by ``torch.gather`` with S broadcast over the rows from this many entries of
#: the batch on (measured 0.54 against 0.87 ms at 1024 x 4096, 4.5 against 8.9 ms at 256 x 65536), by
#: ``index_select`` below (0.017 against 0.029 ms at 64 x 4096).
_GATHER_MIN_ENTRIES = 1 << 18
class Encoder:
    """Base class for encoders. Subclasses set ``name`` and ``capabilities``.

    The operators an ``iterative`` decoder may apply (``self.ctx.encoder``), each on a batch (rows are samples,
    on the context's device and dtype): ``encode(x) = W_in x`` ((B, n_s) -> (B, n_d)); ``adjoint(h) = W_in^T h``
    ((B, n_d) -> (B, n_s)); ``decode(h) = W_out h`` (= ``adjoint`` unless an encoder says otherwise);
    ``apply(x) = R x = W_out W_in x``. Encoders with the capability ``orthogonal_rows`` (the rug:
    ``W_in W_in^T = (n_s/n_d) I``) also give ``project(x) = P x``, the orthogonal projector onto the row space of
    ``W_in`` (``P = (n_d/n_s) R``), and ``pinv(h) = W_in^T (W_in W_in^T)^{-1} h``, the least-squares
    ``x``; ``fast_transform`` means every operator costs ``O(n_s log n_s)`` per sample. A decoder that needs a
    capability lists it in its ``requires``.
    """

    name: str = "encoder"
    capabilities: frozenset[str] = frozenset()

    n_s: int
    n_d: int

    @property
    def r(self) -> float:
        return self.n_d / self.n_s

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """W_out h; W_out = W_in^T unless a subclass says otherwise."""
        return self.adjoint(h)

    def apply(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """R x = W_out W_in x. ``inplace=True`` allows (does not oblige) an encoder to overwrite ``x``."""
        return self.decode(self.encode(x))

    def interference(self, p: float) -> tuple[float, float]:
        """(mu, sigma): mean and standard deviation of nu_i = sum_{j != i} R_ij x_j (row-uniform)."""
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> dict:
        return {"encoder": self.name}


class PersianRug(Encoder):
    """The Persian Rug encoder, built from ``n_d`` columns of the Sylvester Hadamard matrix."""

    name = "rug"
    capabilities = frozenset({"fast_transform", "orthogonal_rows"})

    def __init__(self, n_s: int, n_d: int, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.n_s = check_ns(n_s)
        self.n_d = check_nd(n_d, self.n_s)
        self.seed = check_seed(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        g = make_generator(derive_seed("rug-columns", self.n_s, self.n_d, self.seed))
        self.S = torch.randperm(self.n_s, generator=g)[: self.n_d].sort().values.to(self.device)
        self.mask = torch.zeros(self.n_s, dtype=torch.bool, device=self.device)
        self.mask[self.S] = True
        self.col0 = bool(self.mask[0])
        self._scale = 1.0 / math.sqrt(self.n_d)
        self._buffers: dict = {}
        self._ws = _Workspace()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_buffers"], d["_ws"] = {}, None  # caches: rebuilt where the encoder lands
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._ws = _Workspace()

    def _fused(self, t: torch.Tensor) -> bool:
        """Run the AVX2 kernel that fuses the transform with the gather, scatter or mask? Where (B, n_s) tensors
        of t's device and dtype get the ``avx2`` transform backend (float32 on CPU, decided once per device and
        dtype in ``_bufs``) and ``t`` is outside autograd. Bit for bit the other path's arithmetic: the same
        float32 products and the same transform."""
        return self._bufs(t)[3] and not t.requires_grad and hadamard._AVX2 is not None

    def _scratch(self, t: torch.Tensor) -> bool:
        """Use a reused scratch buffer for ``t``'s transform? CPU tensors outside autograd whose backend
        transforms in place (``fht_cpu``); elsewhere a buffer gains nothing (CUDA's caching allocator reuses
        memory already)."""
        return t.device.type == "cpu" and not t.requires_grad and backend(t) == "fht_cpu"

    def _bufs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """(S, m / n_d, slot, fused) on ``t``'s device, the mask in ``t``'s dtype: built once per device and dtype.
        ``slot[i]`` is the position of column i in S, or n_d (a zero appended to h) when i is not in S; ``fused``:
        whether (B, n_s) tensors of this device and dtype get the ``avx2`` transform (see ``_fused``)."""
        key = (t.device, t.dtype)
        b = self._buffers.get(key)
        if b is None:
            S = self.S.to(t.device)
            scaled_mask = self.mask.to(device=t.device, dtype=t.dtype) * (1.0 / self.n_d)
            slot = torch.full((self.n_s,), self.n_d, dtype=torch.long)
            slot[self.S.cpu()] = torch.arange(self.n_d)
            fused = hadamard.backend_of(t.dtype, t.device, self.n_s) == "avx2"  # float32 on CPU, kernel loaded
            b = self._buffers[key] = (S.contiguous(), scaled_mask.contiguous(), slot.to(t.device), fused)
        return b

    @staticmethod
    def _owns(t: torch.Tensor) -> bool:
        """May t be transformed in place (contiguous, outside autograd)?"""
        return t.is_contiguous() and not t.requires_grad

    def _check(self, t: torch.Tensor, n: int, name: str) -> None:
        if t.shape[-1] != n:
            raise ValueError(f"{name} must have last dimension {n}, got shape {tuple(t.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.n_s, "x")
        S = self._bufs(x)[0]
        if self._fused(x):  # each row transformed in cache and its n_d columns taken from there
            h = fresh_empty((*x.shape[:-1], self.n_d), x.dtype)
            hadamard._AVX2.encode(hadamard.rows(x, self.n_s), S, self._scale, h.view(-1, self.n_d))
            return h
        if self._scratch(x):  # copy into this thread's scratch buffer, transform it in place, gather
            buf = fwht_(self._ws.get("encode", x.shape, x.dtype, x.device).copy_(x))
            if buf.numel() >= _GATHER_MIN_ENTRIES:  # a gather along rows of S: 1.6-2x index_select's speed
                h = torch.gather(buf, -1, S.expand(*buf.shape[:-1], self.n_d))
            else:
                h = torch.index_select(buf, -1, S)
            return h.mul_(self._scale)
        h = torch.index_select(fwht(x), -1, S)
        return h.mul_(self._scale) if self._owns(h) else h * self._scale

    def adjoint(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """W_in^T h. ``out``: an optional contiguous tensor of the result's shape, dtype and device, written and
        returned (an iterative decoder's buffer: memory already touched costs no page faults)."""
        self._check(h, self.n_d, "h")
        if out is not None:
            shape = (*h.shape[:-1], self.n_s)
            if (not isinstance(out, torch.Tensor) or tuple(out.shape) != shape or out.dtype != h.dtype
                    or out.device != h.device or not out.is_contiguous() or out.requires_grad):
                raise ValueError(f"out must be a contiguous {h.dtype} tensor of shape {shape} on {h.device} "
                                 "that does not require grad")
        if self._fused(h):  # each output row zeroed, h scattered into it and transformed, in cache
            full = out if out is not None else fresh_empty((*h.shape[:-1], self.n_s), h.dtype)
            S = self._bufs(h)[0]
            hadamard._AVX2.decode(hadamard.rows(h, self.n_d), S, self._scale, full.view(-1, self.n_s))
            return full
        if self._scratch(h):
            # the scaled h in this thread's scratch buffer, scattered into the n_d kept columns of a zeroed
            # (B, n_s) buffer (along rows of S: 1.2-1.6x index_copy_'s speed), transformed in place. The buffer
            # comes zeroed from the system (fresh_zeros): measured at n_s 65536, B 256 (with index_copy_) 0.88 of
            # one fwht(x), against 1.76 for a gather of every output column from the padded h (the gather's
            # index arithmetic cost more than the transform) and 1.24 for torch.zeros (a fill pass over pages
            # the kernel had already zeroed)
            hs = torch.mul(h, self._scale, out=self._ws.get("adjoint", h.shape, h.dtype, h.device))
            full = out.zero_() if out is not None else fresh_zeros((*h.shape[:-1], self.n_s), h.dtype)
            return fwht_(full.scatter_(-1, self._bufs(h)[0].expand(*h.shape[:-1], self.n_d), hs))
        # scale the n_d kept entries (not the n_s outputs), append a zero, and gather every output column in
        # one pass (differentiable; any backend and device)
        slot = self._bufs(h)[2]
        padded = torch.cat([h * self._scale, h.new_zeros(*h.shape[:-1], 1)], dim=-1)
        full = torch.index_select(padded, -1, slot)
        full = fwht_owned(full) if self._owns(full) else fwht(full)
        return full if out is None else out.copy_(full)

    def apply(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """R x = n_d^{-1} H (m * (H x)); ``inplace=True`` overwrites and returns ``x`` when it is contiguous
        and outside autograd."""
        self._check(x, self.n_s, "x")
        scaled_mask = self._bufs(x)[1]
        if self._fused(x):  # each row: transform, mask, transform, in cache
            out = x if inplace and self._owns(x) else fresh_empty(x.shape, x.dtype)
            hadamard._AVX2.apply(hadamard.rows(x, self.n_s), scaled_mask, out.view(-1, self.n_s))
            return out
        if not self._owns(x):
            return fwht(fwht(x) * scaled_mask)
        if inplace:  # no copy with fht-cpu; another backend copies its results back into x
            return fwht_(fwht_(x).mul_(scaled_mask))
        return fwht_owned(fwht(x).mul_(scaled_mask))

    def project(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """P x with P = (n_d/n_s) R, the orthogonal projector onto the row space of W_in."""
        y = self.apply(x, inplace=inplace)
        return y.mul_(self.n_d / self.n_s) if self._owns(y) else y * (self.n_d / self.n_s)

    def pinv(self, h: torch.Tensor) -> torch.Tensor:
        """x_ls = W_in^T (W_in W_in^T)^{-1} h = (n_d/n_s) W_in^T h."""
        y = self.adjoint(h)
        return y.mul_(self.n_d / self.n_s) if self._owns(y) else y * (self.n_d / self.n_s)

    def rowsum(self) -> float:
        """Every row of R sums to n_s/n_d if column 0 is in S, otherwise to 0."""
        return self.n_s / self.n_d if self.col0 else 0.0

    def interference(self, p: float) -> tuple[float, float]:
        p = check_p(p)
        mu = 0.5 * p * (self.rowsum() - 1.0)
        sigma = interference_sigma(self.n_s, self.n_d, p)
        return mu, sigma

    def w_in(self) -> torch.Tensor:
        """Dense W_in (n_d x n_s), only for n_s <= 2**13."""
        self._dense_ok()
        H = hadamard_matrix(self.n_s, torch.float64).to(self.device)
        return (H[:, self.S].T * self._scale).to(self.dtype)

    def dense(self) -> torch.Tensor:
        """Dense R (n_s x n_s), only for n_s <= 2**13."""
        self._dense_ok()
        H = hadamard_matrix(self.n_s, torch.float64).to(self.device)
        HS = H[:, self.S]
        return ((HS @ HS.T) / self.n_d).to(self.dtype)

    def _dense_ok(self) -> None:
        if self.n_s > DENSE_MAX_NS:
            raise ValueError(f"n_s must be at most 2**13 = {DENSE_MAX_NS} for a dense matrix, got {self.n_s}; "
                             "use encode/decode/apply, which never form one")

    def describe(self) -> dict:
        return {"encoder": self.name, "col0": self.col0}

    def __repr__(self) -> str:
        return f"PersianRug(n_s={self.n_s}, n_d={self.n_d}, seed={self.seed}, col0={self.col0})"
