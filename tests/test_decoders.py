"""The built-in decoders against exact theory (SCIENCE.md), and their fitting machinery.

Statistical checks use fixed seeds and a stated multiple of the standard error (3 SE); the fitting
machinery is checked exactly against brute force. Sizes keep the module to roughly half a minute on
2 CPU cores: the reference cell (n_s = 4096, r = 0.25, p = 0.045) is scored once (2048 evaluation
samples for relu, linear and the oracle: SE about 0.35% of the loss) and shared by the tests.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from decoderbench import PersianRug
from decoderbench.model.channel import conditional_mean
from decoderbench.contract.decoder import Cell, DecoderContext, TrainingSet
from decoderbench.run.runner import WorkUnit, run_unit
from decoderbench.model.theory import cell_theory
from decoderbench_plugins import _fit
from decoderbench_plugins.topk import search_k

REF = (4096, 1024, 0.045)
ELEMENTWISE = ("linear", "relu", "jumprelu", "trec", "prolu", "gated")
FILTERING = ("topk", "batchtopk")
ALL = ELEMENTWISE + FILTERING + ("oracle",)
#: Cells where the Gaussian theory holds (p n_s >= 100), besides the reference cell (p n_s = 184).
BOUND_CELLS = [(1024, 256, 0.1), (512, 256, 0.25)]
K_SE = 3.0


def _row(n_s, n_d, p, name, samples=2048, options=None, seed=0):
    opts = {} if name == "oracle" else (options or {})
    row = run_unit(WorkUnit(n_s, n_d, p, name, seed=seed, min_samples=samples, max_samples=samples,
                            options=json.dumps(opts, sort_keys=True)))
    assert row["status"] == "ok", f"{name}: {row['error']}"
    return row


@pytest.fixture(scope="module")
def ref_rows():
    # 2048 evaluation samples for the three decoders compared with theory, 1024 for the rest
    return {name: _row(*REF, name, samples=2048 if name in ("relu", "linear", "oracle") else 1024) for name in ALL}


@pytest.fixture(scope="module")
def bound_rows(ref_rows):
    rows = {REF: ref_rows}
    for cell in BOUND_CELLS:
        rows[cell] = {name: _row(*cell, name, samples=1024, options={"fit_pairs": 2**18}) for name in ALL}
    return rows


# ----------------------------------------------------------------------------- fitting machinery


def _synthetic(p=0.045, sigma=0.2, mu=-0.02, n=8000, seed=1):
    rng = np.random.default_rng(seed)
    x = (rng.random(n) < p) * rng.random(n)
    return x + rng.normal(mu, sigma, n), x


def _direct(z, x, a, b, t):
    return float(np.mean((x - np.where(z > t, a * z + b, 0.0)) ** 2))


@pytest.mark.parametrize("p,sigma", [(0.045, 0.2), (0.3, 0.1), (0.01, 0.05)])
def test_threshold_fits_are_global_least_squares(p, sigma):
    z, x = _synthetic(p, sigma)
    f = _fit.ThresholdFit(z, x)
    relu, jump, scaled = f.relu(), f.jump(), f.scaled()
    # each reported loss is the loss of the reported parameters (an exact identity)
    assert relu["loss"] == pytest.approx(_direct(z, x, relu["a"], relu["b"], relu["t"]), rel=1e-9)
    assert relu["b"] == pytest.approx(-relu["a"] * relu["t"], rel=1e-12)
    assert jump["loss"] == pytest.approx(_direct(z, x, jump["a"], jump["b"], jump["t"]), rel=1e-9)
    assert jump["theta"] >= 0 and jump["a"] * jump["t"] + jump["b"] == pytest.approx(jump["theta"], abs=1e-12)
    assert scaled["loss"] == pytest.approx(_direct(z, x, scaled["a"], 0.0, scaled["t"]), rel=1e-9)
    assert scaled["t"] >= 0
    for a, b, t in [(1.3, -0.4, 0.3), (0.7, 0.1, -0.2), (2.0, -1.0, 0.9), (0.5, 0.0, -np.inf)]:
        assert f.loss(a, b, t) == pytest.approx(_direct(z, x, a, b, t), rel=1e-9)  # the tail sums are exact
    # nesting: relu is a jumprelu with theta = 0
    assert jump["loss"] <= relu["loss"] * (1 + 1e-12)
    # no point of a dense brute-force grid does better (the grid is evaluated directly, broadcast)
    A = np.linspace(0.2, 2.5, 47)[:, None, None]
    T = np.quantile(z, np.linspace(0.5, 0.999, 40))[None, :, None]
    Z, X = z[None, None, :], x[None, None, :]
    brute_relu = float(np.mean((X - A * np.maximum(Z - T, 0)) ** 2, axis=-1).min())
    brute_scaled = float(np.where(T[..., 0] >= 0, np.mean((X - np.where(Z > T, A * Z, 0)) ** 2, axis=-1), np.inf).min())
    A2, T2 = A[::2], T[:, ::2]
    brute_jump = min(float(np.where((A2 * T2 + b)[..., 0] >= 0,
                                    np.mean((X - np.where(Z > T2, A2 * Z + b, 0)) ** 2, axis=-1), np.inf).min())
                     for b in np.linspace(-1, 0.5, 16))
    assert relu["loss"] <= brute_relu * (1 + 1e-12)
    assert scaled["loss"] <= brute_scaled * (1 + 1e-12)
    assert jump["loss"] <= brute_jump * (1 + 1e-12)


def test_partial_scan_gives_the_full_scan_answer():
    z, x = _synthetic(0.3, 0.1, n=60000)  # optimum threshold deep in the bulk: the scan must widen
    for method in ("relu", "jump", "scaled"):
        full = getattr(_fit.ThresholdFit(z, x), method)()
        part, fitter = _fit.fit_threshold(z, x, method, keep=0.05)
        assert part["loss"] == pytest.approx(full["loss"], rel=1e-12)
        assert part["t"] == pytest.approx(full["t"], rel=1e-9, abs=1e-12)


def test_fits_on_one_stream_share_one_draw_and_match_a_fresh_fit(monkeypatch):
    """relu, jumprelu, gated, trec and prolu draw the same pairs on a cell: fitted one after another in one
    process they share one draw and one fitter (``_fit.fit_pooled``), and each result is what a fit on a fresh
    draw gives, bit for bit. A stream already drawn from, or another cell, is not shared."""
    ctx = _ctx(options={"fit_pairs": 2**17})
    monkeypatch.setattr(_fit, "_SHARED", (None, None, None))
    draws = []
    real = _fit.training_matrix
    monkeypatch.setattr(_fit, "training_matrix", lambda train, n: draws.append(n) or real(train, n))
    shared = {m: _fit.fit_pooled(ctx, TrainingSet(ctx, "z"), m) for m in ("relu", "jump", "scaled", "jump")}
    assert len(draws) == 1
    for m in ("relu", "jump", "scaled"):
        z, x = real(TrainingSet(ctx, "z"), _fit.n_fit_samples(ctx))
        fresh, _ = _fit.fit_threshold(z, x, m, keep=_fit.initial_keep(ctx.p))
        assert shared[m] == {**fresh, "fit_pairs": z.size}
    used = TrainingSet(ctx, "z")
    used.sample(1)
    _fit.fit_pooled(ctx, used, "relu")  # not the stream's first pairs: draws its own
    assert len(draws) == 2
    other = _ctx(n_d=255, options={"fit_pairs": 2**17})  # another cell, same p (same scan)
    _fit.fit_pooled(other, TrainingSet(other, "z"), "relu")
    assert len(draws) == 3

    class Recording(TrainingSet):  # a subclass may draw otherwise: never served a shared fit
        pass

    _fit.fit_pooled(other, Recording(other, "z"), "relu")
    assert len(draws) == 4
    monkeypatch.setattr(_fit, "SHARE_MAX_PAIRS", 2**16)  # a pool above the limit is neither kept nor shared
    for _ in range(2):
        _fit.fit_pooled(ctx, TrainingSet(ctx, "z"), "relu")
    assert len(draws) == 6 and _fit._SHARED == (None, None, None)


def test_shared_fits_do_not_mix_across_threads(monkeypatch):
    """Threads fitting two cells at once each get their own cell's fit (the shared entry is read and replaced
    whole)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(_fit, "_SHARED", (None, None, None))
    cells = [_ctx(n_d=n_d, options={"fit_pairs": 2**15}) for n_d in (256, 200)]
    alone = [_fit.fit_pooled(c, TrainingSet(c, "z"), m) for c in cells for m in ("relu", "jump")]
    jobs = [(c, m) for _ in range(6) for c in cells for m in ("relu", "jump")]
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda cm: _fit.fit_pooled(cm[0], TrainingSet(cm[0], "z"), cm[1]), jobs))
    assert got == alone * 6


def test_search_k_finds_integer_minimum_and_smallest_tie():
    res = lambda v: {"loss": v}  # noqa: E731
    k, r, tried = search_k(lambda k: res((k - 137.0) ** 2 + 5.0), 40, 4096)
    assert k == 137 and r["loss"] == 5.0 and tried < 60
    # a loss that falls and then stays flat: the smallest k of the plateau is reported
    k, r, _ = search_k(lambda k: res(max(0.0, 300.0 - k) + 1.0), 50, 1000)
    assert k == 300 and r["loss"] == 1.0
    k, _, _ = search_k(lambda k: res(abs(k - 1)), 200, 1000)  # edge at 1: the grid widens down
    assert k == 1


# ----------------------------------------------------------------------------- the reference cell


def test_relu_matches_gaussian_theory_at_reference_cell(ref_rows, record_property):
    row = ref_rows["relu"]
    th = cell_theory(*REF)
    departure = row["ratio_predicted"] - 1
    assert row["predicted"] == pytest.approx(th["relu_theory"], rel=1e-12)
    record_property("relu_departure", departure)
    assert abs(departure) < 0.03, f"relu departs {departure:+.2%} from the Gaussian theory"
    prm = row["params"]
    assert abs(prm["a"] / th["relu_a"] - 1) < 0.02, prm
    # the optimal bias for interference mean mu is relu_b - relu_a mu (the fitted b absorbs mu)
    mu = PersianRug(REF[0], REF[1], seed=0).interference(REF[2])[0]
    assert abs(prm["b"] - (th["relu_b"] - th["relu_a"] * mu)) < 0.02, prm


def test_linear_equals_best_linear(ref_rows):
    row = ref_rows["linear"]
    th = cell_theory(*REF)
    assert row["predicted"] == pytest.approx(th["linear"], rel=1e-12)  # v sigma^2 / (v + sigma^2) = v (1 - r)
    assert abs(row["loss"] - th["linear"]) <= K_SE * row["loss_se"], (row["loss"], th["linear"], row["loss_se"])
    # on the rug the pooled least-squares slope is exactly r on any samples (R R = R / r, R symmetric)
    assert row["params"]["a"] == pytest.approx(REF[1] / REF[0], abs=1e-6)


def test_oracle_is_the_best_elementwise_decoder(ref_rows):
    o = ref_rows["oracle"]
    assert o["predicted"] == pytest.approx(cell_theory(*REF)["mmse_elementwise"], rel=1e-12)
    for name in ELEMENTWISE:
        d = ref_rows[name]
        assert o["loss"] <= d["loss"] + K_SE * math.hypot(o["loss_se"], d["loss_se"]), (name, o["loss"], d["loss"])


def test_ratios_are_plain_quotients(ref_rows):
    for row in ref_rows.values():
        assert row["ratio_e2"] == pytest.approx(row["loss"] / row["e2_bound"], rel=1e-12)
        assert row["ratio_mmse"] == pytest.approx(row["loss"] / row["mmse_elementwise"], rel=1e-12)


def test_topk_reports_its_fitted_k(ref_rows):
    for name in FILTERING:
        prm = ref_rows[name]["params"]
        assert isinstance(prm["k"], int) and 1 <= prm["k"] <= REF[0]
        assert prm["k_over_pns"] == pytest.approx(prm["k"] / (REF[2] * REF[0]), rel=1e-12)
        assert prm["k_tried"] > 5
        assert prm["train_loss"] <= ref_rows["relu"]["params"]["train_loss"] * 1.01


def test_topk_fixed_k_option_binds():
    n_s, n_d, p = 1024, 256, 0.1
    fitted = _row(n_s, n_d, p, "topk", samples=1024, options={"fit_pairs": 2**18})
    small = _row(n_s, n_d, p, "topk", samples=1024, options={"fit_pairs": 2**18, "k": 20})
    assert small["params"]["k"] == 20 and small["params"]["k_tried"] == 1
    assert small["loss"] > fitted["loss"] + K_SE * math.hypot(small["loss_se"], fitted["loss_se"])


# ----------------------------------------------------------------------------- bounds


def test_no_decoder_beats_the_bounds_where_gaussian_theory_holds(bound_rows):
    for cell, rows in bound_rows.items():
        assert cell[0] * cell[2] >= 100
        for name in ELEMENTWISE + ("oracle",):  # elementwise: not below the elementwise MMSE
            r = rows[name]
            assert r["loss"] >= r["mmse_elementwise"] - K_SE * r["loss_se"], (cell, name, r["loss"])
        for name in ELEMENTWISE + FILTERING + ("oracle",):  # nor below the E.2 bound
            r = rows[name]
            assert r["loss"] >= r["e2_bound"] - K_SE * r["loss_se"], (cell, name, r["loss"])


def test_small_pns_departure_is_reported_not_clipped():
    # p n_s = 10: the rug's interference is far from Gaussian; the row shows it as measured
    n_s, n_d, p = 1024, 256, 0.01
    row = _row(n_s, n_d, p, "relu", samples=2048, options={"fit_pairs": 2**19})
    th = cell_theory(n_s, n_d, p)
    assert row["predicted"] == pytest.approx(th["relu_theory"], rel=1e-12)
    assert row["params"]["predicted_by"] == "relu_theory"
    departure = row["ratio_predicted"] - 1
    assert departure == pytest.approx(row["loss"] / th["relu_theory"] - 1, rel=1e-12)
    assert departure * th["relu_theory"] > K_SE * row["loss_se"], departure  # measured +19% (about 10 SE)


# ----------------------------------------------------------------------------- equivalences, oracle


def _ctx(n_s=1024, n_d=256, p=0.05, options=None, name=""):
    return DecoderContext(cell=Cell(n_s, n_d, p), seed=0, encoder=PersianRug(n_s, n_d, seed=0),
                          options=options or {}, decoder_name=name)


def _fit_dec(name, ctx):
    from decoderbench.contract import registry as plugins

    cls = plugins.get_decoder(name).cls
    dec = cls(ctx)
    dec.fit(TrainingSet(ctx, cls.input_kind()))
    return dec


def test_gated_is_jumprelu_and_prolu_is_trec_in_the_scalar_setting():
    ctx = _ctx(options={"fit_pairs": 2**18})
    z = torch.linspace(-1, 2, 20001).reshape(1, -1)
    z = z[:, : (z.shape[1] // 1024) * 1024].reshape(-1, 1024)
    dec = {n: _fit_dec(n, ctx) for n in ("jumprelu", "gated", "trec", "prolu")}
    with torch.no_grad():
        out = {n: d.decode(z) for n, d in dec.items()}
    assert torch.allclose(out["gated"], out["jumprelu"], atol=1e-6, rtol=0)
    assert torch.allclose(out["prolu"], out["trec"], atol=1e-6, rtol=0)


def test_oracle_is_the_channel_conditional_mean():
    ctx = _ctx(*REF)
    x = torch.rand(4, REF[0]) * (torch.rand(4, REF[0]) < REF[2])
    z = ctx.encoder.decode(ctx.encoder.encode(x))
    z = torch.cat([z, torch.linspace(-3, 4, REF[0]).reshape(1, -1)])  # and far tails, outside the table
    exact = conditional_mean(z.double(), REF[2], ctx.mu, ctx.sigma)
    tab = _fit_dec("oracle", ctx)
    assert tab.table is not None
    assert float((tab.decode(z).double() - exact).abs().max()) <= 1e-6
    ctx_exact = _ctx(*REF, options={"exact": True})
    ex = _fit_dec("oracle", ctx_exact)
    assert ex.table is None
    assert torch.equal(ex.decode(z), exact.to(z.dtype))
