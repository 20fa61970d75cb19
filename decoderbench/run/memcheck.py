"""Memory check before a sweep: a cell too large for the memory it can get is refused before anything runs.

:func:`check_units` (called once in the run path, ``decoderbench.api.prepare``, which ``decoderbench run``
and the Python API both go through, after the units are built and before anything runs or a store is made)
estimates the peak resident memory of the largest unit, compares it with the memory found (RAM on CPU,
free device memory on CUDA) and raises :class:`~decoderbench.errors.BadInput` with one line
naming ``n_s``, the memory it needs and the memory it found (the CLI: exit 2).

The estimate is a model of what a unit really allocates, its constants fitted to the maximum resident set
size (``/usr/bin/time -v``) of ``decoderbench run --plugins relu,linear,topk,oracle,vamp --r 0.01 --p 0.001
--device cpu`` at ``n_s = 2^16, 2^18, 2^20`` (float32; :data:`MEASURED`). The decoders of a unit run one
after another, so the peak is the imports plus the larger of two terms:

* :data:`BASE_BYTES`: the interpreter with torch, numpy, scipy, pandas, pyarrow and the built-in plugins
  imported (326 MB measured);
* evaluation: :data:`BATCH_TENSORS` tensors of one evaluation batch, ``eval_batch_size(n_s) x n_s``
  entries (about ``2^22`` up to ``n_s = 2^22``, one sample of ``n_s`` entries beyond) in the cell's dtype:
  the batch, its code, the decoder's output and the message-passing decoders' per-iteration buffers
  (this term sets the peak at ``n_s = 2^16``: 693 MB);
* fitting: :data:`BYTES_PER_PAIR` per scalar pair ``(z_i, x_i)`` pooled by the built-in least-squares fits
  (the training batch, its float64 copies, the sort and the tail sums); ``fit_pairs(n_s)`` restates their
  rule: at least ``2^21`` pairs and 32 training samples unless that would pool more than ``2^24`` pairs
  (this term sets the peak at ``2^18``, 820 MB, and ``2^20``, 1282 MB).

The estimate is multiplied by :data:`MARGIN` before it is compared. On CUDA the evaluation term is
compared with the device's free memory and the rest with the host's RAM. With ``workers > 1`` the units
run at once, each in its own process: the host need is that many times one unit's.

``DECODERBENCH_MEMORY_CHECK=0`` switches the check off (for a machine whose free memory is not what
``/proc/meminfo`` or the cgroup says).
"""

from __future__ import annotations

import math
import os

from ..errors import BadInput

MB = 2**20
GB = 2**30

BASE_BYTES = 326 * MB
BATCH_TENSORS = 23
BYTES_PER_PAIR = 60
MARGIN = 1.25

#: (n_s, peak RSS in bytes) of ``decoderbench run --plugins relu,linear,topk,oracle,vamp --r 0.01 --p 0.001``
#: (float32, CPU, 2 threads), the points the constants above were fitted to.
MEASURED = {2**16: 709436 * 1024, 2**18: 839476 * 1024, 2**20: 1312584 * 1024}

# the built-in fits' pooling rule (plugins/_fit.py: DEFAULT_PAIRS, MIN_SAMPLES, MAX_PAIRS)
_FIT_DEFAULT_PAIRS = 2**21
_FIT_MIN_SAMPLES = 32
_FIT_MAX_PAIRS = 2**24

_ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def fit_pairs(n_s: int) -> int:
    """Scalar pairs a built-in least-squares fit pools at ``n_s`` (its training samples times ``n_s``)."""
    n_samples = max(min(_FIT_MIN_SAMPLES, max(1, _FIT_MAX_PAIRS // n_s)), math.ceil(_FIT_DEFAULT_PAIRS / n_s))
    return n_samples * n_s


def eval_entries(n_s: int) -> int:
    """Entries of one evaluation batch on CPU (``evalkey.eval_batch_size(n_s) x n_s``)."""
    from ..model.evalkey import eval_batch_size

    return eval_batch_size(n_s) * n_s


def need_bytes(n_s: int, dtype: str = "float32", device: str = "cpu") -> dict:
    """Estimated peak memory of one unit at ``n_s``: ``{"host": bytes, "device": bytes}`` (device 0 on CPU),
    without the margin."""
    item = _ITEMSIZE.get(str(dtype).replace("torch.", ""), 4)
    evaluation = BATCH_TENSORS * eval_entries(n_s) * item
    fitting = BYTES_PER_PAIR * fit_pairs(n_s)
    if str(device).startswith("cuda"):
        return {"host": BASE_BYTES + fitting, "device": evaluation}
    return {"host": BASE_BYTES + max(evaluation, fitting), "device": 0.0}


def _cgroup_free() -> float | None:
    """Bytes the cgroup (v2, else v1) still allows this process tree, or None without a limit."""
    for limit_f, used_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as f:
                raw = f.read().strip()
            with open(used_f) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 2**60:
            return None
        return max(0.0, float(int(raw) - used))
    return None


def available_ram() -> float:
    """Bytes of RAM this process can get: ``MemAvailable`` of ``/proc/meminfo`` (else the free pages from
    ``os.sysconf``), no more than what a cgroup memory limit leaves."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = float(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return math.inf  # nothing to go by: do not refuse
    cg = _cgroup_free()
    return min(avail, cg) if cg is not None else avail


def available_device(device: str) -> float:
    """Free bytes on a CUDA device (inf on CPU)."""
    if not str(device).startswith("cuda"):
        return math.inf
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return float(free)


def _fmt(b: float) -> str:
    return f"{b / GB:.2f} GB" if b >= GB else f"{b / MB:.0f} MB"


def check_cell(n_s: int, dtype: str = "float32", device: str = "cpu", workers: int = 1,
               ram: float | None = None, device_free: float | None = None) -> dict:
    """Raise BadInput when a unit at ``n_s`` would not fit; else return the estimate and what was found."""
    need = need_bytes(n_s, dtype, device)
    host_need = MARGIN * need["host"] * max(1, int(workers))
    dev_need = MARGIN * need["device"]
    ram = available_ram() if ram is None else float(ram)
    if host_need > ram:
        raise BadInput(f"n_s = {n_s} needs about {_fmt(host_need)} of RAM"
                       + (f" ({workers} workers)" if workers > 1 else "")
                       + f", found {_fmt(ram)} available: refused before anything runs "
                         "(a smaller --ns, fewer --workers, or DECODERBENCH_MEMORY_CHECK=0 to run anyway)")
    found_dev = None
    if dev_need > 0:
        found_dev = available_device(device) if device_free is None else float(device_free)
        if dev_need > found_dev:
            raise BadInput(f"n_s = {n_s} needs about {_fmt(dev_need)} of {device} memory, found {_fmt(found_dev)} "
                           "free: refused before anything runs (a smaller --ns, --device cpu, or "
                           "DECODERBENCH_MEMORY_CHECK=0 to run anyway)")
    return {"n_s": n_s, "host_need": host_need, "device_need": dev_need, "ram": ram, "device_free": found_dev}


def check_units(units, workers: int = 1) -> dict | None:
    """The check for a sweep's work units: the unit with the largest ``n_s`` (per dtype and device) decides.
    Returns the largest unit's estimate, or None when there is nothing to check or the check is off."""
    if os.environ.get("DECODERBENCH_MEMORY_CHECK", "1").strip() in ("0", "off", "false", "no"):
        return None
    largest: dict = {}
    for u in units:
        k = (str(u.dtype), str(u.device))
        largest[k] = max(largest.get(k, 0), int(u.n_s))
    out = None
    for (dtype, device), n_s in sorted(largest.items(), key=lambda kv: -kv[1]):
        out = check_cell(n_s, dtype, device, workers=min(int(workers), len(units)) if units else 1)
    return out
