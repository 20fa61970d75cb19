"""The evaluation stream's seed: a keyed hash a decoder is never given.

A decoder is told its cell and the run's seed (``DecoderContext``) and draws its own training stream;
the harness scores it on the evaluation stream. If that stream's seed were a public function of what
the decoder is told (as ``SparseSampler(n_s, p, seed, "eval")`` was), a decoder could rebuild the
samples it is scored on and score a loss of 0. So the stream's purpose string is a keyed BLAKE2b hash
of (n_s, p, seed) under the *evaluation key*:

* by default the public key below: every run anywhere is reproducible (same command and seed, same
  numbers), and the naive rebuild fails, but a decoder that imports this module can recompute it;
* with ``DECODERBENCH_EVAL_KEY`` set (any string, kept secret) the stream cannot be derived from
  anything a decoder receives. The harness reads it; an isolated decoder's worker process has it
  removed from its environment and never sees the samples (see ``decoderbench.run.worker``). Rows record
  only a fingerprint (``eval_stream``: ``public`` or ``key-<12 hex>``), which is part of their key, so
  a run with another key never reuses them, and ``verify`` needs the same key.

Limits, stated plainly: a decoder run in-process (``--no-isolate``, or a built-in) shares the
harness's memory and environment; and an isolated decoder running as the same OS user can read the
harness's ``/proc/<pid>/environ``. Isolation here is a process boundary, not a sandbox.
"""

from __future__ import annotations

import hashlib
import os

ENV = "DECODERBENCH_EVAL_KEY"
#: Entries per evaluation batch (float32: 16 MB per (B, n_s) tensor).
BATCH_ENTRIES = 2**22
#: On a CUDA device one (B, n_s) float32 tensor stays under 1/CUDA_BATCH_FRACTION of the device's memory (a
#: decoder holds a few tens of such tensors at once).
CUDA_BATCH_FRACTION = 64


def eval_batch_size(n_s: int, device=None) -> int:
    """Samples per evaluation batch: about ``BATCH_ENTRIES`` entries, between 1 and 4096 samples.

    This is the batch a unit is scored in and the one its key records (``eval_batch``: BatchTopK's output
    depends on it). On a CUDA device it is also kept under ``1/CUDA_BATCH_FRACTION`` of the device's total
    memory per (B, n_s) float32 tensor: a property of the device, not of the moment, so the same unit on the
    same device always has the same key and is scored the same way."""
    b = BATCH_ENTRIES // n_s
    if device is not None and str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():  # (else a CUDA unit described, never run, on a machine without one)
            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            b = min(b, total // (CUDA_BATCH_FRACTION * 4 * n_s))
    return int(min(4096, max(1, b)))


PUBLIC_KEY = b"decoderbench public evaluation key, v1"


_WORKER_KEY: bytes | None = None
#: The key while it is moved out of the environment for a child's start (see :class:`hidden_from_children`).
_HIDDEN: str | None = None


class hidden_from_children:
    """Take the key out of the process environment while a child process starts, and put it back after.

    A child (the forkserver, started on the first child's start, and every worker forked from it) copies the
    environment it is started with into its own initial environment block, which ``/proc/<pid>/environ``
    shows whatever the child later removes from ``os.environ``: so the key must not be in the environment
    when any child starts. While it is out, this process still reads it (``_HIDDEN``, set before the key
    leaves the environment and cleared after it is back, so a thread reading it meanwhile sees one or the
    other). Unit workers that score get the key through their pipe, never through their environment block."""

    def __enter__(self):
        global _HIDDEN
        self.value = os.environ.get(ENV)
        if self.value is not None:
            _HIDDEN = self.value
            os.environ.pop(ENV, None)
        return self

    def __exit__(self, *exc):
        global _HIDDEN
        if self.value is not None:
            os.environ[ENV] = self.value
            _HIDDEN = None
        return False


def _in_decoder_worker() -> None:
    """Called in an isolated decoder's process: this module then uses a random key of its own, so that
    calling it there yields nothing like the harness's stream (a decoder that re-implements the public
    scheme still can, without a secret key: see the module docstring)."""
    global _WORKER_KEY
    _WORKER_KEY = os.urandom(32)


def configured() -> str | None:
    """The key as this process is configured with it (``None``: the public stream), also while it is hidden."""
    v = os.environ.get(ENV)
    return _HIDDEN if v is None else v


def _key() -> tuple[bytes, bool]:
    if _WORKER_KEY is not None:
        return _WORKER_KEY, True
    v = configured()
    if v is not None and not v.strip():
        from ..errors import BadInput

        raise BadInput(f"{ENV} is set but empty: unset it for the public (reproducible) evaluation stream, or set it "
                       "to a secret")
    if v:
        return hashlib.sha256(v.encode()).digest(), True
    return hashlib.sha256(PUBLIC_KEY).digest(), False


def eval_stream_id() -> str:
    """``public``, or ``key-`` and a 12-hex fingerprint of the secret key (never the key itself)."""
    key, secret = _key()
    if not secret:
        return "public"
    return "key-" + hashlib.blake2b(b"fingerprint", key=key, digest_size=6).hexdigest()


def eval_purpose(n_s: int, p: float, seed: int) -> str:
    """The evaluation stream's purpose string (what seeds its generator) for one cell and seed."""
    key, _ = _key()
    msg = f"{int(n_s)}|{float(p)!r}|{int(seed)}".encode()
    return "eval-" + hashlib.blake2b(msg, key=key, digest_size=16).hexdigest()


def eval_sampler(cell, seed: int, device="cpu", dtype=None):
    """The harness's evaluation sampler of ``cell`` (a ``decoder.Cell``) and ``seed``."""
    import torch

    from .data import SparseSampler

    return SparseSampler(cell.n_s, cell.p, seed, eval_purpose(cell.n_s, cell.p, seed), device=device,
                         dtype=dtype or torch.float32)
