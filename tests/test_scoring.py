"""The stopping rule of decoderbench.run.scoring and its absolute floor."""

from __future__ import annotations

import math

import pytest
import torch

from decoderbench.run import scoring
from decoderbench.run.runner import WorkUnit, run_unit


def _acc(values):
    acc = scoring.Accumulator()
    acc.add(torch.tensor(values, dtype=torch.float64))
    return acc


def test_accumulator_matches_numpy_mean_and_se():
    v = torch.linspace(0.0, 1.0, 101, dtype=torch.float64) ** 2
    acc = scoring.Accumulator()
    for chunk in v.split(7):
        acc.add(chunk)
    assert acc.n == 101
    assert math.isclose(acc.mean, float(v.mean()), rel_tol=1e-14)
    assert math.isclose(acc.se, float(v.std(correction=1)) / math.sqrt(101), rel_tol=1e-12)


@pytest.mark.parametrize("values,kw,expected", [
    ([1.0, 1.0, 1.0, 1.0], dict(target_rel_se=0.01, min_samples=2, max_samples=10, floor=0.0), "target"),
    ([1.0, 1.0, 1.0, 1.0], dict(target_rel_se=0.01, min_samples=8, max_samples=10, floor=0.0), None),
    ([0.0, 1e-9, 0.0, 0.0], dict(target_rel_se=0.01, min_samples=2, max_samples=10, floor=1e-6), "floor"),
    ([0.0, 1e-3, 0.0, 0.0], dict(target_rel_se=0.01, min_samples=2, max_samples=10, floor=1e-6), None),
    ([0.0, 1e-3, 0.0, 0.0], dict(target_rel_se=0.01, min_samples=2, max_samples=4, floor=1e-6), "max_samples"),
    ([0.0, 1e-3], dict(target_rel_se=0.01, min_samples=4, max_samples=2, floor=1e-6), "max_samples"),
])
def test_stop_reason(values, kw, expected):
    assert scoring.stop_reason(_acc(values), **kw) == expected


def test_eval_batch_size_streams_large_cells():
    from decoderbench.model.evalkey import eval_batch_size

    assert eval_batch_size(1024) == 4096
    assert eval_batch_size(2**20) == 4  # about 4M entries per batch
    assert eval_batch_size(2**24) == 1


def test_exact_recovery_stops_on_the_floor():
    """VAMP at r = 0.25, p = 0.045 recovers x exactly except for rare finite-size failures; the
    relative target cannot be met (the relative SE of a mean made of rare failures stays large), the
    floor (1e-3 of the trivial loss p/3) is, at the first check."""
    unit = WorkUnit(n_s=1024, n_d=256, p=0.045, decoder="vamp", seed=0, target_rel_se=0.01,
                    min_samples=256, max_samples=131072)
    row = run_unit(unit)
    assert row["status"] == "ok", row["error"]
    assert row["sampling_stop"] == "floor" and row["precision_met"] is True
    assert row["n_eval"] == 256
    assert math.isclose(row["se_floor_abs"], 1e-3 * 0.045 / 3, rel_tol=1e-12)
    assert row["loss_se"] <= row["se_floor_abs"]


def test_capped_row_says_its_precision_was_missed():
    unit = WorkUnit(n_s=256, n_d=26, p=0.1, decoder="relu", seed=0, target_rel_se=1e-4, min_samples=16,
                    max_samples=32, se_floor=0.0)
    row = run_unit(unit)
    assert row["status"] == "ok", row["error"]
    assert row["sampling_stop"] == "max_samples" and row["precision_met"] is False and row["n_eval"] == 32


def test_se_floor_is_validated():
    with pytest.raises(ValueError, match="se_floor"):
        WorkUnit(n_s=256, n_d=64, p=0.1, decoder="relu", se_floor=-1.0)


def test_recovered_fraction_counts_samples_below_a_thousandth_of_trivial():
    """Half the samples decoded exactly, half as zero: recovered_frac = 1/2 with its binomial SE."""
    p, n_s = 0.1, 64

    class Alternating:
        def __init__(self):
            self.g = torch.Generator().manual_seed(0)

        def sample(self, b):
            return (torch.rand(b, n_s, generator=self.g) < p) * torch.rand(b, n_s, generator=self.g)

    def decode(x):
        out = x.clone()
        out[1::2] = 0.0
        return out

    sampler = Alternating()
    res = scoring.score(decode, lambda x: x, sampler, p=p, target_rel_se=1e-9, min_samples=256, max_samples=256,
                        batch=256)
    assert res["n_eval"] == 256
    # the zeroed half is recovered only where x itself is 0 (probability 0.9^64 ~ 0.1%)
    assert 0.5 <= res["recovered_frac"] <= 0.51
    assert res["recovered_frac_se"] == pytest.approx(math.sqrt(res["recovered_frac"] * (1 - res["recovered_frac"]) / 256))
    assert scoring.RECOVERED_REL == 1e-3


def test_support_counts_on_a_hand_made_batch():
    """Exact counts: threshold 0.05 on both the truth and the output."""
    import torch

    from decoderbench.run.scoring import SUPPORT_THRESHOLD, SupportCounts

    assert SUPPORT_THRESHOLD == 0.05
    x = torch.tensor([[0.5, 0.0, 0.03, 0.9], [0.0, 0.2, 0.0, 0.0]])
    x_hat = torch.tensor([[0.4, 0.1, 0.0, 0.0], [0.0, 0.3, 0.0, 0.04]])
    s = SupportCounts()
    s.add(x, x_hat)
    c = s.columns()
    # truth above 0.05: (0,0), (0,3), (1,1); fired: (0,0), (0,1), (1,1) -> tp 2, fp 1, fn 1
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert c["support_precision"] == 2 / 3 and c["support_recall"] == 2 / 3 and c["support_f1"] == 2 / 3
    assert c["features_never_firing"] == 2  # features 2 and 3
    per = (x.double() - x_hat.double()).square().sum(0)
    assert c["feature_loss_spread"] == float(per.max()) / float(per.median())


def test_support_metrics_of_zero_and_of_exact_recovery():
    import decoderbench as db
    from decoderbench import api

    class Zero(db.Decoder):
        name = "zero_out"
        kind = "elementwise"

        def decode(self, z):
            return torch.zeros_like(z)

    rows = {r["decoder"]: r for r in api.records(db.evaluate([Zero, "vamp"], n_s=256, r=0.5, p=0.02,
                                                             max_samples=256, device="cpu", progress=False))}
    z = rows["zero_out"]
    assert z["support_precision"] is None and z["support_recall"] == 0.0 and z["support_f1"] == 0.0
    assert z["features_never_firing"] == 256
    v = rows["vamp"]
    assert v["loss"] < 1e-9 and (v["support_precision"], v["support_recall"], v["support_f1"]) == (1.0, 1.0, 1.0)
