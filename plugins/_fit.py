"""Exact least-squares fitting for the built-in scalar decoders (linear, activations, topk).

Every built-in elementwise decoder with ``a > 0`` has the form ``f(z) = (a z + b) 1[z > t]``: affine
above a threshold ``t`` in z-space, zero below it (relu: ``a t + b = 0``; jumprelu / gated:
``a t + b >= 0``; trec / prolu: ``b = 0``, ``t >= 0``). Its loss summed over pooled scalar pairs is::

    N L = sum x^2 - 2 (a Sxz + b Sx) + a^2 Szz + 2 a b Sz + b^2 S0

where the ``S`` are sums over the active pairs ``z > t``. Sorting the pairs by ``z`` once turns every
``S`` into a tail sum read off a cumulative array, so the loss of any ``(a, b, t)`` costs one
``searchsorted``. For a fixed active set the best ``(a, b)`` is closed-form; the threshold is then
scanned over every breakpoint (every training ``z``), which finds the global optimum over ``t``: no
starting point, no local minima. ``relu`` is refined continuously between breakpoints (its loss is
continuous in ``t``).

The restriction ``a > 0`` (the output grows with ``z``) is the only assumption: ``x >= 0`` and ``E[x | z]``
is increasing in ``z``, so a decreasing branch never helps.

Pairs come from ``TrainingSet`` only (the training stream); the harness scores on another stream.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import minimize_scalar

from decoderbench.contract.options import Options, PosNumber

#: Default number of pooled scalar pairs (z_i, x_i) a fit uses.
DEFAULT_PAIRS = 2**21
#: Fewest training samples drawn (pairs from one sample share its interference), unless that would
#: pool more than MAX_PAIRS pairs: at n_s = 2^20 a fit draws 16 samples (2^24 pairs, 128 MB per
#: float64 array), not 32.
MIN_SAMPLES = 32
MAX_PAIRS = 2**24
#: Fewest active pairs a candidate threshold may leave (a fit on fewer is noise).
MIN_ACTIVE = 16


class FitOptions(Options):
    """The option of the decoders fitted on pooled scalar pairs."""

    fit_pairs: PosNumber = Field(DEFAULT_PAIRS, description="scalar pairs (z_i, x_i) the fit pools")


def gaussian_predictions(ctx) -> dict:
    """The Gaussian-interference theory at the encoder's own ``sigma`` (``ctx.sigma``): ``relu`` (loss),
    ``relu_a``, ``relu_b`` (for mean-zero interference), ``mmse`` (elementwise) and ``linear`` (the best
    ``a z + b``: ``v sigma^2 / (v + sigma^2)``, which is ``v (1 - r)`` on the rug). On the rug these are
    the cell's theory columns (``ctx.theory()``); another encoder gets them at its own ``sigma``."""
    from decoderbench.model import theory

    sigma = float(ctx.sigma)
    v = theory.feature_variance(ctx.p)
    th = ctx.theory()
    if abs(sigma - th["sigma"]) <= 1e-12 * th["sigma"]:
        relu, a, b, mmse = th["relu_theory"], th["relu_a"], th["relu_b"], th["mmse_elementwise"]
    else:
        (relu, a, b), mmse = theory.relu_theory(ctx.p, sigma), theory.scalar_mmse(ctx.p, sigma)
    return {"relu": relu, "relu_a": a, "relu_b": b, "mmse": mmse, "linear": v * sigma**2 / (v + sigma**2)}


def n_fit_samples(ctx, default_pairs: int = DEFAULT_PAIRS) -> int:
    """Training samples to draw: ``ctx.options['fit_pairs']`` (or the default) pairs over ``n_s``."""
    pairs = ctx.options.get("fit_pairs", default_pairs)
    if isinstance(pairs, bool) or not isinstance(pairs, (int, float)) or not math.isfinite(pairs) or pairs < 1:
        raise ValueError(f"options['fit_pairs'] must be a positive number of scalar pairs, got {pairs!r}")
    return max(min(MIN_SAMPLES, max(1, MAX_PAIRS // ctx.n_s)), math.ceil(float(pairs) / ctx.n_s))


def training_matrix(train, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` fresh training samples as float64 arrays ``(z, x)`` of shape (n_samples, n_s)."""
    inp, x = train.pairs(n_samples, batch=min(1024, n_samples))
    return (inp.detach().to("cpu", torch.float64).numpy(), x.detach().to("cpu", torch.float64).numpy())


class ThresholdFit:
    """Sorted pooled pairs with tail sums: the exact training loss of ``(a z + b) 1[z > t]``.

    ``n_total`` pairs are averaged over (default: those given); ``xx_rest`` is the sum of ``x^2`` of
    pairs left out that are never active (e.g. what a TopK discards). ``keep < 1`` scans only the
    ``keep`` fraction of pairs with the largest ``z`` (a partition, not a sort, sets the rest aside):
    losses stay exact for every threshold ``t >= z_floor``, the rest enter through their sum of
    ``x^2``. ``fit_threshold`` widens the scan when an optimum lands near its floor. ``presorted``:
    ``z`` is already ascending (skips the sort).
    """

    def __init__(self, z: np.ndarray, x: np.ndarray, keep: float = 1.0, n_total: int | None = None,
                 xx_rest: float = 0.0, presorted: bool = False):
        z = np.asarray(z, dtype=np.float64).ravel()
        x = np.asarray(x, dtype=np.float64).ravel()
        if z.shape != x.shape or z.size == 0:
            raise ValueError("ThresholdFit needs equal, non-empty z and x")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep!r}")
        self.n_total = int(n_total) if n_total is not None else z.size
        m = max(min(z.size, 4 * MIN_ACTIVE), int(math.ceil(keep * z.size)))
        self.z_floor = -np.inf  # every pair at or below z_floor is left out of the scan
        if m < z.size:  # keep the m largest z: a threshold above the rest never activates them
            part = np.argpartition(z, z.size - m)
            low, top = part[: z.size - m], part[z.size - m:]
            self.z_floor = float(z[low].max())
            xx_rest += float(np.dot(x[low], x[low]))
            z, x = z[top], x[top]
        if presorted and m >= z.size:  # z already ascending
            self.z, xs = z, x
        else:
            order = np.argsort(z)
            self.z, xs = z[order], x[order]
        self.n = z.size
        self.xx = float(np.dot(xs, xs)) + xx_rest

        def tail(v):  # tail[i] = sum_{j >= i} v[j], tail[n] = 0
            out = np.zeros(v.size + 1)
            out[:-1] = np.cumsum(v[::-1])[::-1]
            return out

        self.s0 = np.arange(self.n, -1, -1, dtype=np.float64)
        self.sz = tail(self.z)
        self.szz = tail(self.z * self.z)
        self.sx = tail(xs)
        self.sxz = tail(xs * self.z)
        self._results: dict[str, dict] = {}

    def result(self, method: str) -> dict:
        """``getattr(self, method)()`` (``relu``, ``jump`` or ``scaled`` at their defaults), computed once per
        fitter: a copy of the stored result."""
        if method not in self._results:
            self._results[method] = getattr(self, method)()
        return dict(self._results[method])

    def near_floor(self, t: float) -> bool:
        """Whether threshold ``t`` lies in the lowest 10% of the scanned pairs (then scan more)."""
        return np.isfinite(self.z_floor) and t <= self.z[int(0.1 * (self.n - 1))]

    # -- the loss of given parameters -------------------------------------------------------------
    def _idx(self, t):
        return np.searchsorted(self.z, t, side="right")  # first active index: z > t

    def loss(self, a: float, b: float, t: float) -> float:
        """Mean loss of ``(a z + b) 1[z > t]`` over the pairs (``t = -inf`` for an affine map)."""
        i = self._idx(t)
        q = (self.xx - 2 * (a * self.sxz[i] + b * self.sx[i]) + a * a * self.szz[i]
             + 2 * a * b * self.sz[i] + b * b * self.s0[i])
        return float(q) / self.n_total

    # -- relu: f = a (z - t)^+ ---------------------------------------------------------------------
    def _relu_gain(self, t, i=None):
        """``U^2 / V`` (the loss reduction) and ``a = U / V`` of the best relu with kink at ``t``."""
        if i is None:
            i = self._idx(t)
        u = self.sxz[i] - t * self.sx[i]
        v = self.szz[i] - 2 * t * self.sz[i] + t * t * self.s0[i]
        ok = (u > 0) & (v > 0) & (self.s0[i] >= MIN_ACTIVE)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(ok, u * u / np.where(v > 0, v, 1.0), -np.inf)
            a = np.where(ok, u / np.where(v > 0, v, 1.0), np.nan)
        return gain, a

    def relu(self, t_min: float = -np.inf) -> dict:
        """Global least-squares ``a (z - t)^+`` (``a > 0``, ``t >= t_min``): ``{a, b, t, loss}``."""
        t_min = max(t_min, self.z_floor)
        # the candidates z >= t_min are a tail of the sorted z: slices, not index arrays (no gathers)
        lo = int(np.searchsorted(self.z, t_min, side="left")) if np.isfinite(t_min) else 0
        if lo >= self.n:
            return {"a": 0.0, "b": 0.0, "t": float(t_min), "loss": self.xx / self.n_total}
        # kink exactly at a breakpoint: active = pairs strictly above it
        gain, _ = self._relu_gain(self.z[lo:], slice(lo + 1, self.n + 1))
        k = int(np.argmax(gain))
        if not np.isfinite(gain[k]):
            return {"a": 0.0, "b": 0.0, "t": float(self.z[-1]), "loss": self.xx / self.n_total}
        j = lo + k
        lo = self.z[max(j - 64, 0)]
        hi = self.z[min(j + 64, self.n - 1)]
        if np.isfinite(t_min):
            lo = max(lo, t_min)
        best_t, best_gain = float(self.z[j]), float(gain[k])
        if hi > lo:  # the loss is continuous and smooth between breakpoints: refine t
            res = minimize_scalar(lambda t: -float(self._relu_gain(t)[0]), bounds=(lo, hi), method="bounded",
                                  options={"xatol": 1e-9 * max(1.0, abs(best_t))})
            if res.success and -res.fun > best_gain:
                best_t, best_gain = float(res.x), float(-res.fun)
        g, a = self._relu_gain(best_t)
        a = float(a)
        return {"a": a, "b": -a * best_t, "t": best_t, "loss": (self.xx - float(g)) / self.n_total}

    # -- affine above a free threshold: jumprelu / gated --------------------------------------------
    def jump(self) -> dict:
        """Global least squares ``(a z + b) 1[z > t]`` with ``a > 0`` and ``a t + b >= 0``.

        For each active set (one per breakpoint) the unconstrained 2x2 least squares is taken where it
        meets the constraint; where it does not, the constrained optimum lies on ``a t + b = 0``, which
        is the relu family, fitted separately. Returns ``{a, b, t, theta, loss}`` with ``theta = a t + b``.
        """
        relu = self.result("relu")
        best = {**relu, "theta": 0.0}
        last = max(1, self.n - MIN_ACTIVE + 1)  # active = [i, n), i in [1, last): at least MIN_ACTIVE pairs
        i, im1 = slice(1, last), slice(0, last - 1)  # (and i - 1)
        s0, sz, szz, sx, sxz = self.s0[i], self.sz[i], self.szz[i], self.sx[i], self.sxz[i]
        # (active = all scanned pairs, i = 0, needs t in [z_floor, z[0]); it is left out: near_floor)
        det = s0 * szz - sz * sz
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (s0 * sxz - sz * sx) / det
            b = (szz * sx - sz * sxz) / det
        t = 0.5 * (self.z[im1] + self.z[i])  # any t in [z[i-1], z[i]) gives this active set
        gain = a * sxz + b * sx  # at the least-squares optimum the loss falls by a Sxz + b Sx
        ok = (det > 1e-12 * s0 * szz) & (a > 0) & (a * t + b >= 0) & (self.z[i] > self.z[im1])
        gain = np.where(ok, gain, -np.inf)
        if gain.size:
            k = int(np.argmax(gain))
            if np.isfinite(gain[k]) and (self.xx - gain[k]) / self.n_total < best["loss"]:
                best = {"a": float(a[k]), "b": float(b[k]), "t": float(t[k]), "theta": float(a[k] * t[k] + b[k]),
                        "loss": float((self.xx - gain[k]) / self.n_total)}
        return best

    # -- bias-free with a threshold: trec / prolu ---------------------------------------------------
    def scaled(self) -> dict:
        """Global least squares ``a z 1[z > t]`` with ``a > 0``, ``t >= 0``: ``{a, t, loss}``."""
        i0 = int(self._idx(0.0))
        i = np.arange(i0, self.n - MIN_ACTIVE + 1)
        if i.size == 0:
            return {"a": 0.0, "t": 0.0, "loss": self.xx / self.n_total}
        sxz, szz = self.sxz[i], self.szz[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = sxz / szz
        gain = np.where((szz > 0) & (sxz > 0), sxz * a, -np.inf)
        k = int(np.argmax(gain))
        if not np.isfinite(gain[k]):
            return {"a": 0.0, "t": 0.0, "loss": self.xx / self.n_total}
        j = int(i[k])
        t = max(0.0, self.z_floor) if j == i0 else 0.5 * (self.z[j - 1] + self.z[j])
        return {"a": float(a[k]), "t": float(t), "loss": float((self.xx - gain[k]) / self.n_total)}


def affine_fit(z: np.ndarray, x: np.ndarray) -> dict:
    """Least squares ``a z + b`` over all pairs (centred sums, float64): ``{a, b, loss}``."""
    z = np.asarray(z, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    zc, xc = z - z.mean(), x - x.mean()
    var = float(np.dot(zc, zc))
    a = float(np.dot(zc, xc)) / var if var > 0 else 0.0
    b = float(x.mean() - a * z.mean())
    resid = xc - a * zc
    return {"a": a, "b": b, "loss": float(np.dot(resid, resid)) / z.size}


def initial_keep(p: float) -> float:
    """The fraction of largest ``z`` a threshold scan starts with: ``min(1, max(0.1, 6 p))`` (the
    optimal thresholds leave about ``p`` to ``2 p`` of the pairs active)."""
    return min(1.0, max(0.1, 6.0 * p))


def fit_threshold(z: np.ndarray, x: np.ndarray, method: str, keep: float = 0.25, **kw) -> tuple[dict, ThresholdFit]:
    """Run ``ThresholdFit(z, x, keep).<method>(**kw)``, widening the scan (x4) while the optimum's
    threshold sits near the scan's floor; returns ``(result, fitter)``."""
    return _widening(lambda k: ThresholdFit(z, x, keep=k), keep, lambda f: getattr(f, method)(**kw))


def _widening(fitter_at, keep: float, solve) -> tuple[dict, ThresholdFit]:
    """``solve(fitter_at(keep))``, the scan widened (``keep`` x4) while the optimum's threshold sits near its
    floor; the result gains ``scanned`` (the pairs scanned). Returns ``(result, fitter)``."""
    while True:
        f = fitter_at(keep)
        res = solve(f)
        if keep >= 1 or not f.near_floor(res["t"]):
            res["scanned"] = f.n
            return res, f
        keep = min(1.0, 4 * keep)


#: Pools of at most this many pairs are shared (``fit_pooled``): a larger fitter (about 56 bytes per scanned pair)
#: is not kept alive between decoders; from n_s = 2^18 on the fits draw 2^23-2^24 pairs and are a small part of a
#: cell's time.
SHARE_MAX_PAIRS = 2**22
#: The threshold fitter of the last training stream fitted in this process: ``(key, keep, ThresholdFit)``.
#: relu, jumprelu, gated, trec and prolu draw the same training pairs on a cell (the training stream is the
#: cell's and the seed's, not the decoder's: ``TrainingSet``), so run one after another in one process they
#: share one draw, one sort and one scan per method (jumprelu = gated, trec = prolu). The result is the one
#: ``fit_threshold`` gives on a fresh draw, bit for bit: the fit is a deterministic function of the pairs.
#: One tuple, read and replaced whole (atomic under the GIL: threads fitting other cells never mix entries).
_SHARED: tuple = (None, None, None)


def _stream_key(train, n_samples: int):
    """What the first ``n_samples`` pairs of ``train`` are a function of, or None where that cannot be said
    (a stream already drawn from, a subclass of ``TrainingSet`` that may draw otherwise, an encoder other than
    the rug, whose construction the key would not pin)."""
    from decoderbench.contract.decoder import TrainingSet, harness_encoder
    from decoderbench.model.encoders import PersianRug

    if type(train) is not TrainingSet or train.n_drawn != 0:
        return None
    enc, s = harness_encoder(train.ctx.encoder), train.sampler
    if type(enc) is not PersianRug or n_samples * enc.n_s > SHARE_MAX_PAIRS:
        return None
    return (enc.n_s, enc.n_d, enc.seed, str(enc.device), str(enc.dtype), s.n_s, s.p, s.seed, s.purpose,
            str(s.device), str(s.dtype), train.input_kind, int(n_samples))


def fit_pooled(ctx, train, method: str) -> dict:
    """``fit_threshold`` on ``n_fit_samples(ctx)`` fresh training samples of ``train`` (the scan starting at
    ``initial_keep(p)``), sharing the fitter with the decoders fitted before on the same stream in this process
    (``_SHARED``). Returns the result with ``scanned`` and ``fit_pairs``."""
    n = n_fit_samples(ctx)
    key = _stream_key(train, n)
    data = []  # the pairs, drawn when a fitter is not shared

    def fitter_at(keep):
        global _SHARED
        entry = _SHARED
        if key is not None and entry[0] == key and entry[1] == keep:
            return entry[2]
        if not data:
            data.extend(training_matrix(train, n))
        f = ThresholdFit(*data, keep=keep)
        _SHARED = (key, keep, f) if key is not None else (None, None, None)
        return f

    res, _ = _widening(fitter_at, initial_keep(ctx.p), lambda f: f.result(method))
    res["fit_pairs"] = n * ctx.n_s
    return res

