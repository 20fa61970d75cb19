"""Permutation-symmetric sparse data and derived seeds.

Notation (the paper's section 2): ``n_s`` sparse features, sparsity ``p``. A sample ``x`` in R^{n_s} has i.i.d.
components ``x_i = c_i u_i`` with ``c_i ~ Bernoulli(p)`` and ``u_i ~ Uniform[0, 1]``: mean ``p/2``,
second moment ``p/3``, variance ``v = p/3 - p^2/4``.

Seeds are never global state: every random stream is a ``torch.Generator`` seeded by
``derive_seed(...)`` from the run's seed and a purpose string (e.g. ``"train"``, ``"eval"``), so the
training samples a decoder fits on are never the samples it is scored on, and the same command and
seed on the same device give the same numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from .._validate import check_ns, check_p, check_seed


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (cell, seed, purpose...), stable across runs."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def trivial_loss(p: float) -> float:
    """``E[x^2] = p/3`` for ``x = c u``, ``c ~ Bernoulli(p)``, ``u ~ U[0, 1]``: the loss of x_hat = 0 (the one
    home of this constant: scoring, theory and the board take it from here)."""
    return p / 3.0


def variance(p: float) -> float:
    """v = Var x_i = p/3 - p^2/4 (the one home of the feature variance; ``theory.feature_variance`` checks p
    and calls it)."""
    return p / 3.0 - p * p / 4.0


def interference_sigma(n_s: int, n_d: int, p: float) -> float:
    """Standard deviation of the interference on one feature through an equiangular frame of ``n_s``
    columns in ``n_d`` dimensions, the Persian Rug's (paper eq. 6): ``sqrt(v (n_s/n_d - 1))``, unchecked
    (``theory.interference_sigma`` checks its arguments); the encoders, the theory and the symmetry
    diagnostics take it from here."""
    return math.sqrt(variance(p) * (n_s / n_d - 1.0))


class SparseSampler:
    """Draws batches of x (shape (batch, n_s)) from one seeded stream.

    ``SparseSampler(n_s, p, seed, purpose="eval")``; ``sample(batch)`` returns the next batch;
    ``stream(n_samples, batch_size)`` yields batches until ``n_samples`` rows were drawn, so a sweep
    can stream millions of samples without holding them.
    """

    def __init__(self, n_s: int, p: float, seed: int = 0, purpose: str = "eval", *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.n_s = check_ns(n_s)
        self.p = check_p(p)
        self.seed = check_seed(seed)
        self.purpose = purpose
        self.device = torch.device(device)
        self.dtype = dtype
        self.generator = make_generator(derive_seed("data", self.n_s, self.p, self.seed, purpose), self.device)

    def sample(self, batch: int) -> torch.Tensor:
        if int(batch) < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        shape = (int(batch), self.n_s)
        on = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype) < self.p
        u = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        return u.mul_(on)

    def stream(self, n_samples: int, batch_size: int = 1024) -> Iterator[torch.Tensor]:
        left = int(n_samples)
        while left > 0:
            b = min(batch_size, left)
            yield self.sample(b)
            left -= b
