"""The scalar channel ``y = x + nu`` and its exact posterior moments.

Notation (SCIENCE.md): ``x = c u`` with ``c ~ Bernoulli(p)`` and ``u ~ Uniform[0, 1]``; the noise is
``nu ~ N(mu, sigma^2)``, independent of ``x``.  With ``t = y - mu``::

    alpha = -t / sigma,   beta = (1 - t) / sigma,   Z = Phi(beta) - Phi(alpha)
    E[u | t, on]   = t + sigma (phi(alpha) - phi(beta)) / Z
    Var[u | t, on] = sigma^2 [1 + (alpha phi(alpha) - beta phi(beta)) / Z - ((phi(alpha) - phi(beta)) / Z)^2]
    P(on | t)      = p Z / (p Z + (1 - p) phi(t / sigma) / sigma)
    E[x | t]       = P(on | t) E[u | t, on]
    Var[x | t]     = P(on | t) (Var[u | t, on] + P(off | t) E[u | t, on]^2)

``Z`` is also the density of ``t`` given that the feature is on, and ``phi(t / sigma) / sigma`` its
density given that it is off.

How it is computed (all of it in float64, whatever the input dtype; the results are cast back):

* Given ``on``, ``u`` is a normal ``N(t, sigma^2)`` truncated to ``[0, 1]``.  Reflecting
  ``u -> 1 - u``, ``t -> 1 - t`` when ``t > 1/2`` (``Z`` is unchanged) leaves ``t <= 1/2``, so the
  standardised interval ``[a, b] = [-t, 1 - t] / sigma`` has ``b >= |a|`` and ``b > 0``.
* Writing ``w = a + v``, ``v`` in ``[0, L]`` (``L = 1/sigma``) has density proportional to
  ``exp(-a v - v^2/2)``; ``E[u] = sigma E[v]`` and ``Var[u] = sigma^2 Var[v]`` in the reflected frame.
* For ``a < A_SWITCH`` the textbook truncated-normal formulas are used, with the mass
  ``log Z`` from ``log_ndtr`` (upper tail when ``a > 0``, ``log1p(-Phi(a) - Phi(-b))`` otherwise) and
  the variance in the form ``1 - m phi(a)/Z - (L - m) phi(b)/Z`` (``m = E[v]``), which cancels far less
  than ``1 + (a phi(a) - b phi(b))/Z - (...)^2``.
* For ``a >= A_SWITCH`` (``t`` many ``sigma`` below 0) those formulas cancel catastrophically (the
  mean is ``t + sigma a (1 + O(1/a^2))``).  There the moments ``M_k = int_0^L v^k exp(-a v - v^2/2) dv``
  are built from the one-sided moments ``int_0^inf v^k exp(-x v - v^2/2) dv = k! / (T_1 ... T_{k+1})``,
  where ``T_k = x + k / T_{k+1}`` is Laplace's continued fraction of the Mills ratio
  (``R(x) = 1/T_1``), minus the shifted tail beyond ``L``.  Every term is then positive and the
  results keep their relative accuracy out to ``|t|/sigma`` of ``1e7`` and beyond.
* ``P(on | t)`` is formed from log densities with a log-sum-exp.

Accuracy (float64 internal arithmetic, checked against direct quadrature in ``tests/test_channel.py``):
relative ~1e-12 or better for the on-moments over ``|t| <= 1e3``, ``1e-4 <= sigma <= 1e2``; it
degrades gracefully (relative error ~ ``eps sigma^2``) for ``sigma`` well above ``1e2``.
"""

from __future__ import annotations

import math

import torch

from ._validate import check_p, check_sigma

__all__ = ["conditional_moments", "conditional_mean", "posterior_on"]

#: Standardised lower bound ``a`` above which the continued-fraction branch is used.
A_SWITCH = 8.0
#: Depth of the backward continued fraction (with the tail start below it is accurate to float64
#: for x >= A_SWITCH already at depth 15).
_CF_DEPTH = 20

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_phi(x: torch.Tensor) -> torch.Tensor:
    """log of the standard normal density."""
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _mills_cf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T_1, T_2, T_3 of Laplace's continued fraction ``T_k = x + k / T_{k+1}`` (x >~ 5).

    ``1/T_1`` is the Mills ratio ``Q(x)/phi(x)`` and
    ``int_0^inf v^k exp(-x v - v^2/2) dv = k! / (T_1 ... T_{k+1})``.
    """
    n = _CF_DEPTH
    # Tail start: the fixed point of T = x + (n+1)/T, which removes most of the truncation error.
    t = 0.5 * (x + torch.sqrt(x * x + 4.0 * (n + 1)))
    t1 = t2 = t3 = t
    for k in range(n, 0, -1):
        t = torch.reciprocal(t).mul_(k).add_(x)
        if k == 3:
            t3 = t
        elif k == 2:
            t2 = t
        elif k == 1:
            t1 = t
    return t1, t2, t3


def _tail_moments(a: torch.Tensor, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log Z + a^2/2 + log sqrt(2 pi) = log M0, E[v], Var[v]) for the branch a >= A_SWITCH.

    ``M_k(a, L) = int_0^L v^k exp(-a v - v^2/2) dv`` is the one-sided moment at ``a`` minus
    ``exp(-a L - L^2/2)`` times the binomially shifted one-sided moments at ``b = a + L``.
    """
    b = a + L
    e = torch.exp(-(a + 0.5 * L) * L)
    n = a.numel()
    t1, t2, t3 = _mills_cf(torch.cat([a, b]))
    a1, a2, a3 = t1[:n], t2[:n], t3[:n]
    b1, b2, b3 = t1[n:], t2[n:], t3[n:]
    m0 = 1.0 / a1 - e / b1
    m1 = 1.0 / (a1 * a2) - e * (1.0 / (b1 * b2) + L / b1)
    m2 = 2.0 / (a1 * a2 * a3) - e * (2.0 / (b1 * b2 * b3) + 2.0 * L / (b1 * b2) + L * L / b1)
    mean = m1 / m0
    var = m2 / m0 - mean * mean
    return torch.log(m0), mean, var


def _wide_moments(tr: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log Z, E[u], Var[u]) by Gauss-Legendre quadrature over u in [0, 1], for sigma >= 1.

    Used where ``sigma >= 1`` and ``a < A_SWITCH``: there the log-weight ``-(u - t)^2 / (2 sigma^2)``
    varies by at most ``9`` over ``[0, 1]``, so the rule is exact to float64, and the variance is
    summed as ``E[(u - mean)^2]`` without the cancellation the closed forms suffer when
    ``1/sigma`` is small.
    """
    nodes, weights = _gl_unit(tr.device)
    c = torch.clamp(tr, 0.0, 1.0)
    inv2s2 = 0.5 / (s * s)
    expo = -((nodes[None, :] - tr[:, None]) ** 2 - ((c - tr) ** 2)[:, None]) * inv2s2[:, None]
    w = weights[None, :] * torch.exp(expo)
    m0 = w.sum(dim=1)
    mean = (w * nodes[None, :]).sum(dim=1) / m0
    var = (w * (nodes[None, :] - mean[:, None]) ** 2).sum(dim=1) / m0
    log_z = torch.log(m0) - torch.log(s) - _LOG_SQRT_2PI - (c - tr) ** 2 * inv2s2
    return log_z, mean, var


_GL_CACHE: dict = {}


def _gl_unit(device) -> tuple[torch.Tensor, torch.Tensor]:
    """32-point Gauss-Legendre nodes and weights on [0, 1] (float64, cached per device)."""
    key = str(device)
    if key not in _GL_CACHE:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(32)
        _GL_CACHE[key] = (torch.tensor(0.5 * (x + 1.0), dtype=torch.float64, device=device),
                          torch.tensor(0.5 * w, dtype=torch.float64, device=device))
    return _GL_CACHE[key]


def _on_moments(t: torch.Tensor, s: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log Z, log Z - log phi(t/s), E[u | t, on], Var[u | t, on]) for float64 ``t``, ``s`` (same shape).

    The second output is formed without the common ``-t^2/(2 s^2)`` (which can reach ``-5e13``,
    where float64 keeps no O(1) digits), so the on/off log-odds stay accurate far in the tails.
    """
    flip = t > 0.5
    tr = torch.where(flip, 1.0 - t, t)  # reflected: tr <= 1/2
    a = -tr / s
    b = (1.0 - tr) / s
    L = 1.0 / s

    # Direct branch (a < A_SWITCH, sigma < 1); evaluated everywhere, overwritten on the other branches.
    lna = torch.special.log_ndtr(-a)
    lnb = torch.special.log_ndtr(-b)
    upper = lna + _log1mexp(torch.clamp(lnb - lna, max=0.0))
    # Phi(a) + Phi(-b) through log_ndtr (torch's ndtr is ~100x slower on some CPUs for mixed inputs)
    central = torch.log1p(-torch.exp(torch.special.log_ndtr(a)) - torch.exp(lnb))
    log_z = torch.where(a > 0, upper, central)
    del lna, lnb, upper, central  # keep the peak memory down on large inputs
    log_zr = log_z - _log_phi(t / s)
    pa = torch.exp(_log_phi(a) - log_z)
    pb = torch.exp(_log_phi(b) - log_z)
    m = pa - pb - a
    var = 1.0 - m * pa - (L - m) * pb
    del pa, pb, b
    mean_r = s * m  # E[u] in the reflected frame
    var_u = s * s * var
    del m, var

    tail = a >= A_SWITCH
    wide = (~tail) & (s >= 1.0)
    if bool(tail.any()) or bool(wide.any()):
        log_z, log_zr, mean_r, var_u = log_z.clone(), log_zr.clone(), mean_r.clone(), var_u.clone()
    if bool(tail.any()):
        at, Lt, st = a[tail], L[tail], s[tail]
        log_m0, mt, vt = _tail_moments(at, Lt)
        log_z[tail] = log_m0 + _log_phi(at)
        # log phi(a) - log phi(t/s) = (t^2 - tr^2) / (2 s^2): 0 unflipped, (2t - 1)/(2 s^2) flipped.
        tt = t[tail]
        log_zr[tail] = log_m0 + torch.where(flip[tail], (2.0 * tt - 1.0) / (2.0 * st * st), torch.zeros_like(tt))
        mean_r[tail] = st * mt
        var_u[tail] = st * st * vt
    if bool(wide.any()):
        lz, mw, vw = _wide_moments(tr[wide], s[wide])
        log_z[wide] = lz
        log_zr[wide] = lz - _log_phi(t[wide] / s[wide])
        mean_r[wide] = mw
        var_u[wide] = vw

    mean_r = torch.clamp(mean_r, 0.0, 1.0)
    mean = torch.where(flip, 1.0 - mean_r, mean_r)
    var_u = torch.clamp(var_u, min=0.0)
    return log_z, log_zr, mean, var_u


def _prepare(y, p, mu, sigma):
    """Validate, broadcast and upcast to float64. Returns ``(t = y - mu, sigma, p)``."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
    p = check_p(p)
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=y.device, dtype=torch.float64)
        if s.numel() == 0 or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise ValueError("sigma must be finite and > 0 everywhere")
    else:
        s = torch.tensor(check_sigma(sigma), dtype=torch.float64, device=y.device)
    if isinstance(mu, torch.Tensor):
        m = mu.to(device=y.device, dtype=torch.float64)
        if not bool(torch.isfinite(m).all()):
            raise ValueError("mu must be finite everywhere")
    else:
        try:
            mf = float(mu)
        except (TypeError, ValueError):
            raise ValueError(f"mu must be a finite number, got {mu!r}") from None
        if not math.isfinite(mf):
            raise ValueError(f"mu must be a finite number, got {mu!r}")
        m = torch.tensor(mf, dtype=torch.float64, device=y.device)
    t = y.to(torch.float64) - m
    t, s = torch.broadcast_tensors(t, s)
    return t.contiguous(), s.contiguous(), p


def _posterior_parts(t: torch.Tensor, s: torch.Tensor, p: float) -> dict[str, torch.Tensor]:
    """The float64 pieces of the posterior, shared with :mod:`decoderbench.theory`.

    Returns a dict with ``log_on = log(p Z)`` (log joint density of ``t`` and ``on``), ``p_on`` and
    ``p_off = 1 - p_on`` (each computed directly from the log-odds, so both keep relative accuracy),
    ``e_on = E[u | t, on]`` and ``v_on = Var[u | t, on]``.
    """
    log_z, log_zr, e_on, v_on = _on_moments(t, s)
    if p < 1.0:
        # log-odds of on vs off: log(p Z) - log((1 - p) phi(t/s) / s)
        lam = (math.log(p) - math.log1p(-p)) + log_zr + torch.log(s)
        p_on, p_off = torch.sigmoid(lam), torch.sigmoid(-lam)
    else:
        p_on, p_off = torch.ones_like(t), torch.zeros_like(t)
    return {"log_on": math.log(p) + log_z, "p_on": p_on, "p_off": p_off, "e_on": e_on, "v_on": v_on}


def conditional_moments(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                        sigma: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and variance ``(E[x | y], Var[x | y])`` of the scalar channel, elementwise.

    Args:
        y: observations (any float dtype, any device).
        p: probability that a feature is on, in (0, 1].
        mu: noise mean; a float or a tensor broadcastable to ``y``.
        sigma: noise standard deviation > 0; a float or a tensor broadcastable to ``y``.

    Returns:
        Two tensors of the broadcast shape, with ``y``'s dtype and device.  The mean lies in
        ``[0, 1]`` and the variance is ``>= 0``.  Internally computed in float64 (see module doc);
        finite and accurate for ``|y - mu| <= 1e3`` and ``1e-4 <= sigma <= 1e2`` (and beyond).

    Raises:
        ValueError: naming ``p``, ``sigma``, ``mu`` or ``y`` when an argument is invalid.
    """
    t, s, p = _prepare(y, p, mu, sigma)
    parts = _posterior_parts(t, s, p)
    p_on, p_off = parts["p_on"], parts["p_off"]
    e_on, v_on = parts["e_on"], parts["v_on"]
    mean = torch.clamp(p_on * e_on, 0.0, 1.0)
    var = torch.clamp(p_on * (v_on + p_off * e_on * e_on), min=0.0)
    dtype = y.dtype if y.dtype.is_floating_point else torch.get_default_dtype()
    return mean.to(dtype), var.to(dtype)


def conditional_mean(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                     sigma: float | torch.Tensor) -> torch.Tensor:
    """``E[x | y]`` (the first output of :func:`conditional_moments`)."""
    return conditional_moments(y, p, mu, sigma)[0]


def posterior_on(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                 sigma: float | torch.Tensor) -> torch.Tensor:
    """``P(on | y) = p Z / (p Z + (1 - p) phi(t/sigma)/sigma)``, elementwise, in ``[0, 1]``."""
    t, s, p = _prepare(y, p, mu, sigma)
    parts = _posterior_parts(t, s, p)
    out = parts["p_on"].clamp(0.0, 1.0)
    dtype = y.dtype if y.dtype.is_floating_point else torch.get_default_dtype()
    return out.to(dtype)
