"""Tests for decoderbench.model.channel: posterior moments of y = x + nu, x = c u, nu ~ N(mu, sigma^2).

References are independent of the implementation:
* mpmath at 80 digits with the closed forms of SCIENCE.md (cancellation is harmless at that precision,
  and mpmath's exponent range covers densities like exp(-5e13)), over the full |t| <= 1e3,
  1e-4 <= sigma <= 1e2 range;
* scipy.integrate.quad of the posterior over u (float64) where plain quadrature is reliable.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import integrate

from decoderbench.model.channel import conditional_mean, conditional_moments, posterior_on

SIGMAS = [1e-4, 1e-3, 0.03, 0.2085, 1.0, 5.0, 100.0]
PS = [1e-3, 0.045, 0.5, 1.0]
T_FIXED = [-1e3, -30.0, -1.0, -0.2, -1e-3, 0.0, 0.3, 0.5, 0.5001, 0.9, 1.0, 1.01, 2.0, 50.0, 1e3]
K_SIGMA = [3.0, 7.9, 8.1, 20.0]  # t = -k sigma and 1 + k sigma: both sides of the branch switch


def _t_grid(s: float) -> list[float]:
    ts = list(T_FIXED)
    for k in K_SIGMA:
        for t in (-k * s, 1.0 + k * s):
            if abs(t) <= 1e3:
                ts.append(t)
    return ts


def _mp_reference(t: float, s: float, p: float) -> tuple[mp.mpf, mp.mpf, mp.mpf]:
    """(E[x|t], Var[x|t], P(on|t)) from the closed forms at 80 digits."""
    with mp.workdps(80):
        t, s, p = mp.mpf(t), mp.mpf(s), mp.mpf(p)
        a, b = -t / s, (1 - t) / s

        def q(x):  # upper tail
            return mp.erfc(x / mp.sqrt(2)) / 2

        def phi(x):
            return mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)

        if a > 0:
            z = q(a) - q(b)
        elif b < 0:
            z = q(-b) - q(-a)
        else:
            z = 1 - q(b) - q(-a)
        ratio = (phi(a) - phi(b)) / z
        e_on = t + s * ratio
        v_on = s**2 * (1 + (a * phi(a) - b * phi(b)) / z - ratio**2)
        on = p * z
        off = (1 - p) * phi(t / s) / s
        p_on = on / (on + off)
        return p_on * e_on, p_on * (v_on + (1 - p_on) * e_on**2), p_on


def _quad_reference(t: float, s: float, p: float) -> tuple[float, float]:
    """(E[x|t], Var[x|t]) by scipy quad of the posterior over u, float64."""

    def dens(u):
        return math.exp(-0.5 * ((t - u) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    pts = [q for q in (t - 3 * s, t, t + 3 * s) if 0 < q < 1] or None
    kw = dict(points=pts, epsabs=0.0, epsrel=1e-13, limit=200)
    z0 = integrate.quad(dens, 0, 1, **kw)[0]
    z1 = integrate.quad(lambda u: u * dens(u), 0, 1, **kw)[0]
    off = (1 - p) * dens(0.0)
    py = p * z0 + off
    m = p * z1 / py
    var = (p * integrate.quad(lambda u: (u - m) ** 2 * dens(u), 0, 1, **kw)[0] + off * m * m) / py
    return m, var


@pytest.fixture(scope="module")
def mp_table():
    """Reference values on the whole grid (computed once)."""
    rows = []
    for s in SIGMAS:
        for t in _t_grid(s):
            for p in PS:
                m, v, pon = _mp_reference(t, s, p)
                rows.append((t, s, p, m, v, pon))
    return rows


def _close(x: float, ref, rtol: float, atol: float) -> bool:
    ref = float(ref)  # values below float64's range become 0.0, as they must in the output
    return abs(x - ref) <= rtol * abs(ref) + atol


def test_float64_matches_mpmath_on_full_grid(mp_table):
    bad = []
    for s in SIGMAS:
        rows = [row for row in mp_table if row[1] == s]
        for p in PS:
            sub = [row for row in rows if row[2] == p]
            y = torch.tensor([row[0] for row in sub], dtype=torch.float64)
            mean, var = conditional_moments(y, p, 0.0, s)
            pon = posterior_on(y, p, 0.0, s)
            for i, (t, _, _, m, v, pr) in enumerate(sub):
                if not _close(float(mean[i]), m, 1e-9, 1e-300):
                    bad.append(("mean", t, s, p, float(mean[i]), float(m)))
                if not _close(float(var[i]), v, 1e-8, 1e-300):
                    bad.append(("var", t, s, p, float(var[i]), float(v)))
                if not _close(float(pon[i]), pr, 1e-9, 1e-300):
                    bad.append(("p_on", t, s, p, float(pon[i]), float(pr)))
    assert not bad, bad[:10]


@pytest.mark.parametrize("precise", [True, False], ids=["reference", "fast"])
def test_float32_is_the_rounded_float64_answer(mp_table, precise):
    """float32 in, float32 out: finite, and equal to the exact answer at the float32 input (the
    reference to 1e-6; the fast path within its stated bounds, values below 1e-30 returned as 0)."""
    rm, rv, atol = (1e-6, 1e-6, 1e-37) if precise else (FAST_RTOL_MEAN, FAST_RTOL_VAR, 1e-30)
    bad = []
    for s in SIGMAS:
        for p in PS:
            ts = sorted({row[0] for row in mp_table if row[1] == s})
            y32 = torch.tensor(ts, dtype=torch.float32)
            mean, var = conditional_moments(y32, p, 0.0, s, precise=precise)
            assert mean.dtype == torch.float32 and var.dtype == torch.float32
            assert torch.isfinite(mean).all() and torch.isfinite(var).all()
            for i, t32 in enumerate(y32.tolist()):
                m, v, _ = _mp_reference(t32, s, p)
                if not _close(float(mean[i]), m, rm, atol):
                    bad.append(("mean", t32, s, p, float(mean[i]), float(m)))
                if not _close(float(var[i]), v, rv, atol):
                    bad.append(("var", t32, s, p, float(var[i]), float(v)))
    assert not bad, bad[:10]


@pytest.mark.parametrize("s", [1e-3, 0.05, 0.2085, 1.0, 5.0])
@pytest.mark.parametrize("p", [1e-3, 0.045, 1.0])
def test_matches_scipy_quad_of_posterior(s, p):
    ts = [-3 * s, -0.5 * s, 0.0, 0.1, 0.5, 0.77, 1.0, 1.0 + 2 * s, 1.0 + 4 * s]
    y = torch.tensor(ts, dtype=torch.float64)
    mean, var = conditional_moments(y, p, 0.0, s)
    for i, t in enumerate(ts):
        m, v = _quad_reference(t, s, p)
        assert mean[i].item() == pytest.approx(m, rel=1e-8, abs=1e-300), (t, s, p)
        assert var[i].item() == pytest.approx(v, rel=1e-7, abs=1e-300), (t, s, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_and_in_range_everywhere(dtype):
    y = torch.cat([torch.linspace(-1e3, 1e3, 4001), torch.linspace(-2.0, 3.0, 2001)]).to(dtype)
    for s in np.logspace(-4, 2, 13):
        for p in (1e-3, 0.045, 0.5, 1.0):
            mean, var = conditional_moments(y, p, 0.0, float(s))
            assert mean.dtype == dtype and var.dtype == dtype
            assert torch.isfinite(mean).all() and torch.isfinite(var).all(), (s, p)
            assert (mean >= 0).all() and (mean <= 1).all(), (s, p)
            assert (var >= 0).all() and (var <= 0.25).all(), (s, p)


def test_tensor_sigma_and_mu_broadcast_like_scalars():
    y = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    sig = torch.tensor([[1e-3], [0.2], [30.0]], dtype=torch.float64)
    mu = torch.tensor([0.0, 0.1, -0.3, 0.0, 0.05, 1.0, -2.0], dtype=torch.float64)
    mean, var = conditional_moments(y, 0.1, mu, sig)
    assert mean.shape == (3, 7) and var.shape == (3, 7)
    for i in range(3):
        for j in range(7):
            m1, v1 = conditional_moments(y[j:j + 1], 0.1, float(mu[j]), float(sig[i, 0]))
            assert mean[i, j].item() == pytest.approx(m1.item(), rel=1e-13, abs=0)
            assert var[i, j].item() == pytest.approx(v1.item(), rel=1e-12, abs=0)


def test_mu_only_shifts_y():
    y = torch.linspace(-0.5, 1.5, 41, dtype=torch.float64)
    a = conditional_moments(y, 0.045, -0.0225, 0.2085)
    b = conditional_moments(y + 0.0225, 0.045, 0.0, 0.2085)
    assert torch.allclose(a[0], b[0], rtol=1e-13, atol=0) and torch.allclose(a[1], b[1], rtol=1e-12, atol=0)


def test_conditional_mean_is_first_moment_and_p_on_limits():
    y = torch.linspace(-0.5, 1.5, 21, dtype=torch.float64)
    assert torch.equal(conditional_mean(y, 0.1, 0.0, 0.3), conditional_moments(y, 0.1, 0.0, 0.3)[0])
    assert torch.equal(posterior_on(y, 1.0, 0.0, 0.3), torch.ones_like(y))
    pon = posterior_on(y, 0.1, 0.0, 0.3)
    assert (pon > 0).all() and (pon < 1).all() and (torch.diff(pon) > 0).all()  # on-odds grow with y here


def test_reflection_symmetry_when_always_on():
    """With p = 1, u -> 1 - u maps t -> 1 - t: E[x|t] = 1 - E[x|1-t], equal variances."""
    t = torch.tensor([-50.0, -1.0, -0.1, 0.2, 0.45, 0.7, 1.3, 40.0], dtype=torch.float64)
    for s in (1e-4, 0.05, 2.0, 100.0):
        m1, v1 = conditional_moments(t, 1.0, 0.0, s)
        m2, v2 = conditional_moments(1.0 - t, 1.0, 0.0, s)
        assert torch.allclose(m1, 1.0 - m2, rtol=0, atol=1e-14)
        assert torch.allclose(v1, v2, rtol=1e-10, atol=0)


def test_small_noise_limits():
    """sigma -> 0 inside (0, 1) with p = 1: mean -> t, variance -> sigma^2."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    m, v = conditional_moments(t, 1.0, 0.0, 1e-4)
    assert torch.allclose(m, t, rtol=0, atol=1e-15)
    assert torch.allclose(v, torch.full_like(t, 1e-8), rtol=1e-12, atol=0)
    # far below 0, the posterior of u is ~ exponential with rate |t|/sigma^2: mean sigma^2/|t|
    m, v = conditional_moments(torch.tensor([-1e3], dtype=torch.float64), 1.0, 0.0, 1e-4)
    assert m.item() == pytest.approx(1e-8 / 1e3, rel=1e-6)
    assert v.item() == pytest.approx((1e-8 / 1e3) ** 2, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(p=0.0, mu=0.0, sigma=0.1), "p"),
        (dict(p=1.5, mu=0.0, sigma=0.1), "p"),
        (dict(p=float("nan"), mu=0.0, sigma=0.1), "p"),
        (dict(p=0.1, mu=0.0, sigma=0.0), "sigma"),
        (dict(p=0.1, mu=0.0, sigma=-1.0), "sigma"),
        (dict(p=0.1, mu=0.0, sigma=torch.tensor([0.1, 0.0])), "sigma"),
        (dict(p=0.1, mu=0.0, sigma=torch.tensor([0.1, float("nan")])), "sigma"),
        (dict(p=0.1, mu=0.0, sigma=torch.tensor([[float("inf")], [0.2]])), "sigma"),
        (dict(p=0.1, mu=0.0, sigma=torch.tensor([], dtype=torch.float64)), "sigma"),
        (dict(p=0.1, mu=float("inf"), sigma=0.1), "mu"),
        (dict(p=0.1, mu=torch.tensor([0.0, float("nan")]), sigma=0.1), "mu"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    y = torch.zeros(2)
    with pytest.raises(ValueError, match=name):
        conditional_moments(y, **kwargs)


# --- the blocked implementation: depth table, block layouts, outputs --------------------------------

from decoderbench.model import channel  # noqa: E402


@pytest.mark.parametrize("x0, depth", channel._CF_DEPTHS)
def test_continued_fraction_depth_table_is_float64_accurate(x0, depth):
    """J_k(x) = int_0^inf v^k exp(-x v - v^2/2) dv at the smallest x each depth is used for."""
    for x in (x0, 1.5 * x0):
        j = channel._mills_j(torch.tensor([x], dtype=torch.float64), depth)
        with mp.workdps(40):
            for k in range(3):
                ref = mp.quad(lambda v: v**k * mp.exp(-x * v - v * v / 2), [0, 1 / mp.mpf(x), 10 / mp.mpf(x), mp.inf])
                assert abs(float(j[k]) - float(ref)) <= 2e-15 * float(ref), (x, depth, k)


def _layout_input(s: float) -> torch.Tensor:
    """256 values of t for blocks of 64: all direct, all continued fraction (that branch alone),
    4 and 40 of 64 continued fraction (gathered from both blocks and evaluated at the end)."""
    g = torch.Generator().manual_seed(7)

    def main(k):
        return (-7.9 * s + (1.0 + 15.8 * s) * torch.rand(k, generator=g, dtype=torch.float64))

    def tail(k):
        u = torch.rand(k, generator=g, dtype=torch.float64)
        far = s * torch.exp(math.log(8.01) + (math.log(1e3 / s) - math.log(8.01)) * u)  # 8.01 s .. 1e3
        far = far.clamp(max=1e3)
        return torch.where(torch.rand(k, generator=g) < 0.5, -far, 1.0 + far)

    blocks = [main(64), tail(64), torch.cat([main(60), tail(4)]), torch.cat([main(24), tail(40)])]
    return torch.cat([b[torch.randperm(64, generator=g)] for b in blocks])


@pytest.mark.parametrize("s", [1e-3, 0.2085, 0.7])
@pytest.mark.parametrize("p", [0.045, 1.0])
def test_every_block_layout_matches_mpmath(monkeypatch, s, p):
    y = _layout_input(s)
    whole = conditional_moments(y, p, 0.0, s)  # one block, tail entries gathered
    monkeypatch.setattr(channel, "_CHUNK", 64)
    mean, var = conditional_moments(y, p, 0.0, s)
    pon = posterior_on(y, p, 0.0, s)
    perm = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(1))
    pm, pv = conditional_moments(y[perm], p, 0.0, s)  # other blocks, other paths
    assert torch.allclose(whole[0], mean, rtol=1e-13, atol=0) and torch.allclose(whole[1], var, rtol=1e-12, atol=0)
    assert torch.allclose(pm, mean[perm], rtol=1e-13, atol=0) and torch.allclose(pv, var[perm], rtol=1e-12, atol=0)
    bad = []
    for i in range(0, y.numel(), 3):
        m, v, pr = _mp_reference(float(y[i]), s, p)
        for name, got, ref, tol in (("mean", mean, m, 1e-9), ("var", var, v, 1e-8), ("p_on", pon, pr, 1e-9)):
            if not _close(float(got[i]), ref, tol, 1e-300):
                bad.append((name, float(y[i]), float(got[i]), float(ref)))
    assert not bad, bad[:10]


def test_float32_is_float64_rounded_across_blocks(monkeypatch):
    """precise=True: float32 input through the float64 reference, rounded once."""
    monkeypatch.setattr(channel, "_CHUNK", 64)
    y32 = _layout_input(0.05).float()
    m32, v32 = conditional_moments(y32, 0.045, 0.01, 0.05, precise=True)
    m64, v64 = conditional_moments(y32.double(), 0.045, 0.01, 0.05)
    assert torch.equal(m32, m64.float()) and torch.equal(v32, v64.float())
    assert torch.equal(posterior_on(y32, 0.045, 0.01, 0.05), posterior_on(y32.double(), 0.045, 0.01, 0.05).float())


def test_per_row_sigma_matches_scalar_calls_across_blocks(monkeypatch):
    """sigma of shape (B, 1), as the message-passing decoders pass it; rows include sigma >= 1."""
    monkeypatch.setattr(channel, "_CHUNK", 64)
    sig = torch.tensor([[1e-3], [0.2085], [0.7], [3.0]], dtype=torch.float64)
    y = torch.stack([_layout_input(float(v)) for v in sig[:, 0]])[:, :200]
    mean, var = conditional_moments(y, 0.045, 0.0, sig)
    for i, s in enumerate(sig[:, 0].tolist()):
        m1, v1 = conditional_moments(y[i], 0.045, 0.0, s)
        assert torch.allclose(mean[i], m1, rtol=1e-13, atol=0), s
        assert torch.allclose(var[i], v1, rtol=1e-12, atol=0), s


def test_on_moments_blocked_equals_single_block(monkeypatch):
    """The helper theory.py uses, with tail entries gathered across blocks."""
    t = _layout_input(0.2085)
    s = torch.full_like(t, 0.2085)
    ref = channel._on_moments(t, s)
    monkeypatch.setattr(channel, "_CHUNK", 64)
    got = channel._on_moments(t, s)
    for r, g in zip(ref, got):
        assert torch.allclose(r, g, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------ the fast float32 path
#: Values below 1e-30 come back as exactly 0 (no subnormal numbers: they are ~100x slower).
#: Worst relative errors of the fast path against the float64 reference measured over the grid of
#: test_fast_path_accuracy (61 sigma from 1e-4 to 1e2, p in {1e-3, 0.045, 0.5}, t over [-1e3, 1e3],
#: around [0, 1] and [-3, 4]): mean 4.5e-6, variance 4.8e-5 (at a = -t/sigma just under A_FAST = 2.5,
#: where the closed-form variance cancels most). The bounds below leave a factor of ~2.
FAST_RTOL_MEAN, FAST_RTOL_VAR = 1e-5, 1e-4


def _fast_grid(sig):
    return torch.cat([torch.linspace(-1e3, 1e3, 4001), torch.linspace(-10 * sig, 1 + 10 * sig, 4001),
                      torch.linspace(-3.0, 4.0, 4001)]).float()


@pytest.mark.parametrize("p", [1e-3, 0.045, 0.5])
def test_fast_path_accuracy(p):
    for sig in torch.logspace(-4, 2, 61, dtype=torch.float64).tolist():
        t = _fast_grid(sig)
        m32, v32 = conditional_moments(t, p, 0.0, sig)
        m64, v64 = conditional_moments(t.double(), p, 0.0, sig)
        assert m32.dtype == torch.float32
        # relative error, above the 1e-30 below which the fast path returns 0
        rel_m = ((m32.double() - m64).abs().sub(1e-30).clamp(min=0) / m64.abs().clamp(min=1e-30)).max().item()
        rel_v = ((v32.double() - v64).abs().sub(1e-30).clamp(min=0) / v64.abs().clamp(min=1e-30)).max().item()
        assert rel_m <= FAST_RTOL_MEAN and rel_v <= FAST_RTOL_VAR, (sig, rel_m, rel_v)


def test_fast_path_blocks_rows_and_fallback(monkeypatch):
    """Per-row sigma (some >= 1, some tiny), mu != 0, entries in the fallback branch: the same results
    whatever the block size, and the fallback entries are exactly the reference's, rounded once."""
    g = torch.Generator().manual_seed(3)
    sig = torch.tensor([[1e-3], [0.2085], [0.7], [3.0]])
    y = (torch.rand(4, 300, generator=g) * 3.0 - 1.0).float()
    y[:, :20] = -0.5  # a = 0.5/sigma: far in the fallback range for the small sigmas
    whole = conditional_moments(y, 0.045, 0.01, sig)
    monkeypatch.setattr(channel, "_FAST_CHUNK", 64)
    blocked = conditional_moments(y, 0.045, 0.01, sig)
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])
    ref = conditional_moments(y.double(), 0.045, 0.01, sig.double())
    # rows with sigma >= 1 and the far-tail entries go to the reference: equal after one rounding
    assert torch.equal(whole[0][3], ref[0][3].float()) and torch.equal(whole[1][3], ref[1][3].float())
    assert torch.equal(whole[0][0, :20], ref[0][0, :20].float())
    rel = (whole[0].double() - ref[0]).abs() / ref[0].abs().clamp(min=1e-30)
    assert rel.max().item() <= FAST_RTOL_MEAN


def test_fast_path_declines_what_it_does_not_cover():
    """Scalar sigma >= 1, p = 1 and tensor mu take the reference (the fast path declines them)."""
    y = torch.linspace(-2, 3, 101)
    assert channel._fast_moments(y, 0.1, 0.0, 1.5) is None
    assert channel._fast_moments(y, 1.0, 0.0, 0.2) is None
    assert channel._fast_moments(y, 0.1, torch.zeros(101), 0.2) is None
    assert channel._fast_moments(y, 0.1, 0.0, 0.2) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_out_buffers_give_the_same_numbers(dtype):
    """``out=`` writes into the caller's buffers: bit-identical to the allocating call."""
    g = torch.Generator().manual_seed(5)
    y = (torch.rand(7, 300, generator=g, dtype=torch.float64) * 1.6 - 0.3).to(dtype)
    sigma = torch.rand(7, 1, generator=g, dtype=torch.float64).mul(0.2).add(1e-3).to(dtype)
    m, v = conditional_moments(y, 0.05, 0.0, sigma)
    bufs = (torch.full_like(y, float("nan")), torch.full_like(y, float("nan")))
    m2, v2 = conditional_moments(y, 0.05, 0.0, sigma, out=bufs)
    assert m2 is bufs[0] and v2 is bufs[1]
    assert torch.equal(m, m2) and torch.equal(v, v2)
    with pytest.raises(ValueError, match="out"):
        conditional_moments(y, 0.05, 0.0, sigma, out=(torch.empty(3), torch.empty(3)))
