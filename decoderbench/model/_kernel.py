"""The AVX2 Walsh-Hadamard kernels (``_fwht_avx2.c``, built at install time when a C compiler with OpenMP is
there), loaded through ctypes: ``KERNEL`` is ``None`` where the extension was not built, the CPU lacks AVX2, or
``DECODERBENCH_FWHT_DISABLE`` names ``avx2``; ``why_not`` then says which.

Every function takes contiguous float32 CPU tensors (int64 for the column indices) and writes its output in
place; callers check shapes, dtypes and contiguity (decoderbench/model/hadamard.py and encoders.py). ctypes
releases the GIL for the call, so harness threads run kernels side by side.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

import torch

#: below this many entries a kernel (and fht-cpu, hadamard.py) runs on one thread: an OpenMP team costs more
#: than it saves, and on a busy machine each parallel region can wait a scheduler time slice for its second
#: thread (measured with fht-cpu: 18 ms per call on a (16, 1024) batch at load 8 on 2 cores, against well
#: under 1 ms on one thread)
PARALLEL_MIN_ENTRIES = 2**18

#: the transform backends turned off by the environment (``DECODERBENCH_FWHT_DISABLE=avx2,fht_cpu,...``), read once
DISABLED = frozenset(s.strip() for s in os.environ.get("DECODERBENCH_FWHT_DISABLE", "").split(",") if s.strip())

_P, _I, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int


def threads(entries: int) -> int:
    """Threads for a kernel (or fht-cpu) call over ``entries`` entries: torch's count, or 1 below
    ``PARALLEL_MIN_ENTRIES``."""
    return torch.get_num_threads() if entries >= PARALLEL_MIN_ENTRIES else 1


def rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """t as a contiguous (B, n) tensor outside autograd (a view where it already is contiguous)."""
    t = t.detach().reshape(-1, n)
    return t if t.is_contiguous() else t.contiguous()


def _done(rc: int, op: str, out: torch.Tensor) -> torch.Tensor:
    if rc != 0:
        raise MemoryError(f"the AVX2 {op} kernel could not allocate its per-thread scratch memory")
    return out


class _Kernel:
    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.supported = bool(lib.dbk_supported())
        lib.dbk_fwht_f32.argtypes = [_P, _P, _I, _I, _INT]
        lib.dbk_fwht_f32.restype = None
        lib.dbk_encode_f32.argtypes = [_P, _P, _I, _F, _P, _I, _I, _INT]
        lib.dbk_encode_f32.restype = _INT
        lib.dbk_decode_f32.argtypes = [_P, _P, _I, _F, _P, _I, _I, _INT]
        lib.dbk_decode_f32.restype = _INT
        lib.dbk_apply_f32.argtypes = [_P, _P, _P, _I, _I, _INT]
        lib.dbk_apply_f32.restype = None
        self.lib = lib

    def fwht(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[b] = H x[b] over the rows of (B, n) tensors; out may be x."""
        B, n = x.shape
        self.lib.dbk_fwht_f32(x.data_ptr(), out.data_ptr(), B, n, threads(B * n))
        return out

    def encode(self, x: torch.Tensor, S: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
        """out[b, k] = (H x[b])[S[k]] * scale (float32 multiply by scale rounded to float32)."""
        B, n = x.shape
        return _done(self.lib.dbk_encode_f32(x.data_ptr(), S.data_ptr(), S.numel(), scale, out.data_ptr(), B, n,
                                             threads(B * n)), "encode", out)

    def decode(self, h: torch.Tensor, S: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
        """out[b] = H z[b], z[b] zero but z[b, S[k]] = h[b, k] * scale."""
        B, n = out.shape
        return _done(self.lib.dbk_decode_f32(h.data_ptr(), S.data_ptr(), S.numel(), scale, out.data_ptr(), B, n,
                                             threads(B * n)), "decode", out)

    def apply(self, x: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out[b] = H (m * (H x[b])); out may be x."""
        B, n = x.shape
        self.lib.dbk_apply_f32(x.data_ptr(), m.data_ptr(), out.data_ptr(), B, n, threads(B * n))
        return out


def _load() -> tuple[_Kernel | None, str]:
    if "avx2" in DISABLED:
        return None, "disabled by DECODERBENCH_FWHT_DISABLE"
    # the built library, found where the import system finds extension modules (it is not one: no PyInit)
    spec = importlib.util.find_spec(__package__ + "._fwht_avx2")
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None, "not built (the install found no C compiler with OpenMP; reinstall with one to get it)"
    try:
        k = _Kernel(spec.origin)
    except (OSError, AttributeError) as e:  # pragma: no cover - a broken build
        return None, f"could not be loaded ({e})"
    if not k.supported:
        return None, "this CPU has no AVX2"
    return k, ""


KERNEL, why_not = _load()
