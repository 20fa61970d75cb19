"""Exact finite-size references (decoderbench.model.exact): the law's moments, convergence in the grid, agreement
with the Gaussian theory at large p n_s, the published reference values, Monte Carlo of the exact conditional
mean, and the oracle-exact decoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from decoderbench.model import exact
from decoderbench.cli import main
from decoderbench.model.theory import cell_theory


def _law(n_s, n_d, p, seed=0, M=exact.DEFAULT_M):
    g = exact.rug_row(n_s, n_d, seed).copy()
    assert g[0] == 1.0  # R_ii = 1
    g[0] = 0.0
    return g, exact.interference_law(g, p, M=M, integer_scale=n_d)


@pytest.mark.parametrize("n_s, n_d, p", [(256, 26, 0.01), (1024, 256, 0.01), (4096, 1024, 0.045)])
def test_law_mass_mean_and_variance_are_exact(n_s, n_d, p):
    g, law = _law(n_s, n_d, p)
    w = law.f0 * law.h
    assert w.sum() + law.a0 == pytest.approx(1.0, abs=1e-7)
    mean = float((w * law.x).sum())
    var = float((w * law.x ** 2).sum()) - mean ** 2
    assert law.mean == pytest.approx(0.5 * p * g.sum(), rel=1e-12)
    assert mean == pytest.approx(law.mean, abs=1e-6)
    # the smoothing kernel adds h^2/3 to the continuous part's variance; the rest is exact to 1e-4
    assert var - law.h ** 2 / 3 * (1 - law.a0) == pytest.approx(law.var, rel=2e-4)
    assert law.a0 == pytest.approx((1 - p) ** int(np.count_nonzero(g)), rel=1e-12)
    # on the rug sum_j g_j^2 = n_s/n_d - 1 (paper appendix F), so var nu = v (n_s/n_d - 1)
    assert law.var == pytest.approx((p / 3 - p * p / 4) * (n_s / n_d - 1), rel=1e-12)


def test_grid_error_falls_as_h_squared():
    vals = []
    for M in (256, 512, 1024):
        _, law = _law(1024, 256, 0.01, M=M)
        vals.append(exact.mmse_elementwise_exact(law))
    d1, d2 = vals[0] - vals[1], vals[1] - vals[2]
    assert d1 / d2 == pytest.approx(4.0, rel=0.25)  # O(h^2)
    assert abs(d2) / vals[2] < 1e-4  # so the default grid is within about 1e-5 of the limit


def test_published_reference_values():
    """Rug of seed 0 (paper's Figure 3 cell, and a sparse cell where Gaussian theory is 31% off)."""
    e = exact.exact_references(4096, 1024, 0.045)
    assert e["mmse_elementwise_exact"] == pytest.approx(0.004530, rel=5e-4)
    assert e["e2_bound_exact"] == pytest.approx(0.0012196, rel=5e-4)
    t = cell_theory(1024, 256, 0.01)
    e = exact.exact_references(1024, 256, 0.01)
    assert e["mmse_elementwise_exact"] == pytest.approx(3.037e-4, rel=1e-3)
    assert e["mmse_elementwise_exact"] / t["mmse_elementwise"] == pytest.approx(1.31, abs=0.01)
    assert e["relu_theory_exact"] > e["mmse_elementwise_exact"] > e["e2_bound_exact"] > 0


def test_exact_meets_gaussian_theory_at_large_p_ns():
    """p n_s = 1638 (n_s 16384, p 0.1): the interference is Gaussian to within a fraction of a percent."""
    n_s, n_d, p = 16384, 4096, 0.1
    t = cell_theory(n_s, n_d, p)
    e = exact.exact_references(n_s, n_d, p, M=512)
    assert e["mmse_elementwise_exact"] == pytest.approx(t["mmse_elementwise"], rel=5e-3)
    assert e["e2_bound_exact"] == pytest.approx(t["e2_bound"], rel=5e-3)
    assert e["relu_theory_exact"] == pytest.approx(t["relu_theory"], rel=5e-3)


def test_monte_carlo_of_the_exact_conditional_mean():
    """Samples z = R x on the real rug, decoded by the tabulated E[x | z]: the loss lands within 3 SE of the
    exact elementwise MMSE (n_s 256, p n_s 2.6: far from Gaussian)."""
    from decoderbench.model.data import SparseSampler
    from decoderbench.model.encoders import PersianRug

    n_s, n_d, p = 256, 26, 0.01
    _, law = _law(n_s, n_d, p)
    z_grid, mean = exact.conditional_mean_table(law)
    rug = PersianRug(n_s, n_d, seed=0, dtype=torch.float64)
    sampler = SparseSampler(n_s, p, seed=123, purpose="test-exact", dtype=torch.float64)
    losses = []
    for _ in range(40):
        x = sampler.sample(4096)
        z = rug.apply(x).numpy()
        xhat = np.interp(z, z_grid, mean)
        losses.append(((x.numpy() - xhat) ** 2).mean(axis=1))
    per = np.concatenate(losses)
    loss, se = per.mean(), per.std(ddof=1) / math.sqrt(per.size)
    target = exact.mmse_elementwise_exact(law)
    assert abs(loss - target) < 3 * se, (loss, se, target)
    assert abs(loss - cell_theory(n_s, n_d, p)["mmse_elementwise"]) > 10 * se  # the Gaussian line is not it


def test_oracle_exact_row_matches_its_prediction(tmp_path):
    from decoderbench.run.runner import WorkUnit, run_unit

    row = run_unit(WorkUnit(decoder="oracle-exact", n_s=1024, n_d=256, p=0.01, seed=0, target_rel_se=0.01,
                            min_samples=2048, max_samples=2048))
    assert row["status"] == "ok" and row["kind"] == "reference"
    assert abs(row["loss"] - row["predicted"]) < 3 * row["loss_se"]
    # every rug row carries the exact references of its rug and its ratio to the exact MMSE
    assert row["mmse_elementwise_exact"] == pytest.approx(row["predicted"], rel=1e-3)
    assert abs(row["ratio_mmse_exact"] - 1.0) < 3 * row["loss_se"] / row["loss"]
    gauss = run_unit(WorkUnit(decoder="oracle", n_s=1024, n_d=256, p=0.01, seed=0, min_samples=2048,
                              max_samples=2048))
    assert gauss["loss"] > row["loss"] + 3 * row["loss_se"]  # the Gaussian oracle is no reference here


def test_oracle_exact_is_skipped_on_an_encoder_without_the_mask(capsys):
    code = main(["run", "--plugins", "oracle-exact", "--encoder", "gaussian", "--ns", "256", "--r", "0.25",
                 "--p", "0.045", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "skipped" and code == 0


def test_cli_theory_exact(capsys):
    assert main(["theory", "--ns", "1024", "--r", "0.25", "--p", "0.01", "--exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mmse_elementwise_exact"] == pytest.approx(3.037e-4, rel=1e-3) and out["seed"] == 0
    assert main(["theory", "--ns", "1024", "--p", "0.01", "--exact", "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err


def test_weights_of_the_rug_give_the_rug_references():
    """references_for_weights on the rug's dense R gives the same numbers as the XOR shortcut."""
    from decoderbench.model.encoders import PersianRug

    n_s, n_d, p = 128, 32, 0.045
    R = PersianRug(n_s, n_d, seed=0, dtype=torch.float64).dense().numpy()
    ref = exact.references_for_weights(R, p, rows=range(0, n_s, 16), M=512)
    _, law = _law(n_s, n_d, p, M=512)
    assert ref["mmse_elementwise_exact"] == pytest.approx(exact.mmse_elementwise_exact(law), rel=1e-6)
    assert ref["rows_not_encoded"] == 0


def test_a_law_too_wide_fails_before_any_transform(monkeypatch):
    """A W whose rows' laws need more grid points than allowed (an unconverged trained model: off-diagonal
    entries as large as the diagonal) raises BadInput naming the grid size, and takes no FFT at all."""
    from decoderbench.errors import BadInput

    rng = np.random.default_rng(0)
    W = np.eye(256) + 0.05 * rng.standard_normal((256, 256))
    W[200, :] = 1.0  # one wide row, late: the check covers every row before the first transform
    monkeypatch.setattr(np.fft, "fft", lambda *a, **k: pytest.fail("a transform was taken"))
    with pytest.raises(BadInput, match="grid points"):
        exact.references_for_weights(W, 0.045, M=128, max_points=1 << 13)


def test_unconverged_trained_model_gets_no_own_exact_reference():
    from plugins.trained import _diagnostics
    from plugins.trained.arch import ARCHS  # noqa: F401  (the plugin package imports)

    class Model:
        n_s, n_d, extras = 64, 16, {}
        W_in = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
        W_out = W_in.T.clone()
        b = torch.zeros(64)

    out = _diagnostics(Model(), 0.045, converged=False)
    assert "did not converge" in out["own_exact_error"] and "own_mmse_elementwise_exact" not in out


def test_the_board_shows_the_exact_line_and_ratio():
    from decoderbench.board.leaderboard import render
    from decoderbench.run.runner import WorkUnit, run_unit

    rows = []
    for name in ("relu", "oracle-exact"):
        row = run_unit(WorkUnit(decoder=name, n_s=256, n_d=64, p=0.045, min_samples=256, max_samples=256,
                                target_rel_se=0.2))
        rows.append({**row, "key": name, "finished_at": "2026"})
    cells = render(rows, "t", "cmd")["cells.md"]
    assert "Exact elementwise MMSE of this rug" in cells and "| / exact MMSE |" in cells


def test_a_negative_diagonal_is_encoded_inverted_not_lost():
    """A row whose W_ii is large and negative carries its feature (inverted): the exact references treat it as
    the same row with the sign flipped, and count it as encoded, as the trained models' diagnostics do."""
    import numpy as np

    from decoderbench.model.exact import references_for_weights

    rng = np.random.default_rng(0)
    W = np.eye(64) + 0.05 * rng.standard_normal((64, 64))
    flipped = W.copy()
    flipped[3] = -flipped[3]  # row 3 of W x negated: z_3 -> -z_3, an elementwise decoder loses nothing
    a = references_for_weights(W, 0.05, rows=[3])
    b = references_for_weights(flipped, 0.05, rows=[3])
    assert b["rows_not_encoded"] == 0
    assert b["mmse_elementwise_exact"] == pytest.approx(a["mmse_elementwise_exact"], rel=1e-9)
