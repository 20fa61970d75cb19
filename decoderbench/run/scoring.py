"""Scoring: the one estimator of a decoder's loss and its standard error, and the stopping rule.

The loss of a sample is ``n_s^{-1} ||x - x_hat||^2`` (the paper's per-feature mean squared error,
section 2). Evaluation samples are drawn in batches (``decoderbench.model.evalkey.eval_batch_size``: about 4M entries, so memory
does not grow with the number of samples nor, beyond one batch, with ``n_s``) until

* ``target``: the standard error of the mean is at most ``target_rel_se`` times the mean, or
* ``floor``: it is at most ``se_floor`` times the cell's trivial loss ``E[x^2] = p/3`` (the loss of
  ``x_hat = 0``): an absolute floor, so that a row whose loss is near zero (exact recovery, or rare
  failures among exact recoveries) stops in seconds with its loss known to that absolute precision,
  instead of chasing a relative target it cannot reach; or
* ``max_samples``: the cap; the row then says whether its precision was met anyway.

(at least ``min_samples`` in every case).

Recovery, per sample: a sample is *recovered* when its loss is below ``RECOVERED_REL = 1e-3`` of the trivial
loss ``p/3``. Near a recovery threshold the per-sample losses are bimodal (some samples recovered exactly,
others stalled), which a mean loss hides; every row therefore records ``recovered_frac`` (the fraction of its
samples recovered) and ``recovered_frac_se`` (its binomial standard error ``sqrt(f (1 - f) / n)``). The first batches hold ``min_samples``, then each doubles
the total drawn (never more than ``batch`` samples at once), so a costly decoder draws at most about
twice what its precision needs. A row records ``sampling_stop`` (which of the three) and
``precision_met`` (the target or the floor reached).
"""

from __future__ import annotations

import math
import time

import torch

from ..model.data import trivial_loss  # noqa: F401 (re-exported: scoring.trivial_loss)

from .._validate import SE_FLOOR  # noqa: E402,F401 default absolute SE floor, a fraction of the trivial loss p/3
#: A sample is recovered when its loss is below this fraction of the trivial loss p/3.
RECOVERED_REL = 1e-3
#: A feature "fires" in a decoder's output when ``x_hat_i > SUPPORT_THRESHOLD`` (a twentieth of the range of
#: an active feature, ``x_i ~ U[0, 1]``): the support metrics compare that with the same test on the truth,
#: ``x_i > SUPPORT_THRESHOLD`` (the 95% of active features above it), so that exact recovery scores 1.
SUPPORT_THRESHOLD = 0.05


class SupportCounts:
    """Running support and per-feature counts of a row: true/false positives and false negatives of
    ``x_hat > SUPPORT_THRESHOLD`` against ``x > SUPPORT_THRESHOLD``, per-feature squared error and firing
    counts."""

    def __init__(self):
        self.tp = self.fp = self.fn = 0
        self.sq = None  # (n_s,) float64: summed squared error per feature
        self.fires = None  # (n_s,) int64: samples in which the feature fired

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        on, fired = x > SUPPORT_THRESHOLD, x_hat > SUPPORT_THRESHOLD
        self.tp += int((on & fired).sum())
        self.fp += int((~on & fired).sum())
        self.fn += int((on & ~fired).sum())
        sq = (x.double() - x_hat.double()).square_().sum(0).cpu()
        f = fired.sum(0).cpu().to(torch.int64)
        self.sq = sq if self.sq is None else self.sq + sq
        self.fires = f if self.fires is None else self.fires + f

    def columns(self) -> dict:
        """``support_precision``, ``support_recall``, ``support_f1`` (None where undefined),
        ``feature_loss_spread`` (max over features of the per-feature loss, over its median; None when the
        median is 0) and ``features_never_firing`` (features that fired in no scored sample)."""
        prec = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        rec = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if prec == 0 or rec == 0 else None)
        spread, never = None, None
        if self.sq is not None:
            med = float(self.sq.median())
            spread = float(self.sq.max()) / med if med > 0 else None
            never = int((self.fires == 0).sum())
        return {"support_precision": prec, "support_recall": rec, "support_f1": f1,
                "feature_loss_spread": spread, "features_never_firing": never}


class Accumulator:
    """Running mean and standard error of per-sample losses, in float64 (Welford-free: sums of
    float64 values and squares, exact enough for the <= 2^31 samples a row can hold)."""

    def __init__(self):
        self.n = 0
        self.s = 0.0
        self.ss = 0.0

    def add(self, losses: torch.Tensor) -> None:
        l64 = losses.detach().to(torch.float64)
        self.n += l64.numel()
        self.s += float(l64.sum())
        self.ss += float((l64 * l64).sum())

    @property
    def mean(self) -> float:
        return self.s / self.n if self.n else float("nan")

    @property
    def se(self) -> float:
        if self.n < 2:
            return float("nan")
        var = max(self.ss / self.n - self.mean**2, 0.0) * self.n / (self.n - 1)
        return math.sqrt(var / self.n)


def stop_reason(acc: Accumulator, *, target_rel_se: float, min_samples: int, max_samples: int,
                floor: float) -> str | None:
    """The stopping rule: ``target``, ``floor``, ``max_samples`` or None (draw more)."""
    if acc.n < min_samples:
        return "max_samples" if acc.n >= max_samples else None
    if acc.se <= target_rel_se * acc.mean:
        return "target"
    if acc.se <= floor:
        return "floor"
    return "max_samples" if acc.n >= max_samples else None


#: A per-sample loss above this is an error, not a result: its square would overflow the SE's float64 sums.
MAX_SAMPLE_LOSS = 1e100


def sample_losses(x: torch.Tensor, x_hat) -> torch.Tensor:
    """Per-sample losses ``n_s^{-1} ||x - x_hat||^2``; ValueError on a wrong shape or non-finite output."""
    if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape) != tuple(x.shape):
        shape = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
        raise ValueError(f"decode returned shape {shape}, expected {tuple(x.shape)}")
    if not bool(torch.isfinite(x_hat).all()):
        raise ValueError("decode returned non-finite values")
    out = (x - x_hat.to(x.dtype)).square_().sum(-1) / x.shape[-1]
    if not bool(torch.isfinite(out).all()):  # finite outputs whose squared error overflows the working dtype
        out = (x.double() - x_hat.double()).square_().sum(-1) / x.shape[-1]
    if not bool(torch.isfinite(out).all()) or float(out.max()) > MAX_SAMPLE_LOSS:
        raise ValueError(f"decode returned values too large to score (a per-sample loss above {MAX_SAMPLE_LOSS:g})")
    return out


def score(decode, make_input, sampler, *, p: float, target_rel_se: float, min_samples: int,
          max_samples: int, se_floor: float = SE_FLOOR, batch: int) -> dict:
    """Draw evaluation batches from ``sampler`` and score ``decode(make_input(x))`` against ``x``.

    ``make_input(x)`` builds what the decoder's kind sees (z, h, ...) from a batch; the loss is computed
    against ``x`` itself, which the decoder never receives. Returns the row's sampling columns:
    ``n_eval``, ``loss``, ``loss_se``, ``sampling_stop``, ``precision_met``, ``se_floor_abs``,
    ``recovered_frac``, ``recovered_frac_se``, the support metrics of :class:`SupportCounts`, ``eval_time_s``.
    """
    t0 = time.perf_counter()
    acc = Accumulator()
    floor = se_floor * trivial_loss(p)
    recovered_below = RECOVERED_REL * trivial_loss(p)
    n_rec = 0
    support = SupportCounts()
    reason = None
    while reason is None:
        # first min_samples, then double the total: a costly decoder overshoots what it needs by
        # at most 2x; never more than `batch` at once
        b = max(1, min(batch, max_samples - acc.n, max(min_samples - acc.n, acc.n)))
        x = sampler.sample(b)
        with torch.no_grad():
            x_hat = decode(make_input(x))
        losses = sample_losses(x, x_hat)
        acc.add(losses)
        support.add(x, x_hat.to(x.dtype))
        n_rec += int((losses < recovered_below).sum())
        del x_hat
        reason = stop_reason(acc, target_rel_se=target_rel_se, min_samples=min_samples,
                             max_samples=max_samples, floor=floor)
    met = reason in ("target", "floor") or bool(acc.se <= target_rel_se * acc.mean or acc.se <= floor)
    frac = n_rec / acc.n
    return {"n_eval": acc.n, "loss": acc.mean, "loss_se": acc.se, "sampling_stop": reason,
            "precision_met": met, "se_floor_abs": floor, "recovered_frac": frac,
            "recovered_frac_se": math.sqrt(frac * (1.0 - frac) / acc.n), **support.columns(),
            "eval_time_s": time.perf_counter() - t0}
