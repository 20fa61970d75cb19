"""The scalar channel ``y = x + nu`` and its exact posterior moments.

Notation (the paper's section 4.2): ``x = c u`` with ``c ~ Bernoulli(p)`` and ``u ~ Uniform[0, 1]``; the noise is
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
  ``2Z = erfc(a/sqrt2) - erfc(b/sqrt2)`` when ``a > 0`` (both upper tails: no cancellation, and
  ``Z >= Q(A_SWITCH) ~ 6e-16`` cannot underflow) and ``2 - erfc(|a|/sqrt2) - erfc(b/sqrt2)`` otherwise,
  ``phi(a)/Z`` and ``phi(b)/Z`` from log space, and the variance in the form
  ``1 - m phi(a)/Z - (L - m) phi(b)/Z`` (``m = E[v]``), which cancels far less than
  ``1 + (a phi(a) - b phi(b))/Z - (...)^2``.
* For ``a >= A_SWITCH`` (``t`` many ``sigma`` below 0) those formulas cancel catastrophically (the
  mean is ``t + sigma a (1 + O(1/a^2))``).  There the moments ``M_k = int_0^L v^k exp(-a v - v^2/2) dv``
  are built from the one-sided moments ``int_0^inf v^k exp(-x v - v^2/2) dv = k! / (T_1 ... T_{k+1})``,
  where ``T_k = x + k / T_{k+1}`` is Laplace's continued fraction of the Mills ratio
  (``R(x) = 1/T_1``), minus the shifted tail beyond ``L``.  Every term is then positive and the
  results keep their relative accuracy out to ``|t|/sigma`` of ``1e7`` and beyond.
* ``P(on | t)`` is the logistic function of the log-odds ``log(p Z) - log((1 - p) phi(t/sigma)/sigma)``,
  formed as ``log(Z/phi(a)) + (t^2 - t_r^2)/(2 sigma^2) + ...`` without the huge common ``t^2/(2 sigma^2)``.
* Speed: the input is processed in flat blocks of ``_CHUNK`` entries (temporaries stay in cache,
  in-place operations); a block entirely in one branch runs only that one; continued-fraction
  entries of mixed blocks are gathered from all blocks and evaluated together at the end (so that
  branch's per-operation overhead is paid once per ``_CHUNK`` of them); the continued-fraction depth
  follows the smallest ``a`` it is evaluated at (``_CF_DEPTHS``);
  arguments of ``exp``/``erfc`` are clamped so results never underflow (underflowing results are
  ~10x slower to compute and are negligible here).

Accuracy (float64 internal arithmetic, checked against direct quadrature in ``tests/test_channel.py``):
relative ~1e-12 or better for the on-moments over ``|t| <= 1e3``, ``1e-4 <= sigma <= 1e2``; it
degrades gracefully (relative error ~ ``eps sigma^2``) for ``sigma`` well above ``1e2``.
"""

from __future__ import annotations

import math

import torch

from .._validate import _finite, check_p, check_sigma

__all__ = ["conditional_moments", "conditional_mean", "posterior_on"]

#: Standardised lower bound ``a`` above which the continued-fraction branch is used.
A_SWITCH = 8.0
#: Depth of the backward continued fraction by the smallest argument it is evaluated at, from
#: mpmath: with the fixed-point tail start, every depth below keeps ``1/T_1``, ``1/(T_1 T_2)`` and
#: ``2/(T_1 T_2 T_3)`` within ~7e-16 relative for all ``x`` at or above its threshold
#: (e.g. depth 13 at ``x = 8`` leaves 5e-15, depth 14 leaves 7e-16).
_CF_DEPTHS = ((100.0, 5), (40.0, 6), (24.0, 8), (16.0, 10), (12.0, 11), (10.0, 12), (9.0, 13),
              (A_SWITCH, 14))
#: Entries processed per block: every temporary of a block stays in cache.
_CHUNK = 32768

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
#: exp and erfc arguments are clamped so that results stay normal numbers (both functions are ~10x
#: slower where they underflow): exp(-700) ~ 1e-304 and erfc(26) ~ 6e-296 are negligible next to
#: every term they are added to (Z >= Q(A_SWITCH) ~ 6e-16 in the direct branch).
_EXP_FLOOR = 700.0
_ERFC_CEIL = 26.0
_SQRT1_2 = math.sqrt(0.5)
_LOG2 = math.log(2.0)


def _log_phi(x: torch.Tensor) -> torch.Tensor:
    """log of the standard normal density."""
    return -0.5 * x * x - _LOG_SQRT_2PI


def _cf_depth(xmin: float) -> int:
    for x0, n in _CF_DEPTHS:
        if xmin >= x0:
            return n
    return 20


def _mills_j(x: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``J_k(x) = int_0^inf v^k exp(-x v - v^2/2) dv = k! / (T_1 ... T_{k+1})`` for k = 0, 1, 2.

    ``T_k = x + k / T_{k+1}`` is Laplace's continued fraction of the Mills ratio (``J_0 = 1/T_1``),
    evaluated backwards from ``depth`` (see ``_CF_DEPTHS``; needs ``x >= A_SWITCH``) and started at
    the fixed point of ``T = x + (depth + 1)/T``, which removes most of the truncation error.
    """
    t = torch.sqrt(x * x + 4.0 * (depth + 1)).add_(x).mul_(0.5)
    one = x.new_ones(())
    t2 = t3 = t
    for k in range(depth, 0, -1):
        t = torch.addcdiv(x, one, t, value=float(k))  # x + k / t
        if k == 3:
            t3 = t
        elif k == 2:
            t2 = t
    j0 = torch.reciprocal(t)
    j1 = j0 / t2
    j2 = j1 / t3
    return j0, j1, j2.mul_(2.0)


def _tail_moments(a: torch.Tensor, L) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log M0 = log Z - log phi(a), E[v], Var[v]) for the branch ``a >= A_SWITCH``.

    ``M_k(a, L) = int_0^L v^k exp(-a v - v^2/2) dv`` is the one-sided moment at ``a`` minus
    ``e = exp(-a L - L^2/2)`` times the binomially shifted one-sided moments at ``b = a + L``.
    The shifted terms are below ``e (1 + a L)^2`` relative to the unshifted ones (``J_k(b) <= J_k(a)``,
    ``J_k(x) ~ k!/x^{k+1}``); where that is under 1e-18 for every entry they are left out.
    """
    e = torch.exp((a + 0.5 * L).mul_(L).clamp_(max=_EXP_FLOOR).neg_())
    q = (a * L).add_(1.0)
    need_b = bool((q.mul_(q).mul_(e)).amax() > 1e-18)
    depth = _cf_depth(float(a.amin()))
    m0, m1, m2 = _mills_j(a, depth)
    if need_b:
        b0, b1, b2 = _mills_j(a + L, depth)  # b >= a: the same depth suffices
        m0 = m0 - e * b0
        m1 = m1 - e * (b1 + L * b0)
        m2 = m2 - e * (b2 + 2.0 * L * b1 + L * L * b0)
    mean = m1 / m0
    var = (m2 / m0).sub_(mean * mean)
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


def _block(t: torch.Tensor, s, wide: bool, want_log_z: bool):
    """The on-moments of one 1-D float64 block ``t`` (``s``: a float or a tensor like ``t``).

    Returns ``((log_zr, E[u | t, on], Var[u | t, on], log_z or None), deferred)`` where
    ``log_zr = log Z - log phi(t/s)`` (formed without the common ``-t^2/(2 s^2)``).  ``wide``: some
    ``s`` may be ``>= 1`` (the quadrature branch is then checked for).  ``deferred`` is ``None`` or
    the (local) indices of a few continued-fraction entries whose results here are garbage: the
    caller evaluates them afterwards, gathered from all blocks (see :func:`_blocks`), so that the
    per-operation overhead of that branch is paid once per ``_CHUNK`` of them, not once per block.
    """
    L = torch.reciprocal(s) if isinstance(s, torch.Tensor) else 1.0 / s
    tr = torch.minimum(t, torch.rsub(t, 1.0))  # reflected: tr <= 1/2 (1 - t where t > 1/2)
    a = torch.div(tr, s).neg_()  # (not tr * (-L): one rounding less)
    n = a.numel()
    amin, amax = (float(v) for v in torch.aminmax(a)) if n else (0.0, 0.0)
    log_z = None

    if amin >= A_SWITCH:  # the whole block is in the continued-fraction branch
        g, m, v = _tail_moments(a, L)
        tail_idx = None
    else:
        # Direct branch: 2Z = erfc(|a|/sqrt2) - erfc(b/sqrt2) (a > 0), 2 - erfc(-a/sqrt2) - erfc(b/sqrt2)
        # (a <= 0); phi(a)/Z and phi(b)/Z from log space; the variance as 1 - m pa - (L - m) pb.
        b = a + L
        ea = torch.special.erfc(torch.abs(a).mul_(_SQRT1_2).clamp_(max=_ERFC_CEIL))
        z2 = torch.where(a > 0, ea, torch.rsub(ea, 2.0))
        z2.sub_(torch.special.erfc((b * _SQRT1_2).clamp_(max=_ERFC_CEIL)))
        lz2 = torch.log(z2)
        if want_log_z:
            log_z = lz2 - _LOG2
        nl = torch.rsub(lz2, _LOG2 - _LOG_SQRT_2PI)  # -log Z - log sqrt(2 pi)
        g = torch.addcmul(nl, a, a, value=-0.5)  # log(phi(a)/Z)
        pa = torch.exp(torch.clamp(g, min=-_EXP_FLOOR))
        pb = torch.exp(nl.addcmul_(b, b, value=-0.5).clamp_(min=-_EXP_FLOOR))
        g.neg_()  # log Z - log phi(a)
        d = pa.sub_(pb)
        m = d - a  # E[v]
        w = pb.mul_(L).addcmul_(m, d)
        v = torch.rsub(w, 1.0)  # Var[v] = 1 - m pa - (L - m) pb
        del b, ea, z2, lz2, nl, d, w
        tail_idx = None
        if amax >= A_SWITCH:
            tail_idx = (a >= A_SWITCH).nonzero().squeeze(1)

    if want_log_z and log_z is None:
        log_z = g + _log_phi(a)
    mean_r = (m * s).clamp_(0.0, 1.0)  # E[u] in the reflected frame
    var_u = v.mul_(s * s)

    if wide:
        wmask = a < A_SWITCH
        if isinstance(s, torch.Tensor):
            wmask &= s >= 1.0
        elif s < 1.0:
            wmask = None
        if wmask is not None and bool(wmask.any()):
            idx = wmask.nonzero().squeeze(1)
            aw = a[idx]
            lz, mw, vw = _wide_moments(tr[idx], s[idx] if isinstance(s, torch.Tensor) else torch.full_like(aw, s))
            g[idx] = lz - _log_phi(aw)
            mean_r[idx] = mw
            var_u[idx] = vw
            if want_log_z:
                log_z[idx] = lz

    # log phi(a) - log phi(t/s) = (t^2 - tr^2) / (2 s^2): 0 where not reflected.
    log_zr = g.add_((t - tr).mul_(t + tr).mul_(L * L * 0.5))
    e_on = torch.where(t > 0.5, torch.rsub(mean_r, 1.0), mean_r)
    var_u.clamp_(min=0.0)
    return (log_zr, e_on, var_u, log_z), tail_idx


def _blocks(n: int, t_at, s_at, wide: bool, want_log_z: bool, emit) -> None:
    """Run :func:`_block` over ``n`` entries: ``t_at(sel)`` / ``s_at(sel)`` give the float64 ``t`` and
    ``s`` (float or tensor) of a slice or an index tensor ``sel``, and ``emit(sel, results)`` stores
    the results.  Deferred continued-fraction entries are emitted again, gathered, at the end."""
    deferred = []
    for lo in range(0, n, _CHUNK):
        sel = slice(lo, min(lo + _CHUNK, n))
        res, idx = _block(t_at(sel), s_at(sel), wide, want_log_z)
        emit(sel, res)
        if idx is not None:
            deferred.append(idx + lo)
    if deferred:
        idx = torch.cat(deferred)
        for lo in range(0, idx.numel(), _CHUNK):
            sel = idx[lo:lo + _CHUNK]
            res, rest = _block(t_at(sel), s_at(sel), wide, want_log_z)
            assert rest is None  # every entry gathered here is in the continued-fraction branch
            emit(sel, res)


def _flat_operands(y, p, mu, sigma, expand: bool = True):
    """Validate; returns ``(y_flat, mu, s, shape, wide, p)`` (``expand=False``: ``mu`` and ``s`` as given,
    not yet broadcast to ``shape``; :func:`_expand_operands` does it).

    ``mu`` and ``s`` are Python floats or flat float64 tensors of ``shape`` (the broadcast shape);
    ``wide`` says whether some ``sigma >= 1``.  Tensor arguments are checked with one reduction each.
    """
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
    p = check_p(p)
    shape = y.shape
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=y.device, dtype=torch.float64)
        if s.numel() == 0:
            raise ValueError("sigma must be finite and > 0 everywhere")
        lo, hi = (float(v) for v in torch.aminmax(s))
        if not (lo > 0.0 and hi < math.inf):  # NaN fails too
            raise ValueError("sigma must be finite and > 0 everywhere")
        wide = hi >= 1.0
        shape = torch.broadcast_shapes(shape, s.shape)
    else:
        s = check_sigma(sigma)
        wide = s >= 1.0
    if isinstance(mu, torch.Tensor):
        m = mu.to(device=y.device, dtype=torch.float64)
        if m.numel() and not bool(torch.isfinite(m).all()):
            raise ValueError("mu must be finite everywhere")
        shape = torch.broadcast_shapes(shape, m.shape)
    else:
        m = _finite("mu", mu)
    shape = torch.Size(shape)
    y_flat = y.expand(shape).reshape(-1)
    if expand:
        m, s = _expand_operands(m, s, shape)
    return y_flat, m, s, shape, wide, p


def _expand_operands(m, s, shape):
    """Broadcast tensor ``mu``/``sigma`` to ``shape`` and flatten them (floats pass through)."""
    if isinstance(m, torch.Tensor):
        m = m.expand(shape).reshape(-1)
    if isinstance(s, torch.Tensor):
        s = s.expand(shape).reshape(-1)
    return m, s


def _getters(y_flat, m, s):
    """``t_at(sel)`` and ``s_at(sel)`` for :func:`_blocks` from the outputs of :func:`_flat_operands`."""
    def t_at(sel):
        t = y_flat[sel].to(torch.float64)
        if isinstance(m, torch.Tensor):
            return t - m[sel]
        return t - m if m != 0.0 else t

    def s_at(sel):
        return s[sel] if isinstance(s, torch.Tensor) else s

    return t_at, s_at


def _on_moments(t: torch.Tensor, s: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log Z, log Z - log phi(t/s), E[u | t, on], Var[u | t, on]) for float64 ``t``, ``s`` (same shape).

    The second output is formed without the common ``-t^2/(2 s^2)`` (which can reach ``-5e13``,
    where float64 keeps no O(1) digits), so the on/off log-odds stay accurate far in the tails.
    """
    t, s = torch.broadcast_tensors(t, s)
    shape = t.shape
    tf = t.reshape(-1).to(torch.float64)
    sf = s.reshape(-1).to(torch.float64)
    wide = bool(sf.numel()) and bool((sf >= 1.0).any())
    outs = [torch.empty_like(tf) for _ in range(4)]

    def emit(sel, res):
        log_zr, e_on, v_on, log_z = res
        for o, r in zip(outs, (log_z, log_zr, e_on, v_on)):
            o[sel] = r

    _blocks(tf.numel(), lambda sel: tf[sel], lambda sel: sf[sel], wide, True, emit)
    return tuple(o.reshape(shape) for o in outs)


def _posterior_parts(t: torch.Tensor, s: torch.Tensor, p: float) -> dict[str, torch.Tensor]:
    """The float64 pieces of the posterior, shared with :mod:`decoderbench.model.theory`.

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


# ------------------------------------------------------------------------------ fast (working dtype)
#: Fast path: standardised lower bound ``a`` below which the float32 closed forms are used.  Their
#: cancellation grows like ``eps a^4`` in the variance (``eps a^2`` in the mean): at ``a = 4`` that is
#: ~1.5e-5 (float32); beyond it, and wherever ``sigma >= 1``, entries go to the float64 reference.
A_FAST = 2.5
#: Entries per block of the fast path (its five work buffers of this size stay near the cores: 2^17 was 8-10%
#: faster than 2^16 for AMP and VAMP at n_s 4096 on 2 threads, on par on 1; 2^18 no faster).
_FAST_CHUNK = 1 << 17
_C_PHI = 2.0 / math.sqrt(2.0 * math.pi)  # phi(a)/Z = _C_PHI exp(-a^2/2) / (2Z)
#: exp arguments are clamped at -_EXP32: float32 arithmetic on subnormal numbers (below ~1.2e-38) is
#: ~100x slower on a CPU, and e^-50 ~ 2e-22 keeps every product formed from these terms normal.
_EXP32 = 50.0
#: Results below this are returned as exactly 0 (they are below any loss the harness can resolve, and
#: subnormal values would slow every later operation of a decoder on them).
_TINY32 = 1e-30


def _fast_block(t: torch.Tensor, s, L, k: float, ws: list, mean_out: torch.Tensor, var_out: torch.Tensor,
                s_big: bool, bad_at):
    """Posterior mean and variance of one float32 block, by the closed forms (no logs).

    ``t``: (rows, cols) observations minus mu; ``s``/``L``: sigma and 1/sigma (floats or (rows, 1) or
    (rows, cols) tensors); ``k = (1 - p)/p``. With ``tr = min(t, 1 - t)``, ``a = -tr/s``, ``b = a + 1/s``:
    ``2Z = erfc(|a|/sqrt2)`` (or ``2 - erfc(-a/sqrt2)``) ``- erfc(b/sqrt2)``, ``pa = phi(a)/Z``,
    ``pb = phi(b)/Z``, ``E[v] = pa - pb - a``, ``Var[v] = 1 - pb/s - E[v](pa - pb)`` (the same forms as
    the reference's direct branch), and the off/on odds ``k phi(t/s) / (s Z)``, so that
    ``P(on) = 1/(1 + odds)`` and ``P(off) = odds P(on)``. Writes the mean and variance into ``mean_out`` and
    ``var_out`` (views of t's shape, which may be strided). Entries outside this path's range (``a >= A_FAST``,
    or ``s >= 1`` where ``s_big`` says some sigma of the call is) are marked in ``bad_at()``, the block's view of
    the call's mask, asked for only where some entry may be (the reference takes them again).

    ``ws``: five contiguous float32 work buffers of t's shape, which every step writes into (``out=`` or in
    place): a block allocates nothing (with a dozen fresh temporaries per block a call took 16.7 ms against
    14.5 ms at n_s 4096, B 256, 2 threads). Each step is the same floating-point operation as the textbook
    sequence, in the same order (``1 - t`` as ``-t + 1``, ``sign(1/2 - t)`` as ``-sign(t - 1/2)``: exact).
    """
    w1, w2, w3, w4, w5 = ws
    torch.neg(t, out=w1).add_(1.0)
    a = torch.minimum(t, w1, out=w1).div_(s).neg_()  # a = -min(t, 1 - t)/s
    # (no torch.where or comparisons over the block unless some entry needs them: on CPU each costs ~20
    # multiplications)
    if float(a.amax()) >= A_FAST or s_big:
        bad = torch.ge(a, A_FAST, out=bad_at())
        if s_big:
            bad |= s >= 1.0
    b = torch.add(a, L, out=w2)
    z2 = torch.special.erfc(torch.mul(a, _SQRT1_2, out=w3), out=w3)  # = 2 - erfc(-a/sqrt2) for a <= 0
    eb = torch.special.erfc(torch.mul(b, _SQRT1_2, out=w4).clamp_(max=9.0), out=w4)
    inv = z2.sub_(eb).reciprocal_().mul_(_C_PHI)
    pa = torch.mul(a, a, out=w4).mul_(-0.5).clamp_(min=-_EXP32).exp_().mul_(inv)
    pb = torch.mul(b, b, out=w5).mul_(-0.5).clamp_(min=-_EXP32).exp_().mul_(inv)
    d = torch.sub(pa, pb, out=w2)  # (b is spent)
    m = torch.sub(d, a, out=w4)  # (pa is spent)
    v = pb.mul_(L).addcmul_(m, d).neg_().add_(1.0)  # 1 - (pb L + m d)
    mean_r = m.mul_(s).clamp_(0.0, 1.0)
    var_u = v.mul_(s * s).clamp_(min=0.0)
    # undo the reflection: E[u] = 1 - mean_r where t > 1/2. refl is 1 there, 0 elsewhere and 1/2 at
    # t = 1/2 (where E[u] = 1/2), so that unreflected entries keep their relative accuracy
    refl = torch.sub(t, 0.5, out=w1).sign_().mul_(0.5).add_(0.5)  # (a is spent)
    e_on = torch.neg(mean_r, out=w2).add_(0.5).mul_(refl).mul_(2.0).add_(mean_r)  # (d is spent)
    # (the odds keep e^-80: their floor enters the variance as P(off) E_on^2; P(off) below 1e-25 is
    # then dropped, so that P(off) E_on^2 stays a normal number)
    tl = torch.mul(t, L, out=w1)
    odds = tl.mul_(tl).mul_(-0.5).clamp_(min=-80.0).exp_().mul_(inv).mul_(L).mul_(k)
    p_on = torch.add(odds, 1.0, out=w3).reciprocal_()  # (inv is spent)
    p_off = torch.nn.functional.threshold_(odds.mul_(p_on), 1e-25, 0.0)
    torch.mul(var_u.addcmul_(p_off.mul_(e_on), e_on), p_on, out=var_out)
    torch.mul(p_on, e_on, out=mean_out)


def _fast_moments(y: torch.Tensor, p: float, mu, sigma, out=None):
    """``conditional_moments`` in float32 with a float64 fallback for the entries that need it.

    Returns None where the arguments do not suit this path (p = 1, tensor mu, sigma whose shape is
    neither a scalar nor broadcast along the last axis of y); the caller then uses the reference.
    ``out``: optional pair of contiguous float32 tensors of ``y``'s shape that receive the results.
    """
    if p >= 1.0 or isinstance(mu, torch.Tensor) or y.dim() == 0:
        return None
    shape = y.shape
    cols = shape[-1]
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() > y.dim() or sigma.shape[-1] not in (1, cols):
            return None
        try:
            if torch.broadcast_shapes(shape, sigma.shape) != shape:
                return None
        except RuntimeError:
            return None
        s_full = sigma.to(device=y.device, dtype=torch.float32)
        per_entry = sigma.shape[-1] == cols and cols > 1
        s2 = s_full.expand(shape).reshape(-1, cols) if per_entry else \
            s_full.expand(*shape[:-1], 1).reshape(-1, 1)
    else:
        s2 = float(sigma)
        if s2 >= 1.0:
            return None
    y2 = y.reshape(-1, cols)
    rows = y2.shape[0]
    k = (1.0 - p) / p
    if out is not None:
        mean, var = (o.view(-1, cols) for o in out)
    else:
        mean = torch.empty_like(y2)
        var = torch.empty_like(y2)
    step_r = max(1, _FAST_CHUNK // cols)
    step_c = min(cols, _FAST_CHUNK)
    # the blocks' work buffers (and t - mu), allocated once for all blocks
    size = min(rows, step_r) * step_c
    space = torch.empty(6 if mu != 0.0 else 5, size, dtype=torch.float32, device=y.device)
    # entries the reference takes again: marked in one mask over y, made when a block first needs it
    bad_mask = []

    def mask_at(r0, r1, c0, c1):
        if not bad_mask:
            bad_mask.append(torch.zeros(y2.shape, dtype=torch.bool, device=y.device))
        return bad_mask[0][r0:r1, c0:c1]

    s_big = isinstance(s2, torch.Tensor) and float(s2.amax()) >= 1.0
    for r0 in range(0, rows, step_r):
        r1 = min(rows, r0 + step_r)
        for c0 in range(0, cols, step_c):
            c1 = min(cols, c0 + step_c)
            bshape = (r1 - r0, c1 - c0)
            n_b = bshape[0] * bshape[1]
            ws = [space[i, :n_b].view(bshape) for i in range(space.shape[0])]
            t = y2[r0:r1, c0:c1]
            if mu != 0.0:  # (_fast_block never writes to t)
                t = torch.sub(t, mu, out=ws.pop())
            if isinstance(s2, torch.Tensor):
                s = s2[r0:r1, c0:c1] if per_entry else s2[r0:r1]
                L = torch.reciprocal(s)
            else:
                s, L = s2, 1.0 / s2
            m_b, v_b = mean[r0:r1, c0:c1], var[r0:r1, c0:c1]
            _fast_block(t, s, L, k, ws, m_b, v_b, s_big, lambda: mask_at(r0, r1, c0, c1))
            # results below _TINY32 become exactly 0, in cache, block by block
            torch.nn.functional.threshold_(m_b, _TINY32, 0.0)
            torch.nn.functional.threshold_(v_b, _TINY32, 0.0)
    if bad_mask:
        rr, cc = bad_mask[0].nonzero(as_tuple=True)
        if rr.numel():
            if isinstance(s2, torch.Tensor):
                sb = sigma.to(device=y.device, dtype=torch.float64).expand(shape).reshape(-1, cols)[rr, cc]
            else:
                sb = float(sigma)
            mb, vb = conditional_moments(y2[rr, cc].to(torch.float64), p, mu, sb, precise=True)
            mean[rr, cc] = torch.nn.functional.threshold(mb.to(mean.dtype), _TINY32, 0.0)
            var[rr, cc] = torch.nn.functional.threshold(vb.to(var.dtype), _TINY32, 0.0)
    if out is not None:
        return out
    return mean.view(shape), var.view(shape)


def _out_dtype(y: torch.Tensor) -> torch.dtype:
    return y.dtype if y.dtype.is_floating_point else torch.get_default_dtype()


def conditional_moments(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                        sigma: float | torch.Tensor, *, precise: bool = False, out=None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and variance ``(E[x | y], Var[x | y])`` of the scalar channel, elementwise.

    Args:
        y: observations (any float dtype, any device).
        p: probability that a feature is on, in (0, 1].
        mu: noise mean; a float or a tensor broadcastable to ``y``.
        sigma: noise standard deviation > 0; a float or a tensor broadcastable to ``y``.

    Returns:
        Two tensors of the broadcast shape, with ``y``'s dtype and device.  The mean lies in
        ``[0, 1]`` and the variance is ``>= 0``.  float64 input (or ``precise=True``) is computed by
        the float64 reference (see module doc); finite and accurate for ``|y - mu| <= 1e3`` and
        ``1e-4 <= sigma <= 1e2`` (and beyond).  float32 input takes the fast path (float32 closed
        forms where they hold, the reference for the other entries: see :func:`_fast_block`), several
        times faster; its worst relative error over that range is stated in ``tests/test_channel.py``.
        precise: force the float64 reference for float32 input.
        out: optional pair ``(mean, var)`` of contiguous tensors of ``y``'s shape and dtype to write the
            results into (and return); saves two allocations per call in an iterative decoder.

    Raises:
        ValueError: naming ``p``, ``sigma``, ``mu`` or ``y`` when an argument is invalid.
    """
    y_flat, m, s, shape, wide, p = _flat_operands(y, p, mu, sigma, expand=False)
    dtype = _out_dtype(y)
    if out is not None:
        out = tuple(out)
        if (len(out) != 2 or any(not isinstance(o, torch.Tensor) or tuple(o.shape) != tuple(shape)
                                 or o.dtype != dtype or o.device != y.device or not o.is_contiguous()
                                 for o in out)):
            raise ValueError(f"out must be two contiguous {dtype} tensors of shape {tuple(shape)}")
    if dtype == torch.float32 and not precise:
        fast = _fast_moments(y, p, m, sigma, out=out)
        if fast is not None:
            return fast
    m, s = _expand_operands(m, s, shape)  # (the fast path needs no per-entry copy of sigma)
    if out is not None:
        mean_out, var_out = out
    else:
        mean_out = torch.empty(shape, dtype=dtype, device=y.device)
        var_out = torch.empty(shape, dtype=dtype, device=y.device)
    mf, vf = mean_out.view(-1), var_out.view(-1)
    t_at, s_at = _getters(y_flat, m, s)
    logit = math.log(p) - math.log1p(-p) if p < 1.0 else 0.0

    def emit(sel, res):
        log_zr, e_on, v_on, _ = res
        direct = dtype == torch.float64 and isinstance(sel, slice)
        if p < 1.0:
            sb = s_at(sel)
            # log-odds of on vs off: log(p Z) - log((1 - p) phi(t/s) / s)
            lam = log_zr.add_(torch.log(sb) if isinstance(sb, torch.Tensor) else math.log(sb)).add_(logit)
            p_on = torch.sigmoid(lam)
            p_off = torch.sigmoid(lam.neg_())
            v_on.addcmul_(p_off.mul_(e_on), e_on)  # Var[x | t] = P(on) (Var_on + P(off) E_on^2)
            if direct:  # write straight into the output
                torch.mul(p_on, e_on, out=mf[sel]).clamp_(0.0, 1.0)
                torch.mul(v_on, p_on, out=vf[sel]).clamp_(min=0.0)
            else:
                mf[sel] = torch.mul(p_on, e_on).clamp_(0.0, 1.0).to(dtype)
                vf[sel] = v_on.mul_(p_on).clamp_(min=0.0).to(dtype)
        else:
            mf[sel] = e_on.clamp_(0.0, 1.0).to(dtype)
            vf[sel] = v_on.to(dtype)

    _blocks(y_flat.numel(), t_at, s_at, wide, False, emit)
    return mean_out, var_out


def conditional_mean(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                     sigma: float | torch.Tensor, *, precise: bool = False) -> torch.Tensor:
    """``E[x | y]`` (the first output of :func:`conditional_moments`)."""
    return conditional_moments(y, p, mu, sigma, precise=precise)[0]


def posterior_on(y: torch.Tensor, p: float, mu: float | torch.Tensor,
                 sigma: float | torch.Tensor) -> torch.Tensor:
    """``P(on | y) = p Z / (p Z + (1 - p) phi(t/sigma)/sigma)``, elementwise, in ``[0, 1]``."""
    y_flat, m, s, shape, wide, p = _flat_operands(y, p, mu, sigma)
    out = torch.empty(shape, dtype=_out_dtype(y), device=y.device)
    if p >= 1.0:
        return out.fill_(1.0)
    of = out.view(-1)
    t_at, s_at = _getters(y_flat, m, s)
    logit = math.log(p) - math.log1p(-p)

    def emit(sel, res):
        sb = s_at(sel)
        lam = res[0].add_(torch.log(sb) if isinstance(sb, torch.Tensor) else math.log(sb)).add_(logit)
        of[sel] = torch.sigmoid(lam).clamp_(0.0, 1.0).to(of.dtype)

    _blocks(y_flat.numel(), t_at, s_at, wide, False, emit)
    return out
