"""Tests for decoderbench.model.theory: per-cell bounds and predictions by quadrature.

Independent references: nested scipy quadrature of the posterior (no use of the closed forms or of
decoderbench.model.channel), scipy dblquad for the ReLU loss, and the SCIENCE.md reference values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from decoderbench.model import theory as T

P_REF, R_REF, NS_REF, ND_REF = 0.045, 0.25, 4096, 1024


def _sig4(x: float) -> float:
    return float(f"{x:.4g}")


def _nested_quad(p: float, s: float, part: str) -> float:
    """int dy of p_Y(y) Var(x|y) ('mmse') or of p Z(y) Var(u|y, on) ('e2'), by nested scipy quad."""

    def phis(z):
        return math.exp(-0.5 * (z / s) ** 2) / (s * math.sqrt(2 * math.pi))

    def inner(y):
        lo, hi = max(0.0, y - 40 * s), min(1.0, y + 40 * s)
        if lo >= hi:
            lo, hi = (0.0, min(1.0, 40 * s)) if y < 0 else (max(0.0, 1 - 40 * s), 1.0)
        pts = [q for q in (y - s, y, y + s) if lo < q < hi] or None
        kw = dict(points=pts, epsabs=0.0, epsrel=1e-12, limit=200)
        z0 = integrate.quad(lambda u: phis(y - u), lo, hi, **kw)[0]
        if z0 == 0.0:
            return 0.0
        z1 = integrate.quad(lambda u: u * phis(y - u), lo, hi, **kw)[0]
        if part == "e2":
            mu = z1 / z0
            return p * integrate.quad(lambda u: (u - mu) ** 2 * phis(y - u), lo, hi, **kw)[0]
        off = (1 - p) * phis(y)
        m = p * z1 / (p * z0 + off)
        return p * integrate.quad(lambda u: (u - m) ** 2 * phis(y - u), lo, hi, **kw)[0] + off * m * m

    edges = sorted({-14 * s, 1 + 14 * s, *[k * s for k in range(-14, 15)], *[1 + k * s for k in range(-14, 15)]})
    return sum(integrate.quad(inner, a, b, epsabs=0.0, epsrel=1e-11, limit=200)[0] for a, b in zip(edges, edges[1:]))


# ----------------------------------------------------------------------------- reference cell


@pytest.fixture(scope="module")
def ref_cell():
    return T.cell_theory(NS_REF, ND_REF, P_REF)


def test_reference_cell_matches_science_md(ref_cell):
    c = ref_cell
    assert c["r"] == R_REF and c["n_s"] == NS_REF and c["n_d"] == ND_REF and c["p"] == P_REF
    assert _sig4(c["sigma"]) == 0.2085
    assert _sig4(c["mmse_elementwise"]) == 0.004480
    assert _sig4(c["e2_bound"]) == 0.001220
    assert _sig4(c["relu_theory"]) == 0.004856
    assert _sig4(c["relu_a"]) == 1.289
    assert round(c["relu_b"], 3) == -0.446
    assert _sig4(c["linear"]) == 0.01087
    assert c["trivial"] == pytest.approx(0.015, rel=1e-15)
    assert c["mu"] == pytest.approx(-P_REF / 2, rel=1e-15)
    assert c["mu_col0"] == pytest.approx(P_REF / 2 * (NS_REF / ND_REF - 1), rel=1e-15)
    assert c["vamp_se"] == 0.0 and c["amp_se"] == 0.0


def test_cell_theory_types_keys_and_cache(ref_cell):
    keys = {"n_s", "n_d", "p", "r", "sigma", "mu", "mu_col0", "trivial", "linear", "mmse_elementwise",
            "e2_bound", "relu_theory", "relu_a", "relu_b", "vamp_se", "amp_se"}
    assert set(ref_cell) == keys
    assert type(ref_cell["n_s"]) is int and type(ref_cell["n_d"]) is int
    for k in keys - {"n_s", "n_d"}:
        assert type(ref_cell[k]) is float, k
        assert math.isfinite(ref_cell[k]), k
    again = T.cell_theory(NS_REF, ND_REF, P_REF)
    assert again == ref_cell and again is not ref_cell
    again["sigma"] = -1.0  # mutating a returned dict must not touch the cache
    assert T.cell_theory(NS_REF, ND_REF, P_REF)["sigma"] == ref_cell["sigma"]
    assert T.cell_theory(4096.0, 1024.0, 0.045) == ref_cell  # integral floats are accepted


# ----------------------------------------------------------------------------- scalar MMSE and E.2


@pytest.mark.parametrize("p, s", [(0.045, 0.2085), (1e-3, 0.05), (1.0, 1.0)])
def test_scalar_mmse_and_e2_match_nested_quad(p, s):
    assert T.scalar_mmse(p, s) == pytest.approx(_nested_quad(p, s, "mmse"), rel=1e-8)
    assert T.e2_bound(p, s) == pytest.approx(_nested_quad(p, s, "e2"), rel=1e-8)


def test_scalar_mmse_limits_and_monotonicity():
    for p in (1e-3, 0.045, 0.5, 1.0):
        v = T.feature_variance(p)
        # sigma -> inf: the posterior is the prior
        assert T.scalar_mmse(p, 1e2) == pytest.approx(v, rel=1e-4)
        assert T.scalar_mmse(p, 1e2) < v
        # sigma -> 0: only the on features' Gaussian jitter remains, p sigma^2 (1 + O(sigma))
        assert T.scalar_mmse(p, 1e-6) == pytest.approx(p * 1e-12, rel=1e-4)
        sig = np.logspace(-6, 2, 33)
        m = np.array([T.scalar_mmse(p, float(s)) for s in sig])
        assert np.all(np.diff(m) > 0) and np.all(m > 0)
        # never the cancelling form's negative values, and E.2 is the on-part of the MMSE
        e2 = np.array([T.e2_bound(p, float(s)) for s in sig])
        assert np.all(e2 > 0) and np.all(e2 <= m * (1 + 1e-12))
    # p = 1: always on, so the MMSE is the E.2 bound itself
    assert T.scalar_mmse(1.0, 0.3) == pytest.approx(T.e2_bound(1.0, 0.3), rel=1e-13)


def test_mmse_form_agrees_with_second_moment_form_where_it_is_safe():
    """E[x^2] - E[(E[x|y])^2] agrees at moderate sigma (it cancels badly only at small sigma)."""
    import torch

    from decoderbench.model import channel

    p, s = 0.1, 0.3
    nodes, w = T._y_rule(s)
    t = torch.from_numpy(np.array(nodes))
    mean, _ = channel.conditional_moments(t, p, 0.0, s)
    q = channel._posterior_parts(t, torch.full_like(t, s), p)
    dens = np.exp(q["log_on"].numpy()) / q["p_on"].numpy()  # p_Y(y) = p Z / P(on|y)
    alt = p / 3 - float(np.dot(w, dens * mean.numpy() ** 2))
    assert T.scalar_mmse(p, s) == pytest.approx(alt, rel=1e-9)


# ----------------------------------------------------------------------------- ReLU theory


def test_relu_loss_matches_dblquad_and_is_a_local_minimum():
    p, s = P_REF, T.interference_sigma(NS_REF, ND_REF, P_REF)
    loss, a, b = T.relu_theory(p, s)

    def on(nu, u):
        return math.exp(-0.5 * (nu / s) ** 2) / (s * math.sqrt(2 * math.pi)) * (u - max(0.0, a * (u + nu) + b)) ** 2

    on_part = integrate.dblquad(on, 0.0, 1.0, -12 * s, 12 * s, epsabs=1e-13, epsrel=1e-10)[0]
    off_part = integrate.quad(lambda nu: math.exp(-0.5 * (nu / s) ** 2) / (s * math.sqrt(2 * math.pi))
                              * max(0.0, a * nu + b) ** 2, -12 * s, 12 * s, points=[-b / a], epsabs=1e-15)[0]
    assert loss == pytest.approx(p * on_part + (1 - p) * off_part, rel=1e-7)
    # gradient ~ 0 and no lower loss nearby
    _, g = T.relu_loss(p, s, a, b, grad=True)
    assert np.max(np.abs(g)) < 1e-8
    for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3), (1e-3, -1e-3), (-1e-3, 1e-3)]:
        assert T.relu_loss(p, s, a + da, b + db) > loss


def test_relu_gradient_matches_finite_differences():
    p, s, a, b = 0.1, 0.15, 1.3, -0.2
    _, g = T.relu_loss(p, s, a, b, grad=True)
    h = 1e-6
    ga = (T.relu_loss(p, s, a + h, b) - T.relu_loss(p, s, a - h, b)) / (2 * h)
    gb = (T.relu_loss(p, s, a, b + h) - T.relu_loss(p, s, a, b - h)) / (2 * h)
    assert g[0] == pytest.approx(ga, rel=1e-6) and g[1] == pytest.approx(gb, rel=1e-6)


@pytest.mark.parametrize("p, r", [(0.01, 0.1), (0.2, 0.5), (1.0, 0.9)])
def test_relu_theory_beats_a_grid_search(p, r):
    s = math.sqrt(T.feature_variance(p) * (1 / r - 1))
    loss, _, _ = T.relu_theory(p, s)
    grid = min(T.relu_loss(p, s, a, -a * th) for a in np.linspace(0.3, 3.0, 19) for th in np.linspace(-0.6, 1.0, 33))
    assert loss <= grid


# ----------------------------------------------------------------------------- ordering of bounds


@pytest.mark.parametrize("n_s, n_d, p", [(4096, 1024, 0.045), (1024, 100, 0.01), (256, 192, 0.3),
                                         (64, 16, 0.1), (2048, 1024, 1.0), (256, 64, 0.3),
                                         (8192, 82, 0.002)])
def test_bounds_are_ordered(n_s, n_d, p):
    c = T.cell_theory(n_s, n_d, p)
    assert 0 < c["e2_bound"] <= c["mmse_elementwise"] <= c["relu_theory"] <= c["linear"] < c["trivial"]
    # VAMP's first step from the uninformed start is the elementwise MMSE at the rug's sigma
    # (1/g1 = v (1/r - 1) = sigma^2), and the iteration only improves on it
    assert T.vamp_se(p, c["r"], max_iter=1).mse == pytest.approx(c["mmse_elementwise"], rel=1e-12)
    assert c["vamp_se"] <= c["mmse_elementwise"] * (1 + 1e-12)
    # the best elementwise linear map on the rug, v sigma^2 / (v + sigma^2), is the rank-n_d optimum
    v = T.feature_variance(p)
    assert c["linear"] == pytest.approx(v * c["sigma"] ** 2 / (v + c["sigma"] ** 2), rel=1e-12)


def test_interference_formulas():
    assert T.interference_sigma(4096, 1024, 0.045) == pytest.approx(math.sqrt((4 * 0.045 - 3 * 0.045**2) / 12 * 3))
    assert T.interference_mean(4096, 1024, 0.045, col0=False) == pytest.approx(-0.0225)
    assert T.interference_mean(4096, 1024, 0.045, col0=True) == pytest.approx(0.0225 * 3)
    assert T.best_linear(0.045, 0.25) == pytest.approx(0.0108703125, rel=1e-14)
    assert T.trivial(0.3) == pytest.approx(0.1, rel=1e-14)


# ----------------------------------------------------------------------------- state evolution


@pytest.mark.parametrize("p, r, expected", [(0.05, 0.1, 0.00972), (0.08, 0.1, 0.0195)])
def test_vamp_se_reproduces_direct_runs(p, r, expected):
    res = T.vamp_se(p, r)
    assert res.converged and res.mse == pytest.approx(expected, rel=5e-3)
    assert T.vamp_se_mse(p, r) == res.mse
    # a genuine fixed point of E1 = mmse(1/sqrt(g1)) with 1/E1 = g1 / r
    assert T.scalar_mmse(p, math.sqrt(res.mse / r)) == pytest.approx(res.mse, rel=1e-7)


def test_vamp_se_exact_recovery():
    res = T.vamp_se(0.045, 0.25)
    assert res.converged and res.mse == 0.0 and res.iterations < 100


def test_amp_se_recovers_and_stalls():
    assert T.amp_se(0.01, 0.5).mse == 0.0
    assert T.amp_se_mse(0.045, 0.25) == 0.0
    stalled = T.amp_se(0.3, 0.1)
    assert stalled.converged and stalled.mse > 0.5 * T.feature_variance(0.3)
    # noiseless: AMP and VAMP SE share the fixed-point equation mmse(tau) = r tau^2, both from above
    for p, r in [(0.05, 0.1), (0.3, 0.1)]:
        assert T.amp_se(p, r).mse == pytest.approx(T.vamp_se(p, r).mse, rel=1e-6)
    # and the loss falls as r grows
    losses = [T.amp_se(0.1, r).mse for r in (0.05, 0.1, 0.2)]
    assert losses[0] > losses[1] > losses[2]


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: T.cell_theory(1000, 100, 0.1), "n_s"),
        (lambda: T.cell_theory(1024, 0, 0.1), "n_d"),
        (lambda: T.cell_theory(1024, 1024, 0.1), "n_d"),
        (lambda: T.cell_theory(1024, 100, 0.0), "p"),
        (lambda: T.cell_theory(1024, 100, 1.1), "p"),
        (lambda: T.scalar_mmse(0.1, 0.0), "sigma"),
        (lambda: T.scalar_mmse(0.1, float("inf")), "sigma"),
        (lambda: T.e2_bound(-0.1, 0.2), "p"),
        (lambda: T.relu_theory(0.1, -1.0), "sigma"),
        (lambda: T.vamp_se(0.1, 1.0), "r"),
        (lambda: T.amp_se(0.1, 0.0), "r"),
        (lambda: T.best_linear(0.1, 2.0), "r"),
        (lambda: T.interference_sigma(64, 64, 0.1), "n_d"),
        (lambda: T.interference_mean(3, 1, 0.1, col0=False), "n_s"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()
