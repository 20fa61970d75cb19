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

The estimator: a control variate. The per-sample loss ``L`` of a sample ``x`` correlates with two statistics of
``x`` whose means the data law fixes (``model/data.py``: ``x_i = c_i u_i``, ``c_i ~ Bernoulli(p)``, ``u_i ~ U[0, 1]``):

* ``K = |supp x|`` (the number of active features), ``E K = p n_s``;
* ``Q = |x|^2``, ``E Q = n_s p/3`` (``n_s`` times the trivial loss).

With ``C_i = (K_i - E K, Q_i - E Q)`` (centred at the *known* means) the loss column is a cross-fitted
regression (control-variate) estimate. The scored samples are split by their index ``i`` (counted over the whole
row, not per batch) into two halves, ``A`` (even ``i``) and ``B`` (odd ``i``); in each half the least-squares
slope of ``L`` on ``C`` is fitted, and each sample's controls are weighted by the slope of the *other* half::

    beta_A = S_CC,A^{-1} S_CL,A         (S: scatter matrices about the half's sample means; likewise beta_B)
    r_i = L_i - beta_B^T C_i  for i in A,   r_i = L_i - beta_A^T C_i  for i in B
    loss = mean(r),   loss_se = sd(r) / sqrt(n)      (sd with n - 1)

Since ``E C = 0`` exactly and ``beta_B`` is independent of the samples of ``A`` (and the other way round),
``E r_i = E L``: ``loss`` is an unbiased estimate of the expected per-sample loss, as the plain mean is, for any
``beta`` and any ``n`` (fitting ``beta`` on the same samples, the plain regression estimator, would leave a bias
of order ``1/n``: measured on a skewed synthetic law, 0.09 SE at n = 256). Its variance is ``Var(L - beta^T C) /
n`` up to a relative ``O(1/n)`` (the slopes' own error, which the residuals' spread includes), ``(1 - R^2)
Var(L) / n`` with ``R^2`` the squared multiple correlation of ``L`` with ``C``: measured at n_s 4096, r 0.1,
p 0.045, about 0.5 of the plain mean's for AMP and VAMP (near their recovery threshold the samples with more
active features are the ones not recovered) and about 0.12 for relu, so a row needs that fraction of the
samples for the same standard error. The stopping rule uses this estimate and its standard error.

A control that is constant over a half's samples (up to rounding), or collinear with the one before it, gets
slope 0 there; with every slope 0 the estimate *is* the plain mean and its standard error. A negative estimate
(possible only for a loss within a few standard errors of 0) is set to 0. The plain mean and its standard error
stay in the row (``loss_mean``, ``loss_mean_se``), and ``loss_estimator`` says which one ``loss`` is
(``control_variate``, or ``mean`` where the sampler is not :class:`decoderbench.model.data.SparseSampler`, whose law
gives the known means). The known means are those of the continuous law; torch draws ``u`` and ``c`` on a grid
of ``2^-24`` (float32), which moves ``E K`` and ``E Q`` by about ``1e-7`` relative, a shift in ``loss`` some five
orders of magnitude below its standard error. The sums are float64 (:class:`Accumulator`); they depend on the
batch size only through the order of floating-point additions.
"""

from __future__ import annotations

import math
import time

import torch

from ..model.data import SparseSampler, trivial_loss  # noqa: F401 (trivial_loss re-exported: scoring.trivial_loss)

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


#: Use the control-variate estimator where the sampler's law is known (see the module docstring). False scores
#: the plain mean: only to measure what the control variate saves (the row's key does not say which; its
#: ``loss_estimator`` column does).
CONTROL_VARIATE = True
#: A control is dropped when its scatter about its sample mean is below this fraction of its scatter about its
#: known mean (constant up to rounding), or when regressing it on the controls kept before it leaves below this
#: fraction of its scatter (collinear).
CONTROL_TOL = 1e-9


def control_means(n_s: int, p: float) -> tuple[float, float]:
    """The known means of the controls ``K = |supp x|`` and ``Q = |x|^2`` under the data law: ``(p n_s, n_s p/3)``."""
    return (p * n_s, n_s * trivial_loss(p))


def controls(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample controls of a batch ``x`` (B, n_s), float64: ``K = |supp x|`` and ``Q = |x|^2``."""
    return (x != 0).sum(-1).to(torch.float64), x.to(torch.float64).square().sum(-1)


class _Half:
    """Float64 sums of one half's samples: count, sums of ``L``, ``L^2``, ``C``, ``C C^T`` and ``L C``."""

    def __init__(self, d: int):
        self.n, self.sl, self.sll = 0, 0.0, 0.0
        self.sc = [0.0] * d
        self.scc = [[0.0] * d for _ in range(d)]
        self.slc = [0.0] * d

    def add(self, l64: torch.Tensor, c: torch.Tensor) -> None:
        d = len(self.sc)
        sc, scc, slc = c.sum(0).tolist(), (c.T @ c).tolist(), (l64 @ c).tolist()
        self.n += l64.numel()
        self.sl += float(l64.sum())
        self.sll += float((l64 * l64).sum())
        for j in range(d):
            self.sc[j] += sc[j]
            self.slc[j] += slc[j]
            for k in range(d):
                self.scc[j][k] += scc[j][k]

    def slope(self) -> list[float]:
        """The least-squares slope of ``L`` on the controls within this half; 0 for a control that is constant
        here (its scatter below ``CONTROL_TOL`` of its sum of squares) or collinear with those before it, and
        for every control while the half has too few samples (fewer than the controls kept + 3)."""
        d, n = len(self.sc), self.n
        beta = [0.0] * d
        if n < 3:
            return beta
        lbar = self.sl / n
        cbar = [v / n for v in self.sc]
        S = [[self.scc[j][k] - n * cbar[j] * cbar[k] for k in range(d)] for j in range(d)]
        kept = []
        for j in range(d):
            if n - 2 - len(kept) < 1:
                break
            if not S[j][j] > CONTROL_TOL * self.scc[j][j]:
                continue
            if kept:
                sub = torch.tensor([[S[a][c] for c in kept] for a in kept], dtype=torch.float64)
                col = torch.tensor([S[a][j] for a in kept], dtype=torch.float64)
                if not S[j][j] - float(col @ torch.linalg.solve(sub, col)) > CONTROL_TOL * S[j][j]:
                    continue
            kept.append(j)
        if kept:
            sub = torch.tensor([[S[a][c] for c in kept] for a in kept], dtype=torch.float64)
            rhs = torch.tensor([self.slc[a] - n * lbar * cbar[a] for a in kept], dtype=torch.float64)
            for a, v in zip(kept, torch.linalg.solve(sub, rhs).tolist()):
                beta[a] = v
        return beta


class Accumulator:
    """Running estimate of the expected per-sample loss and its standard error, from float64 sums.

    ``Accumulator()`` keeps ``n``, the sums of the losses and of their squares: ``mean`` and ``se`` are the plain
    sample mean and its standard error ``sqrt(s^2 / n)``. ``Accumulator(control_means=(E K, E Q))`` also keeps,
    per half of the samples (even and odd sample index, counted over every batch added), the sums of
    ``C = (K - E K, Q - E Q)`` (centred at the known means, so no large sums cancel), ``C C^T`` and ``L C`` for
    the controls given to :meth:`add`: ``estimate`` and ``estimate_se`` are then the cross-fitted
    control-variate estimate and its standard error (the module docstring's formula), and ``estimator`` says
    ``control_variate``. Without controls (or with every slope 0) ``estimate`` and ``estimate_se`` are ``mean``
    and ``se``. Plain sums, no Welford update: exact enough in float64 for the <= 2^40 samples a row can hold,
    and the same sums whatever the batches (up to the order of additions)."""

    def __init__(self, control_means=None):
        self.n = 0
        self.s = 0.0
        self.ss = 0.0
        self.means = None if control_means is None else tuple(float(m) for m in control_means)
        self.halves = None if self.means is None else (_Half(len(self.means)), _Half(len(self.means)))

    def add(self, losses: torch.Tensor, controls=None) -> None:
        """Add a batch of per-sample losses and, when the accumulator has control means, their controls (a
        sequence of per-sample tensors, one per control, as :func:`controls` returns)."""
        l64 = losses.detach().to(torch.float64).reshape(-1)
        if self.means is not None:
            if controls is None or len(controls) != len(self.means):
                raise ValueError(f"this accumulator needs {len(self.means)} controls per batch")
            c = torch.stack([torch.as_tensor(ci).detach().to(device=l64.device, dtype=torch.float64).reshape(-1) - m
                             for ci, m in zip(controls, self.means)], 1)  # (B, d)
            if c.shape[0] != l64.numel():
                raise ValueError(f"{c.shape[0]} controls for {l64.numel()} losses")
            first = self.n % 2  # the batch's first sample has index self.n: it belongs to half self.n % 2
            self.halves[first].add(l64[0::2], c[0::2])
            self.halves[1 - first].add(l64[1::2], c[1::2])
        self.n += l64.numel()
        self.s += float(l64.sum())
        self.ss += float((l64 * l64).sum())

    @property
    def mean(self) -> float:
        """The plain sample mean of the losses."""
        return self.s / self.n if self.n else float("nan")

    @property
    def se(self) -> float:
        """The plain mean's standard error ``sqrt(s^2 / n)``, ``s^2`` the sample variance (n - 1)."""
        if self.n < 2:
            return float("nan")
        var = max(self.ss / self.n - self.mean**2, 0.0) * self.n / (self.n - 1)
        return math.sqrt(var / self.n)

    def _residual_sums(self):
        """``(sum r, sum r^2)`` of the cross-fitted residuals, or None when every slope is 0 (the plain mean)."""
        if self.halves is None or self.n < 2:
            return None
        slopes = [h.slope() for h in self.halves]
        if not any(v != 0.0 for b in slopes for v in b):
            return None
        sr = srr = 0.0
        for h, beta in zip(self.halves, reversed(slopes)):  # each half's controls, the other half's slope
            d = len(beta)
            sr += h.sl - sum(beta[j] * h.sc[j] for j in range(d))
            srr += (h.sll - 2.0 * sum(beta[j] * h.slc[j] for j in range(d))
                    + sum(beta[j] * h.scc[j][k] * beta[k] for j in range(d) for k in range(d)))
        return sr, srr

    @property
    def estimator(self) -> str:
        """``control_variate`` when :attr:`estimate` uses the controls, else ``mean``."""
        return "mean" if self._residual_sums() is None else "control_variate"

    @property
    def estimate(self) -> float:
        """The cross-fitted control-variate estimate of the expected loss, ``mean(r)`` (else the plain mean).

        Never below 0: the expected loss is not, and a negative estimate (possible only when the loss is within
        a few standard errors of 0, a row that stops on the floor or the cap) is set to 0, which is nearer the
        truth whatever it is."""
        sums = self._residual_sums()
        if sums is None:
            return self.mean
        return max(sums[0] / self.n, 0.0)

    @property
    def estimate_se(self) -> float:
        """Its standard error, ``sd(r) / sqrt(n)`` (else the plain mean's)."""
        sums = self._residual_sums()
        if sums is None:
            return self.se
        sr, srr = sums
        var = max(srr - sr * sr / self.n, 0.0) / (self.n - 1)
        return math.sqrt(var / self.n)


def stop_reason(acc: Accumulator, *, target_rel_se: float, min_samples: int, max_samples: int,
                floor: float) -> str | None:
    """The stopping rule: ``target``, ``floor``, ``max_samples`` or None (draw more), on the accumulator's
    ``estimate`` and ``estimate_se`` (the control-variate ones where it has controls)."""
    if acc.n < min_samples:
        return "max_samples" if acc.n >= max_samples else None
    est, se = acc.estimate, acc.estimate_se
    if se <= target_rel_se * est:
        return "target"
    if se <= floor:
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
          max_samples: int, se_floor: float = SE_FLOOR, batch: int, control_variate: bool | None = None) -> dict:
    """Draw evaluation batches from ``sampler`` and score ``decode(make_input(x))`` against ``x``.

    ``make_input(x)`` builds what the decoder's kind sees (z, h, ...) from a batch; the loss is computed
    against ``x`` itself, which the decoder never receives. Returns the row's sampling columns:
    ``n_eval``, ``loss``, ``loss_se`` (the control-variate estimate and its standard error where ``sampler`` is a
    :class:`decoderbench.model.data.SparseSampler` of this ``p``, whose law fixes the controls' means, and
    ``control_variate`` (default :data:`CONTROL_VARIATE`) is true; else the plain mean), ``loss_mean``,
    ``loss_mean_se`` (the plain mean and its standard error), ``loss_estimator``, ``sampling_stop``,
    ``precision_met``, ``se_floor_abs``, ``recovered_frac``, ``recovered_frac_se``, the support metrics of
    :class:`SupportCounts`, ``eval_time_s``.
    """
    t0 = time.perf_counter()
    if control_variate is None:
        control_variate = CONTROL_VARIATE
    known = control_variate and isinstance(sampler, SparseSampler) and sampler.p == p
    acc = Accumulator(control_means(sampler.n_s, p) if known else None)
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
        acc.add(losses, controls(x) if known else None)
        support.add(x, x_hat.to(x.dtype))
        n_rec += int((losses < recovered_below).sum())
        del x_hat
        reason = stop_reason(acc, target_rel_se=target_rel_se, min_samples=min_samples,
                             max_samples=max_samples, floor=floor)
    est, se = acc.estimate, acc.estimate_se
    met = reason in ("target", "floor") or bool(se <= target_rel_se * est or se <= floor)
    frac = n_rec / acc.n
    return {"n_eval": acc.n, "loss": est, "loss_se": se, "loss_mean": acc.mean, "loss_mean_se": acc.se,
            "loss_estimator": acc.estimator, "sampling_stop": reason,
            "precision_met": met, "se_floor_abs": floor, "recovered_frac": frac,
            "recovered_frac_se": math.sqrt(frac * (1.0 - frac) / acc.n), **support.columns(),
            "eval_time_s": time.perf_counter() - t0}
