"""Exact finite-size references for a fixed encoder: no Gaussian assumption on the interference.

For a fixed ``W`` with unit diagonal of ``R = W_out W_in`` (the rug) the pre-activation of feature ``i`` is
``z_i = x_i + nu_i`` with ``nu_i = sum_{j != i} R_ij x_j``, ``x_j = c_j u_j`` independent (paper section 2 and
4.2.2). Its law is the convolution of ``n_s - 1`` mixtures "0 with probability 1 - p, else uniform on
[0, R_ij]", with characteristic function

    phi_i(t) = prod_{j != i} (1 - p + p (exp(i R_ij t) - 1) / (i R_ij t)).

On the rug, ``R_ij = g(i XOR j)`` with ``g = n_d^-1 H m`` (``H`` the Sylvester Hadamard matrix, ``m`` the 0/1
indicator of the kept columns ``S``): every row of ``R`` is a permutation of ``g``, so one law serves every
feature. ``n_d g`` is an integer vector, so ``phi`` is a product over its few distinct values (with their
counts). A trained ``W`` has one law per row (``g_j = W_ij / W_ii``, since an elementwise decoder may rescale
its input); :func:`references_for_weights` averages over rows.

The law is computed on a grid of spacing ``h = 1 / M`` by one FFT of ``phi`` multiplied by the characteristic
function ``sinc(t h / 2)^4`` of a smoothing kernel: the grid values are the masses
``E[B((nu - x_j) / h)]`` (``B`` the cubic B-spline kernel), non-negative up to round-off, with the mean of
``nu`` preserved and its variance raised by ``h^2 / 3`` (the grid error is O(h^2)); the FFT sums the
characteristic function's first aliases, so no Gibbs ripples pile up mass in the tails. The atom of ``nu`` at 0 (no other feature on, mass
``a0 = (1 - p)^K`` with ``K`` the number of non-zero ``R_ij``) is taken out of ``phi`` and kept exact: at
``z = 0`` with ``x = 0`` the decoder knows ``x`` exactly.

From the law (``f0`` the density of ``nu`` without its atom, ``f1 = f_nu * U[0, 1]`` the density of ``u + nu``,
``m1 = f_nu * (u U[0, 1])``, both with the atom's box ``a0 1[0 <= z <= 1]`` and ``a0 z 1[0 <= z <= 1]`` added
analytically), by the trapezoid rule on the same grid:

* ``mmse_elementwise_exact = p/3 - int (p m1)^2 / ((1 - p) f0 + p f1) dz``: the least loss of any decoder that
  acts on each ``z_i`` alone (the conditional mean ``E[x_i | z_i]``);
* ``e2_bound_exact = p (1/3 - int m1^2 / f1 dz)``: appendix E.2's bound, the least loss even for a decoder told
  which features are on, under the exact law;
* ``relu_theory_exact``: ``min_{a, b} E[(x - ReLU(a z + b))^2]`` under the exact law (Nelder-Mead from the
  Gaussian optimum), with its ``a`` and ``b``.

Accuracy (tests/test_exact.py): the law's mean and variance equal ``(p/2) sum_j g_j`` and
``v sum_j g_j^2 + h^2/6`` to 1e-9; at large ``p n_s`` the references agree with the Gaussian theory of
:mod:`decoderbench.model.theory` to a fraction of a percent; Monte Carlo of the exact conditional mean on the rug
lands within its standard error of ``mmse_elementwise_exact``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BadInput

#: A row of a fixed W whose diagonal is at most this fraction of the median diagonal is "not encoded".
NOT_ENCODED = 0.1
#: Grid points per unit of z (h = 1/M); the grid error is O(h^2).
DEFAULT_M = 1024
#: The law is computed on at most this many points (2^22 float64: 32 MB per array, a few arrays at once).
MAX_POINTS = 1 << 22


@dataclass
class Law:
    """The law of ``z = x_i + nu`` on a grid: ``x`` (grid, spacing ``h``, 0 and 1 on it), ``f0`` (density of nu
    without its atom), ``f1`` (density of u + nu), ``m1`` (``int u f_nu(z - u) du`` over [0, 1]), ``a0`` (atom of
    nu at 0), ``p``, and the exact ``mean`` and ``var`` of nu."""

    x: np.ndarray
    h: float
    f0: np.ndarray
    f1: np.ndarray
    m1: np.ndarray
    a0: float
    p: float
    mean: float
    var: float


def rug_row(n_s: int, n_d: int, seed: int = 0) -> np.ndarray:
    """``g = R_{0, .}`` of the rug of ``seed`` as decoderbench builds it (float64; ``g[0] = 1``)."""
    import torch

    from .encoders import PersianRug
    from .hadamard import fwht

    rug = PersianRug(n_s, n_d, seed=seed, device="cpu", dtype=torch.float64)
    m = rug.mask.to(torch.float64).reshape(1, -1)
    g = fwht(m).reshape(-1).numpy() / n_d
    return np.rint(g * n_d) / n_d  # n_d g is an integer vector: remove the transform's round-off


def _values_counts(g: np.ndarray, integer_scale: int | None) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(g, dtype=np.float64)
    g = g[g != 0.0]
    if integer_scale:
        ints, counts = np.unique(np.rint(g * integer_scale).astype(np.int64), return_counts=True)
        return ints / integer_scale, counts
    vals, counts = np.unique(g, return_counts=True)
    return vals, counts


def _grid(vals: np.ndarray, counts: np.ndarray, p: float, M: int, max_points: int):
    """``(h, n, lo, mean, var)``: the grid of the law of ``x + sum_j vals_j x_j`` (counts times each); raises
    :class:`BadInput` when it needs more than ``max_points`` points (cheap: no transform taken)."""
    h = 1.0 / M
    v = p / 3.0 - p * p / 4.0
    mean = 0.5 * p * float(np.dot(vals, counts))
    var = v * float(np.dot(vals * vals, counts))
    sd = math.sqrt(var)
    gmax = float(np.max(np.abs(vals))) if vals.size else 0.0
    support_lo = float(np.dot(np.minimum(vals, 0.0), counts))
    support_hi = float(np.dot(np.maximum(vals, 0.0), counts))
    # the range: 40 SD and 40 of the largest entries beyond the mean (the tails of a sum of bounded terms fall
    # faster than exp(-t / (2 gmax / 3)) past a few SD), clipped to the support, and [0, 1] for u
    lo = max(support_lo, mean - 40.0 * sd - 40.0 * gmax) - 2 * h
    hi = min(support_hi, mean + 40.0 * sd + 40.0 * gmax) + 1.0 + 2 * h
    lo = math.floor(min(lo, -2 * h) * M) / M
    span = hi - lo
    n_need = int(math.ceil(1.5 * span * M))  # headroom against wrap-around
    n = 1 << max(12, (n_need - 1).bit_length())
    if n > max_points:
        raise BadInput(f"the exact interference law needs {n} grid points at M = {M} (range {span:.3g}): more than "
                       f"{max_points}; use a smaller M")
    return h, n, lo, mean, var


def _ipow(z: np.ndarray, k: int) -> np.ndarray:
    """``z ** k`` for an integer ``k >= 1`` by repeated squaring (relative error about ``log2(k)`` ulps; numpy's
    ``z ** k`` agrees to 1e-15). numpy's complex power takes ``exp(k log z)`` from ``k = 100`` on, 15x slower
    than below: on the rug's laws (n_d g has 68-90 distinct values, 16-19 of them 100-202 times) it was half of
    the law's time."""
    out, base = None, z
    while True:
        if k & 1:
            out = base if out is None else out * base
        k >>= 1
        if not k:
            return out
        base = base * base


def interference_law(g: np.ndarray, p: float, M: int = DEFAULT_M, integer_scale: int | None = None,
                     max_points: int = MAX_POINTS) -> Law:
    """The law of ``z = x + nu``, ``nu = sum_j g_j x_j`` (``g`` the off-diagonal entries of one row of ``R``,
    divided by its diagonal; zeros allowed), on a grid of spacing ``1/M``. ``integer_scale``: ``g`` times it is
    an integer vector (the rug: ``n_d``), so its distinct values are found exactly."""
    if not (0 < p <= 1):
        raise BadInput(f"p must lie in (0, 1], got {p!r}")
    vals, counts = _values_counts(g, integer_scale)
    h, n, lo, mean, var = _grid(vals, counts, p, M, max_points)
    x = lo + h * np.arange(n)
    dt = 2.0 * np.pi / (n * h)
    k = np.rint(np.fft.fftfreq(n, d=1.0 / n)).astype(np.int64)  # the DFT's frequencies t0 = k dt, k in [-n/2, n/2)
    a0 = float(np.exp(int(np.sum(counts)) * math.log1p(-p))) if p < 1 else 0.0
    # The grid masses w_j = E[B((nu - x_j) / h)] (B the cubic B-spline kernel, CF sinc(t h / 2pi)^4) have as DFT
    # the aliased sum over n of phi_c(t + 2 pi n / h) sinc^4; the kernel's CF falls as t^-4, so n in -1..1 leaves
    # an error below 1e-3 of the CF at the band edge (dropping the aliases would leave Gibbs ripples, whose
    # positive half piles up spurious mass in the far tails). The frequencies t = j dt, j = k + shift n, cover
    # |j| <= 3n/2; nu is real, so phi(-t) = conj(phi(t)) and the product is taken once per j = 1 .. 3n/2.
    jmax = 3 * n // 2
    tt = dt * np.arange(1, jmax + 1, dtype=np.float64)
    prod = np.ones(tt.shape, dtype=np.complex128)
    for val, cnt in zip(vals, counts):
        # each term's CF 1 - p + p (exp(i a) - 1) / (i a), a = val t: real sine and cosine (a series for small
        # a), multiplied in (a product of factors of modulus at most 1: no overflow, underflow is to 0)
        a = val * tt
        small = np.abs(a) < 1e-4
        with np.errstate(divide="ignore", invalid="ignore"):
            re = np.where(small, 1.0 - a * a / 6.0, np.sin(a) / a)
            im = np.where(small, 0.5 * a, (1.0 - np.cos(a)) / a)
        factor = (1.0 - p + p * re) + 1j * (p * im)
        prod *= factor if cnt == 1 else _ipow(factor, int(cnt))
    spec = np.zeros(n, dtype=np.complex128)
    for shift in (-1, 0, 1):
        j = k + shift * n
        t = dt * j
        phi = np.ones(n, dtype=np.complex128)  # phi(0) = 1
        pos, neg = j > 0, j < 0
        phi[pos] = prod[j[pos] - 1]
        phi[neg] = np.conj(prod[-j[neg] - 1])
        spec += (phi - a0) * np.sinc(t * h / (2.0 * np.pi)) ** 4 * np.exp(-1j * t * lo)
    w = np.real(np.fft.fft(spec)) / n  # masses of nu's continuous part on the grid, atom out
    w = np.maximum(w, 0.0)  # round-off only
    f0 = w / h
    # f1 = F(z) - F(z - 1), m1 = z (F(z) - F(z - 1)) - (G(z) - G(z - 1)) with F, G the trapezoid primitives
    F = np.concatenate([[0.0], np.cumsum(0.5 * (f0[1:] + f0[:-1]) * h)])
    xf = x * f0
    G = np.concatenate([[0.0], np.cumsum(0.5 * (xf[1:] + xf[:-1]) * h)])
    Fm, Gm = np.zeros(n), np.zeros(n)
    Fm[M:], Gm[M:] = F[:-M], G[:-M]
    f1 = F - Fm
    m1 = x * f1 - (G - Gm)
    box = ((x >= -0.5 * h) & (x <= 1.0 + 0.5 * h)).astype(np.float64)
    box[np.abs(x) < 0.5 * h] = 0.5  # the box's edges sit on grid points: half weight there (trapezoid at a jump)
    box[np.abs(x - 1.0) < 0.5 * h] = 0.5
    f1 = f1 + a0 * box
    m1 = m1 + a0 * np.clip(x, 0.0, 1.0) * box
    return Law(x=x, h=h, f0=f0, f1=np.maximum(f1, 0.0), m1=np.maximum(m1, 0.0), a0=a0, p=p, mean=mean, var=var)


def _trapz(y: np.ndarray, h: float) -> float:
    return float(h * (np.sum(y) - 0.5 * (y[0] + y[-1])))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    ok = den > 1e-300
    out[ok] = num[ok] / den[ok]
    return out


def mmse_elementwise_exact(law: Law) -> float:
    """``p/3 - int (p m1)^2 / ((1 - p) f0 + p f1) dz``: the loss of E[x | z] under the exact law."""
    p = law.p
    return p / 3.0 - _trapz(_ratio((p * law.m1) ** 2, (1.0 - p) * law.f0 + p * law.f1), law.h)


def e2_bound_exact(law: Law) -> float:
    """``p (1/3 - int m1^2 / f1 dz)``: the appendix E.2 bound under the exact law."""
    return law.p * (1.0 / 3.0 - _trapz(_ratio(law.m1 ** 2, law.f1), law.h))


def activation_loss(law: Law, act) -> float:
    """``E[(x - act(z))^2]`` under the exact law, for an elementwise ``act`` (numpy in, numpy out)."""
    p, y, y0 = law.p, act(law.x), float(act(np.zeros(1))[0])
    dens = (1.0 - p) * law.f0 + p * law.f1
    return p / 3.0 + _trapz(dens * y * y - 2.0 * p * law.m1 * y, law.h) + (1.0 - p) * law.a0 * y0 * y0


def relu_theory_exact(law: Law, start: tuple[float, float]) -> tuple[float, float, float]:
    """``(loss, a, b)``: the least ``E[(x - ReLU(a z + b))^2]`` under the exact law, from ``start``."""
    from scipy.optimize import minimize

    def f(ab):
        a, b = ab
        return activation_loss(law, lambda z: np.maximum(a * z + b, 0.0))

    best = minimize(f, np.asarray(start, dtype=float), method="Nelder-Mead",
                    options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 4000})
    return float(best.fun), float(best.x[0]), float(best.x[1])


def conditional_mean_table(law: Law) -> tuple[np.ndarray, np.ndarray]:
    """``(z, E[x | z])`` on the law's grid (continuous part; at ``z = 0`` exactly the atom says x = 0 with the
    off-feature's weight, which the table's interpolation ignores: a set of measure zero for on-features)."""
    p = law.p
    return law.x, _ratio(p * law.m1, (1.0 - p) * law.f0 + p * law.f1)


def exact_references(n_s: int, n_d: int, p: float, seed: int = 0, M: int = DEFAULT_M,
                     max_points: int = MAX_POINTS) -> dict:
    """The exact references of the rug of ``seed``: ``mmse_elementwise_exact``, ``e2_bound_exact``,
    ``relu_theory_exact`` with ``relu_a_exact``, ``relu_b_exact``, and ``exact_grid_h``, ``exact_atom``."""
    from .theory import cell_theory

    t = cell_theory(n_s, n_d, p)
    g = rug_row(n_s, n_d, seed).copy()
    g[0] = 0.0  # R_ii = 1 is the signal, not interference
    law = interference_law(g, p, M=M, integer_scale=n_d, max_points=max_points)
    start = (t["relu_a"], t["relu_b"] - t["relu_a"] * law.mean)
    relu, a, b = relu_theory_exact(law, start)
    return {"seed": seed, "mmse_elementwise_exact": mmse_elementwise_exact(law), "e2_bound_exact": e2_bound_exact(law),
            "relu_theory_exact": relu, "relu_a_exact": a, "relu_b_exact": b, "interference_mean": law.mean,
            "interference_sd": math.sqrt(law.var), "exact_atom": law.a0, "exact_grid_h": law.h}


def references_for_weights(W, p: float, rows=None, M: int = 512, max_points: int = MAX_POINTS) -> dict:
    """Exact elementwise MMSE and E.2 bound of a fixed ``W`` (``n_s x n_s``, e.g. a trained ``W_out W_in``),
    averaged over ``rows`` (default: every row): row ``i`` sees ``z_i / W_ii = x_i + sum_{j != i} (W_ij / W_ii)
    x_j``. Rows with ``|W_ii|`` at most ``NOT_ENCODED`` times the median ``|W_ii|`` (features never encoded: their
    own signal is lost in the interference) count at the loss of the best constant, ``v = p/3 - p^2/4``, and
    are reported. ``max_points`` bounds each row's grid (a law wider than ``max_points / M`` raises
    :class:`BadInput` before any transform is taken)."""
    W = np.asarray(W, dtype=np.float64)
    n = W.shape[0]
    idx = range(n) if rows is None else rows
    mm, e2, dead = [], [], 0
    v = p / 3.0 - p * p / 4.0
    floor = NOT_ENCODED * float(np.median(np.abs(np.diag(W))))
    for i in idx:  # every row's grid first: a law too wide fails before any transform is taken
        if abs(W[i, i]) > floor:
            _grid(*_values_counts(np.delete(W[i], i) / W[i, i], None), p, M, max_points)
    for i in idx:
        d = W[i, i]
        if not abs(d) > floor:  # (a large negative W_ii carries the feature, inverted: z_i / W_ii undoes it)
            dead += 1
            mm.append(v)
            e2.append(p * (1.0 / 3.0 - 0.25))
            continue
        g = np.delete(W[i], i) / d
        law = interference_law(g, p, M=M, max_points=max_points)
        mm.append(mmse_elementwise_exact(law))
        e2.append(e2_bound_exact(law))
    return {"mmse_elementwise_exact": float(np.mean(mm)), "e2_bound_exact": float(np.mean(e2)),
            "rows": len(mm), "rows_not_encoded": dead,
            "mmse_row_sd": float(np.std(mm, ddof=1)) if len(mm) > 1 else 0.0}
