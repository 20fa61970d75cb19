"""The control-variate estimator of decoderbench.run.scoring: exact identities, honesty on synthetic data with a known
expectation, and what it saves on a real row. Every random stream is seeded."""

from __future__ import annotations

import math

import pytest
import torch

from decoderbench.run import scoring
from decoderbench.model.data import SparseSampler
from decoderbench.run.runner import WorkUnit, run_unit


def _acc(losses, controls, means, chunk=None):
    acc = scoring.Accumulator(means)
    losses = torch.as_tensor(losses, dtype=torch.float64)
    controls = [torch.as_tensor(c, dtype=torch.float64) for c in controls]
    step = chunk or losses.numel()
    for i in range(0, losses.numel(), step):
        acc.add(losses[i:i + step], [c[i:i + step] for c in controls])
    return acc


def test_without_controls_the_estimate_is_the_plain_mean():
    acc = scoring.Accumulator()
    acc.add(torch.tensor([1.0, 2.0, 4.0]))
    assert acc.estimator == "mean" and acc.estimate == acc.mean and acc.estimate_se == acc.se


def test_constant_controls_are_dropped_and_the_estimate_is_the_plain_mean_exactly():
    """K and Q the same in every sample (here not at their known means): no information, the plain mean and its
    SE, bit for bit."""
    losses = torch.linspace(0.0, 1.0, 37, dtype=torch.float64) ** 3
    acc = _acc(losses, [torch.full((37,), 5.0), torch.full((37,), 0.1)], (7.0, 0.3), chunk=5)
    plain = scoring.Accumulator()
    for c in losses.split(5):
        plain.add(c)
    assert acc.estimator == "mean"
    assert acc.estimate == acc.mean == plain.mean and acc.estimate_se == acc.se == plain.se


def test_beta_zero_gives_the_plain_mean_exactly():
    """Losses uncorrelated with either control within each half (even and odd samples; exactly, in binary
    arithmetic), controls whose sample means are off their known means: both halves' slopes are 0 and the
    estimate and its SE are the plain mean's, exactly."""
    losses = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # each half: 0, 1, 0, 1
    k = [2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]  # each half: 2, 2, 0, 0 (mean 1, known mean 0)
    q = [3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0]  # each half: 3, 1, 1, 3
    acc = _acc(losses, [k, q], (0.0, 0.0), chunk=3)
    assert [h.slope() for h in acc.halves] == [[0.0, 0.0], [0.0, 0.0]]
    assert acc.estimator == "mean"
    assert acc.estimate == acc.mean == 0.5 and acc.estimate_se == acc.se


def test_the_halves_are_by_sample_index_whatever_the_batches():
    losses = torch.arange(10, dtype=torch.float64)
    acc = _acc(losses, [losses * 2], (0.0,), chunk=3)
    assert acc.halves[0].n == acc.halves[1].n == 5
    assert acc.halves[0].sl == 0 + 2 + 4 + 6 + 8 and acc.halves[1].sl == 1 + 3 + 5 + 7 + 9


def test_each_half_is_weighted_by_the_other_halfs_slope():
    """The estimate and SE against the formula, computed sample by sample."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(50, 2, generator=g, dtype=torch.float64)
    losses = 1.0 + c @ torch.tensor([0.5, -0.2], dtype=torch.float64) + 0.3 * torch.randn(50, generator=g,
                                                                                          dtype=torch.float64)
    acc = _acc(losses, [c[:, 0] + 1.0, c[:, 1] - 2.0], (1.0, -2.0), chunk=7)

    def slope(idx):
        X = torch.cat([torch.ones(len(idx), 1, dtype=torch.float64), c[idx]], 1)
        return torch.linalg.lstsq(X, losses[idx].unsqueeze(1)).solution[1:, 0]

    even, odd = torch.arange(0, 50, 2), torch.arange(1, 50, 2)
    r = torch.empty(50, dtype=torch.float64)
    r[even] = losses[even] - c[even] @ slope(odd)
    r[odd] = losses[odd] - c[odd] @ slope(even)
    assert acc.estimator == "control_variate"
    assert acc.estimate == pytest.approx(float(r.mean()), rel=1e-12)
    assert acc.estimate_se == pytest.approx(float(r.std()) / math.sqrt(50), rel=1e-9)
    assert acc.estimate_se < 0.5 * acc.se


def test_collinear_controls_keep_the_first():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(200, generator=g, dtype=torch.float64)
    losses = 2.0 * k + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    both = _acc(losses, [k, 3.0 * k + 1.0], (0.0, 1.0))
    one = _acc(losses, [k], (0.0,))
    assert both.estimate == pytest.approx(one.estimate, rel=1e-12)
    assert both.estimate_se == pytest.approx(one.estimate_se, rel=1e-12)


def test_a_negative_estimate_is_set_to_zero():
    # each half: K = 1, 2, 3, 4 (known mean 0), L = 0, 0, 0, 1: slope 0.3, sum r = 1 - 0.3 * 10 < 0
    acc = _acc([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]], (0.0,))
    assert acc.estimator == "control_variate" and acc.estimate == 0.0 and acc.estimate_se > 0


def test_the_sums_do_not_depend_on_the_batches():
    g = torch.Generator().manual_seed(2)
    x = SparseSampler(64, 0.1, 0, "t").sample(1000)
    k, q = scoring.controls(x)
    losses = q / 64 * (torch.rand(1000, generator=g, dtype=torch.float64) < 0.4)
    means = scoring.control_means(64, 0.1)
    one = _acc(losses, [k, q], means)
    for chunk in (1, 7, 128):
        other = _acc(losses, [k, q], means, chunk=chunk)
        assert other.estimate == pytest.approx(one.estimate, rel=1e-12, abs=0)
        assert other.estimate_se == pytest.approx(one.estimate_se, rel=1e-10, abs=0)


def test_control_means_are_the_data_laws():
    """E K = p n_s and E Q = n_s p/3, checked against 2^17 samples of the sampler within 4 SE."""
    n_s, p = 64, 0.1
    k, q = scoring.controls(SparseSampler(n_s, p, 0, "cv-means").sample(1 << 17))
    for v, m in zip((k, q), scoring.control_means(n_s, p)):
        assert abs(float(v.mean()) - m) <= 4 * float(v.std()) / math.sqrt(v.numel())


N_S, P = 64, 0.1


def _bimodal(k, q, g):
    """Recovered (loss 0) or not (loss |x|^2 / n_s) independently of x, with probability 0.3: E L = 0.7 p/3."""
    return q / N_S * (torch.rand(k.shape, generator=g, dtype=torch.float64) >= 0.3), 0.7 * P / 3


def _curved(k, q, g):
    """Mostly Q, plus a term quadratic in K (which the linear regression leaves in the residual) and noise."""
    mk = N_S * P
    out = q / N_S + 1e-3 * (k - mk) ** 2 / mk + 2e-3 * torch.rand(k.shape, generator=g, dtype=torch.float64)
    return out, P / 3 + 1e-3 * (1 - P) + 1e-3


@pytest.mark.parametrize("family", [_bimodal, _curved])
def test_the_estimate_is_unbiased_and_its_se_honest(family):
    """300 rows of 256 samples each from the data law, losses with a known expectation: every estimate within
    4.5 SE of it, the 95% intervals cover it in 92-98% of the rows, the mean error is within 3 of its own SE of 0
    (no bias: the regression estimator with its slope fitted on all the samples fails this on the curved family),
    and the SE the rows report matches the spread of their estimates within 12%."""
    reps, n = 300, 256
    z, est, se, ratio = [], [], [], []
    for seed in range(reps):
        x = SparseSampler(N_S, P, seed, "cv-honesty").sample(n)
        k, q = scoring.controls(x)
        losses, expected = family(k, q, torch.Generator().manual_seed(seed))
        acc = _acc(losses, [k, q], scoring.control_means(N_S, P), chunk=100)
        assert acc.estimator == "control_variate"
        z.append((acc.estimate - expected) / acc.estimate_se)
        est.append(acc.estimate)
        se.append(acc.estimate_se)
        ratio.append((acc.estimate_se / acc.se) ** 2)
    z, err = torch.tensor(z), torch.tensor(est) - expected
    assert float(z.abs().max()) < 4.5
    assert abs(float(err.mean())) < 3 * float(err.std()) / math.sqrt(reps)
    assert 0.92 <= float((z.abs() < 1.96).double().mean()) <= 0.98
    assert float(torch.tensor(est).std()) / float(torch.tensor(se).mean()) == pytest.approx(1.0, abs=0.12)
    if family is _curved:  # and it pays: most of the variance is Q's
        assert float(torch.tensor(ratio).mean()) < 0.5


def test_score_uses_controls_only_for_the_data_laws_sampler():
    class Other:  # same law, but score cannot know it
        def __init__(self):
            self.inner = SparseSampler(N_S, P, 0, "t")

        def sample(self, b):
            return self.inner.sample(b)

    def decode(x):
        return 0.5 * x

    kw = dict(p=P, target_rel_se=1e-9, min_samples=64, max_samples=64, batch=64)
    ours = scoring.score(decode, lambda x: x, SparseSampler(N_S, P, 0, "t"), **kw)
    other = scoring.score(decode, lambda x: x, Other(), **kw)
    off = scoring.score(decode, lambda x: x, SparseSampler(N_S, P, 0, "t"), control_variate=False, **kw)
    wrong_p = scoring.score(decode, lambda x: x, SparseSampler(N_S, 0.2, 0, "t"), **kw)
    assert ours["loss_estimator"] == "control_variate"
    assert other["loss_estimator"] == off["loss_estimator"] == wrong_p["loss_estimator"] == "mean"
    assert ours["loss_mean"] == other["loss"] == other["loss_mean"] == off["loss"]
    # loss = |x|^2 / (4 n_s) = Q / (4 n_s) (in float32): the control explains all of it but the rounding
    assert ours["loss"] == pytest.approx(P / 12, rel=1e-6) and ours["loss_se"] < 1e-6 * ours["loss"]
    assert ours["loss_mean_se"] > 1e-2 * ours["loss"]


def test_relu_row_agrees_with_the_plain_mean_and_needs_fewer_samples(monkeypatch):
    """relu at n_s 1024, r 0.1, p 0.045 to 0.4%: the control-variate row agrees with the plain-mean row within 3
    of their combined SEs (they share a prefix of the evaluation stream, so this is loose) and stops after fewer
    than half the samples (measured: 512 against 4096)."""
    unit = WorkUnit(n_s=1024, n_d=102, p=0.045, decoder="relu", seed=0, target_rel_se=0.004, min_samples=16,
                    max_samples=8192)
    cv = run_unit(unit)
    monkeypatch.setattr(scoring, "CONTROL_VARIATE", False)
    plain = run_unit(unit)
    assert cv["status"] == plain["status"] == "ok"
    assert cv["loss_estimator"] == "control_variate" and plain["loss_estimator"] == "mean"
    assert cv["sampling_stop"] == plain["sampling_stop"] == "target"
    assert cv["loss_se"] <= 0.004 * cv["loss"]
    assert abs(cv["loss"] - plain["loss"]) <= 3 * math.hypot(cv["loss_se"], plain["loss_se"])
    assert cv["n_eval"] * 2 < plain["n_eval"]
    assert cv["ratio_e2"] == cv["loss"] / cv["e2_bound"]  # the ratios are of the estimate


def test_a_plain_mean_row_of_an_older_format_is_never_reused(tmp_path, monkeypatch):
    """A store holding a row of results format 2 (loss: the plain mean) for a unit: a run of this version computes
    the unit again (the results format is part of the key), the old row stays valid and readable beside the new
    one, and verify reproduces the new row bit for bit and names the format of the old one."""
    from decoderbench import api
    from decoderbench.results import rows
    from decoderbench.results.store import ResultsStore
    from decoderbench.run.sweep import execute_serial, run_sweep

    assert rows.RESULTS_FORMAT == 3
    st = ResultsStore(tmp_path / "res")
    unit = WorkUnit(n_s=64, n_d=16, p=0.1, decoder="relu", seed=0, target_rel_se=0.05, min_samples=64,
                    max_samples=512)
    with monkeypatch.context() as m:  # what decoderbench wrote before the control variate
        m.setattr(rows, "RESULTS_FORMAT", 2)
        m.setattr(scoring, "CONTROL_VARIATE", False)
        old = run_sweep([unit], store=st, command="test", grid="t", executor=execute_serial)
    old_row = st.read(old.rows[0]["key"])
    assert old_row["results_format"] == 2 and old_row["loss_estimator"] == "mean"
    new = run_sweep([unit], store=st, command="test", grid="t", executor=execute_serial)
    assert (new.n_reused, new.n_computed) == (0, 1)
    new_row = st.read(new.rows[0]["key"])
    assert new_row["key"] != old_row["key"]
    assert new_row["results_format"] == 3 and new_row["loss_estimator"] == "control_variate"
    assert sorted(r["key"] for r in st.rows()) == sorted([old_row["key"], new_row["key"]])  # both valid
    again = run_sweep([unit], store=st, command="test", grid="t", executor=execute_serial)
    assert (again.n_reused, again.n_computed) == (1, 0) and again.rows[0]["key"] == new_row["key"]
    report, _ = api.verify_rows(st, isolate=False)
    verdict = {e["key"]: e for e in report}
    assert verdict[new_row["key"]]["verdict"] == "reproduced"
    assert verdict[old_row["key"]]["verdict"] == "differs"
    assert "results format 2 stored, 3 here" in verdict[old_row["key"]]["detail"]
