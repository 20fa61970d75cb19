"""Per-cell theory: bounds and predictions computed by quadrature (no sampling).

Notation (see ``/work/shared/SCIENCE.md``):

* ``n_s`` sparse features, ``n_d`` dense dimensions, ``r = n_d / n_s``, sparsity ``p``.
* Each feature is ``x = c u`` with ``c ~ Bernoulli(p)``, ``u ~ Uniform[0, 1]``: mean ``p/2``, second
  moment ``p/3``, variance ``v = p/3 - p^2/4``.
* The rug's interference on a feature is ``nu = sum_{j != i} R_ij x_j`` with variance
  ``sigma^2 = v (n_s/n_d - 1)`` and mean ``(p/2)(rowsum - 1)``, ``rowsum = n_s/n_d`` if column 0 of the
  Hadamard matrix is among the chosen ones, else ``0``.  The theory treats ``nu`` as Gaussian.
* ``scalar_mmse(p, sigma) = E_y[Var(x | y)]`` for ``y = x + nu``, ``nu ~ N(0, sigma^2)``: the least
  per-feature loss of any elementwise decoder under Gaussian interference.  A known noise mean only
  shifts ``y`` and does not change it.
* Losses are per feature: ``L = n_s^{-1} E ||x - x_hat||^2``.

Quadrature: integrals over ``y`` use a composite 16-point Gauss-Legendre rule whose panels are
``sigma/2`` wide where the integrand has structure (within ``14 sigma`` of ``y = 0`` and ``y = 1``),
with a few wide panels across the flat middle of ``[0, 1]``; the posterior pieces come from
:mod:`decoderbench.model.channel` in float64.  Relative accuracy is ~1e-10 or better for
``1e-8 <= sigma <= 1e2`` (checked against ``scipy.integrate.quad`` in ``tests/test_theory.py``).
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize
from scipy.special import ndtr

from . import channel
from .data import interference_sigma as _interference_sigma, trivial_loss, variance
from .._validate import check_nd, check_ns, check_p, check_r, check_sigma

__all__ = [
    "feature_variance",
    "interference_sigma",
    "interference_mean",
    "scalar_mmse",
    "e2_bound",
    "relu_loss",
    "relu_theory",
    "best_linear",
    "trivial",
    "SEResult",
    "vamp_se",
    "vamp_se_mse",
    "amp_se",
    "amp_se_mse",
    "cell_theory",
    "vamp_se_t",
    "amp_se_t",
    "recovery_threshold",
]

_K_TAIL = 14.0  # integrate y over [-K sigma, 1 + K sigma]; the rest is below exp(-K^2/2) ~ 1e-43
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_RECOVERY_REL = 1e-14  # an SE fixed point below this fraction of v is reported as exact recovery (0.0)


def feature_variance(p: float) -> float:
    """``v = p/3 - p^2/4``, the variance of one feature ``x = c u``."""
    return variance(check_p(p))


def interference_sigma(n_s: int, n_d: int, p: float) -> float:
    """Standard deviation of the rug's interference: ``sqrt(v (n_s/n_d - 1))``."""
    n_s = check_ns(n_s)
    n_d = check_nd(n_d, n_s)
    return _interference_sigma(n_s, n_d, check_p(p))


def interference_mean(n_s: int, n_d: int, p: float, col0: bool) -> float:
    """Mean of the interference, ``(p/2)(rowsum - 1)``.

    ``rowsum = n_s/n_d`` when column 0 of the Hadamard matrix (all ones) is among the chosen columns
    ``S`` (``col0=True``), else ``0`` (the typical case), giving ``-p/2``.
    """
    n_s = check_ns(n_s)
    n_d = check_nd(n_d, n_s)
    p = check_p(p)
    rowsum = n_s / n_d if col0 else 0.0
    return 0.5 * p * (rowsum - 1.0)


def trivial(p: float) -> float:
    """Loss of the zero output, ``E[x^2] = p/3`` (the ``r -> 0`` limit)."""
    return trivial_loss(check_p(p))


def best_linear(p: float, r: float) -> float:
    """Loss of the best rank-``n_d`` linear map on i.i.d. features: ``v (1 - r)``."""
    return feature_variance(p) * (1.0 - check_r(r))


# ----------------------------------------------------------------------------- y quadrature


def _panels(edges: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights over consecutive ``edges``."""
    e = np.asarray(edges, dtype=np.float64)
    lo, hi = e[:-1], e[1:]
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    half = 0.5 * (hi - lo)
    mid = 0.5 * (hi + lo)
    nodes = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    weights = (half[:, None] * _GL_W[None, :]).ravel()
    return nodes, weights


@functools.lru_cache(maxsize=4096)
def _y_rule(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``int dy`` over ``[-K sigma, 1 + K sigma]`` resolving scale ``sigma``."""
    s = sigma
    n_out = int(math.ceil(2 * _K_TAIL))  # panels of width sigma/2 over K sigma
    left = list(np.linspace(-_K_TAIL * s, 0.0, n_out + 1))
    right = list(np.linspace(1.0, 1.0 + _K_TAIL * s, n_out + 1))
    if 2 * _K_TAIL * s >= 1.0:
        n_mid = max(1, int(math.ceil(2.0 / s)))
        mid = list(np.linspace(0.0, 1.0, n_mid + 1))
    else:
        ks = _K_TAIL * s
        mid = (list(np.linspace(0.0, ks, n_out + 1))
               + list(np.linspace(ks, 1.0 - ks, 5))[1:-1]
               + list(np.linspace(1.0 - ks, 1.0, n_out + 1)))
    edges = left[:-1] + mid + right[1:]
    nodes, weights = _panels(edges)
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def _posterior_on_grid(p: float, sigma: float):
    nodes, weights = _y_rule(sigma)
    t = torch.from_numpy(np.array(nodes))
    s = torch.full_like(t, sigma)
    parts = channel._posterior_parts(t, s, p)
    return weights, {k: v.numpy() for k, v in parts.items()}


@functools.lru_cache(maxsize=65536)
def _scalar_mmse(p: float, sigma: float) -> float:
    w, q = _posterior_on_grid(p, sigma)
    # p_Y Var(x|y) = p Z Var_on + p Z P(off|y) E_on^2
    integrand = np.exp(q["log_on"]) * (q["v_on"] + q["p_off"] * q["e_on"] ** 2)
    return float(np.dot(w, integrand))


def scalar_mmse(p: float, sigma: float) -> float:
    """Elementwise MMSE ``E_y[Var(x | y)]`` for ``y = x + nu``, ``nu ~ N(0, sigma^2)``.

    Computed as the expectation of the posterior variance (never as ``E[x^2] - E[E[x|y]^2]``, which
    cancels for small ``sigma``).  Tends to ``v`` as ``sigma -> inf`` and to ``0`` like ``p sigma^2``
    as ``sigma -> 0``.  Accurate to ~1e-10 relative for ``1e-8 <= sigma <= 1e2``.
    """
    return _scalar_mmse(check_p(p), check_sigma(sigma))


@functools.lru_cache(maxsize=4096)
def _e2_bound(p: float, sigma: float) -> float:
    nodes, w = _y_rule(sigma)
    t = torch.from_numpy(np.array(nodes))
    log_z, _, _, v_on = channel._on_moments(t, torch.full_like(t, sigma))
    return float(p * np.dot(w, np.exp(log_z.numpy()) * v_on.numpy()))


def e2_bound(p: float, sigma: float) -> float:
    """Appendix E.2 bound ``p E_y[Var(u | y)]``, ``y = u + nu``, ``nu ~ N(0, sigma^2)``.

    The least loss of a decoder that is told which features are on (it only has to estimate ``u``);
    it is the first of the two non-negative terms of :func:`scalar_mmse`, so never above it.
    """
    return _e2_bound(check_p(p), check_sigma(sigma))


# ----------------------------------------------------------------------------- ReLU theory


def _relu_u_rule(a: float, b: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes/weights over ``u`` in [0, 1], fine (panels sigma/2) within 10 sigma of the kink ``-b/a``."""
    edges = [0.0, 1.0]
    if a > 0 and abs(b) < 1e6 * a:
        u0 = -b / a
        k = 10.0 * sigma
        lo, hi = max(0.0, u0 - k), min(1.0, u0 + k)
        if lo < hi:
            n = max(1, int(math.ceil((hi - lo) / (0.5 * sigma))))
            edges = sorted(set([0.0, 1.0] + list(np.linspace(lo, hi, n + 1))))
    return _panels(edges)


def _relu_parts(x: np.ndarray, a: float, b: float, sigma: float):
    """Per-x loss E_nu[(x - ReLU(a(x + nu) + b))^2] and its (d/da, d/db), nu ~ N(0, sigma^2), a > 0."""
    m = a * x + b
    sd = max(a * sigma, 1e-300)
    k = m / sd
    cdf = ndtr(k)
    kc = np.clip(k, -40.0, 40.0)  # phi(40) underflows anyway; avoids overflow in k * k
    pdf = np.exp(-0.5 * kc * kc) / math.sqrt(2.0 * math.pi)
    g1 = m * cdf + sd * pdf  # E ReLU(z)
    g2 = (m * m + sd * sd) * cdf + m * sd * pdf  # E ReLU(z)^2
    loss = x * x - 2.0 * x * g1 + g2
    d_m = 2.0 * (g1 - x * cdf)
    d_sd = 2.0 * (sd * cdf - x * pdf)
    return loss, x * d_m + sigma * d_sd, d_m


def relu_loss(p: float, sigma: float, a: float, b: float, grad: bool = False):
    """``E[(x - ReLU(a (x + nu) + b))^2]`` with ``nu ~ N(0, sigma^2)``, for ``a > 0``.

    Closed-form Gaussian ReLU moments inside a Gauss-Legendre quadrature over ``u``, plus the off
    term ``(1 - p) E[ReLU(a nu + b)^2]``.  With ``grad=True`` returns ``(loss, [d/da, d/db])``.
    """
    u, w = _relu_u_rule(a, b, sigma)
    l_on, da_on, db_on = _relu_parts(u, a, b, sigma)
    l_off, da_off, db_off = _relu_parts(np.zeros(1), a, b, sigma)
    loss = p * float(np.dot(w, l_on)) + (1.0 - p) * float(l_off[0])
    if not grad:
        return loss
    g = np.array([p * np.dot(w, da_on) + (1.0 - p) * da_off[0], p * np.dot(w, db_on) + (1.0 - p) * db_off[0]])
    return loss, g


@functools.lru_cache(maxsize=4096)
def _relu_theory(p: float, sigma: float) -> tuple[float, float, float]:
    def f(z):  # z = (log a, b): keeps a > 0 without bounds
        a = math.exp(min(max(z[0], -30.0), 10.0))
        loss, g = relu_loss(p, sigma, a, z[1], grad=True)
        return loss, np.array([a * g[0], g[1]])

    best = None
    # Multistart over gain a and threshold theta = -b/a, all in the region where the ReLU is alive
    # (the dead region b << 0 is a flat plateau at loss p/3 that a local method cannot leave).
    for a0 in (0.7, 1.6):
        for theta in (0.0, 0.5 * sigma, 1.5 * sigma, 3.0 * sigma, 0.25, 0.5):
            res = optimize.minimize(f, np.array([math.log(a0), -a0 * theta]), jac=True, method="BFGS",
                                    options={"gtol": 1e-13, "maxiter": 400})
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    a, b = math.exp(float(best.x[0])), float(best.x[1])
    return float(relu_loss(p, sigma, a, b)), a, b


def relu_theory(p: float, sigma: float) -> tuple[float, float, float]:
    """``(loss, a, b)`` minimising ``E[(x - ReLU(a (x + nu) + b))^2]``, ``nu ~ N(0, sigma^2)``.

    For a noise mean ``mu != 0`` the optimum has the same ``a`` and ``b - a mu``.  Minimised by
    BFGS in ``(log a, b)`` with exact gradients from 12 starts spread over gains and thresholds.
    """
    return _relu_theory(check_p(p), check_sigma(sigma))


# ----------------------------------------------------------------------------- state evolution


@dataclass(frozen=True)
class SEResult:
    """Outcome of a state-evolution iteration.

    Attributes:
        mse: the per-feature MSE at the fixed point (0.0 for exact recovery).
        iterations: number of updates performed.
        converged: whether the stopping rule was met before ``max_iter``.
    """

    mse: float
    iterations: int
    converged: bool


def vamp_se(p: float, r: float, tol: float = 1e-10, max_iter: int = 5000) -> SEResult:
    """VAMP state evolution for a row-orthogonal ``W_in`` (the rug's), noiseless measurements.

    With ``E1(g) = scalar_mmse(p, 1/sqrt(g))`` start uninformed (``g1 = 0``, ``E1 = v``) and iterate
    ``g2 = 1/E1 - g1``, ``g1 = g2 r / (1 - r)``, ``E1 = E1(g1)`` until ``|dE1| <= tol E1``.  Returns
    the fixed-point ``E1`` (0.0 when it falls below ``1e-14 v``: exact recovery).
    """
    p = check_p(p)
    r = check_r(r)
    v = feature_variance(p)
    e1, g1 = v, 0.0
    for it in range(1, max_iter + 1):
        g2 = 1.0 / e1 - g1
        g1 = g2 * r / (1.0 - r)
        e_new = _scalar_mmse(p, 1.0 / math.sqrt(g1))
        if e_new <= _RECOVERY_REL * v:
            return SEResult(0.0, it, True)
        if abs(e_new - e1) <= tol * e_new:
            return SEResult(e_new, it, True)
        e1 = e_new
    return SEResult(e1, max_iter, False)


def vamp_se_mse(p: float, r: float) -> float:
    """Convenience: ``vamp_se(p, r).mse``."""
    return vamp_se(p, r).mse


def amp_se(p: float, r: float, tol: float = 1e-10, max_iter: int = 5000) -> SEResult:
    """AMP state evolution (Donoho, Maleki & Montanari 2009) for an i.i.d. Gaussian ``W_in``.

    Entries ``N(0, 1/n_d)``, undersampling ``delta = r``, noiseless, started at ``x = 0``:
    ``tau_0^2 = E[x^2] / r = p / (3 r)``, ``tau_{t+1}^2 = scalar_mmse(p, tau_t) / r``.  Returns the
    per-feature MSE ``scalar_mmse(p, tau_*)`` at the fixed point (0.0 below ``1e-14 v``).
    """
    p = check_p(p)
    r = check_r(r)
    v = feature_variance(p)
    tau2 = p / (3.0 * r)
    mse = v
    for it in range(1, max_iter + 1):
        mse_new = _scalar_mmse(p, math.sqrt(tau2))
        if mse_new <= _RECOVERY_REL * v:
            return SEResult(0.0, it, True)
        if it > 1 and abs(mse_new - mse) <= tol * mse_new:
            return SEResult(mse_new, it, True)
        mse = mse_new
        tau2 = mse / r
    return SEResult(mse, max_iter, False)


def amp_se_mse(p: float, r: float) -> float:
    """Convenience: ``amp_se(p, r).mse``."""
    return amp_se(p, r).mse


# ----------------------------------------------------------------------------- one cell


@functools.lru_cache(maxsize=1024)
def _cell_theory(n_s: int, n_d: int, p: float) -> tuple:
    r = n_d / n_s
    sigma = interference_sigma(n_s, n_d, p)
    relu_loss_, relu_a, relu_b = _relu_theory(p, sigma)
    out = {
        "n_s": n_s,
        "n_d": n_d,
        "p": p,
        "r": r,
        "sigma": sigma,
        "mu": interference_mean(n_s, n_d, p, col0=False),
        "mu_col0": interference_mean(n_s, n_d, p, col0=True),
        "trivial": trivial(p),
        "linear": best_linear(p, r),
        "mmse_elementwise": _scalar_mmse(p, sigma),
        "e2_bound": _e2_bound(p, sigma),
        "relu_theory": relu_loss_,
        "relu_a": relu_a,
        "relu_b": relu_b,
        "vamp_se": vamp_se(p, r).mse,
        "amp_se": amp_se(p, r).mse,
    }
    return tuple(out.items())


def cell_theory(n_s: int, n_d: int, p: float) -> dict:
    """All per-cell theory numbers as plain Python values (cached per ``(n_s, n_d, p)``).

    Keys: ``n_s``, ``n_d``, ``p``, ``r``; ``sigma`` (interference std); ``mu`` (interference mean
    when column 0 is not in ``S``, the typical case) and ``mu_col0`` (when it is); ``trivial``
    (``p/3``); ``linear`` (``v (1 - r)``); ``mmse_elementwise`` (:func:`scalar_mmse` at ``sigma``);
    ``e2_bound``; ``relu_theory``, ``relu_a``, ``relu_b`` (for zero-mean interference: with mean
    ``mu`` the optimal bias is ``relu_b - relu_a * mu``, same loss); ``vamp_se`` (row-orthogonal
    ``W_in``, the rug); ``amp_se`` (i.i.d. Gaussian ``W_in``, for comparison).  Losses are per feature.
    A fresh dict is returned on each call.
    """
    n_s = check_ns(n_s)
    n_d = check_nd(n_d, n_s)
    p = check_p(p)
    return dict(_cell_theory(n_s, n_d, p))


# ----------------------------------------------------------------------------- message passing: t steps, threshold


def vamp_se_t(p: float, r: float, t: int) -> float:
    """The VAMP state-evolution loss after ``t`` iterations (``E1`` of the t-th denoising step, started
    uninformed as in :func:`vamp_se`); the fixed point once ``t`` reaches its iteration count. An unrolled
    ``max_iter = t`` VAMP decoder (elementwise conditional mean at ``t = 1``) is described by it."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be an integer >= 1, got {t!r}")
    return vamp_se(p, r, tol=0.0, max_iter=t).mse


def amp_se_t(p: float, r: float, t: int) -> float:
    """The AMP state-evolution loss after ``t`` iterations (see :func:`amp_se`)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be an integer >= 1, got {t!r}")
    return amp_se(p, r, tol=0.0, max_iter=t).mse


@functools.lru_cache(maxsize=256)
def recovery_threshold(p: float, tol: float = 1e-3) -> float:
    """``r_c(p)``: the least compression ratio ``r`` at which VAMP state evolution (started uninformed,
    :func:`vamp_se`) recovers ``x`` exactly, by bisection on ``r`` to within ``tol``; returns the upper end
    of the final bracket (a recovering ``r``). Recovery is monotone in ``r`` (more measurements, less
    effective noise at every step). Values (tol 1e-3): 0.032 at ``p = 0.01``, 0.104 at 0.045, 0.188 at 0.1,
    0.306 at 0.2."""
    p = check_p(p)
    if not (isinstance(tol, float) and 0.0 < tol < 0.5):
        raise ValueError(f"tol must be a float in (0, 0.5), got {tol!r}")
    if p >= 1.0:
        return 1.0

    def recovers(r: float) -> bool:
        res = vamp_se(p, r, tol=1e-12, max_iter=20000)
        return res.mse == 0.0

    lo, hi = 0.0, 1.0 - 1e-9
    # bracket: recovery needs r > p at least (fewer measurements than nonzeros cannot determine x)
    lo = min(p, 0.5) * 0.5
    if recovers(lo):
        lo = 0.0
    if not recovers(hi):
        return 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if recovers(mid):
            hi = mid
        else:
            lo = mid
    return hi


class _CallableModule(type(sys.modules[__name__])):
    """``decoderbench.model.theory`` is this module and also the API's ``theory(n_s, r=, p=)`` (a function cannot share
    the package attribute with the submodule of the same name: importing the submodule replaces it)."""

    def __call__(self, n_s, r=None, n_d=None, p=0.045, exact: bool = False, seed: int = 0) -> dict:
        from ..api import theory

        return theory(n_s, r=r, n_d=n_d, p=p, exact=exact, seed=seed)


sys.modules[__name__].__class__ = _CallableModule
