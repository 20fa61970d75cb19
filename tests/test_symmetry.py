"""decoderbench.model.symmetry: exact diagnostics of W and b, the rug's exact symmetry, the model file format."""

from __future__ import annotations

import math

import pytest
import torch

from decoderbench import PersianRug
from decoderbench.model.data import SparseSampler, variance
from decoderbench.model.symmetry import (
    berry_esseen_ratio,
    berry_esseen_rows,
    diagnostics,
    interference_moments,
    third_central_moment,
)
from decoderbench_plugins.trained.compare import (
    TrainedModel,
    evaluate_loss,
    load_model,
    paired_losses,
    plot_trends,
    rug_model,
    save_model,
)

P = 0.045


@pytest.mark.parametrize("n_s,n_d,seed", [(64, 16, 0), (256, 64, 3), (512, 128, 0), (128, 100, 1)])
def test_rug_diagnostics_are_exact(n_s, n_d, seed):
    rug = PersianRug(n_s, n_d, seed=seed, dtype=torch.float64)
    R = rug.dense()
    mu, sigma = rug.interference(P)
    d = diagnostics(R, None, P, n_d=n_d)
    assert d["diag_mean"] == pytest.approx(1.0, abs=1e-12)
    for key in ("diag_std", "diag_range", "bias_std", "bias_range", "nu_var_std", "nu_var_range", "nu_mean_std",
                "nu_mean_range", "sigma_std", "bias_eff_std"):
        assert abs(d[key]) < 1e-12, key
    assert d["nu_var_mean"] == pytest.approx(sigma**2, rel=1e-12)
    assert d["nu_mean_mean"] == pytest.approx(mu, abs=1e-12)
    # sigma_rel attains the Welch bound exactly
    assert d["sigma_rel_over_welch"] == pytest.approx(1.0, abs=1e-12)
    assert d["dead_features"] == 0
    # every row separately: Var nu_i = sigma^2 exactly
    var_rows = interference_moments(R, P)["var"]
    assert torch.allclose(var_rows, torch.full_like(var_rows, sigma**2), rtol=1e-12, atol=0)
    # Lambda: every row has the same ratio (R_ij depends on i xor j only: each row permutes row 0)
    be = berry_esseen_rows(R)
    assert float(be.max() - be.min()) < 1e-12
    assert d["lambda_be"] == pytest.approx(float(be[0]), rel=1e-12)


def test_rug_model_scaled():
    m = rug_model(128, 32, P, seed=2, a=1.3, b=-0.4)
    d = diagnostics(m.W, m.b, P, n_d=32)
    sigma = PersianRug(128, 32, seed=2).interference(P)[1]
    assert d["diag_mean"] == pytest.approx(1.3, abs=1e-12)
    assert d["bias_mean"] == pytest.approx(-0.4, abs=1e-12)
    assert d["nu_var_mean"] == pytest.approx(1.3**2 * sigma**2, rel=1e-12)
    assert d["sigma_rel_mean"] == pytest.approx(sigma, rel=1e-12)  # scale-free
    assert d["sigma_rel_rms"] == pytest.approx(sigma, rel=1e-12)
    assert d["lambda_be"] == pytest.approx(berry_esseen_ratio(PersianRug(128, 32, seed=2, dtype=torch.float64).dense()),
                                           rel=1e-12)  # Lambda is invariant to scaling


def test_hand_computed_small_matrix():
    W = torch.tensor([[2.0, -1.0, 0.5, 0.0],
                      [0.1, 1.0, 0.2, -0.3],
                      [0.0, 0.0, 0.0, 0.0],
                      [1.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([-0.1, 0.2, 0.0, -0.5], dtype=torch.float64)
    W0 = W.clone()
    d = diagnostics(W, b, P, n_d=2)
    assert torch.equal(W, W0)  # the diagonal is zeroed in a copy, never in W
    assert diagnostics(W.float(), b, P)["lambda_be"] == pytest.approx(d["lambda_be"], rel=1e-6)  # float32 W
    v, k3 = variance(P), third_central_moment(P)
    off = [[-1.0, 0.5, 0.0], [0.1, 0.2, -0.3], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    s1 = [sum(r) for r in off]
    s2 = [sum(x * x for x in r) for r in off]
    s3 = [sum(x**3 for x in r) for r in off]
    a3 = [sum(abs(x) ** 3 for x in r) for r in off]
    mom = interference_moments(W, P)
    for i in range(4):
        assert float(mom["mean"][i]) == pytest.approx(P / 2 * s1[i], abs=1e-15)
        assert float(mom["var"][i]) == pytest.approx(v * s2[i], abs=1e-15)
        skew = k3 * s3[i] / (v * s2[i]) ** 1.5 if s2[i] > 0 else 0.0
        assert float(mom["skew"][i]) == pytest.approx(skew, rel=1e-12, abs=1e-15)
    lam = max(a3[i] / s2[i] ** 1.5 for i in range(4) if s2[i] > 0)
    assert d["lambda_be"] == pytest.approx(lam, rel=1e-12)
    diag = [2.0, 1.0, 0.0, 3.0]
    m = sum(diag) / 4
    assert d["diag_mean"] == pytest.approx(m, abs=1e-15)
    assert d["diag_std"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in diag) / 4), rel=1e-12)
    assert d["diag_range"] == pytest.approx(3.0, abs=1e-15)
    beff = [b[i].item() + P / 2 * s1[i] for i in range(4)]
    assert d["bias_eff_mean"] == pytest.approx(sum(beff) / 4, abs=1e-15)
    assert d["dead_features"] == 1  # row 2 has W_ii = 0
    assert d["welch_sigma"] == pytest.approx(math.sqrt(v * (4 / 2 - 1)), rel=1e-15)


def test_lambda_of_equal_magnitude_rows_is_one_over_sqrt_k():
    # k off-diagonal entries of equal magnitude c: k c^3 / (k c^2)^{3/2} = 1/sqrt(k), any signs, any c
    n, k = 40, 9
    g = torch.Generator().manual_seed(0)
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        cols = [j for j in torch.randperm(n, generator=g).tolist() if j != i][:k]
        signs = torch.randint(0, 2, (k,), generator=g).double() * 2 - 1
        W[i, cols] = 0.37 * signs
        W[i, i] = 1.0
    assert berry_esseen_ratio(W) == pytest.approx(1 / math.sqrt(k), rel=1e-12)


def test_third_central_moment_exact():
    for p in (0.01, 0.045, 0.5, 1.0):
        m = p / 2
        # E[(x - m)^3] = (1 - p)(-m)^3 + p * int_0^1 (u - m)^3 du
        exact = (1 - p) * (-m) ** 3 + p * ((1 - m) ** 4 - m**4) / 4
        assert third_central_moment(p) == pytest.approx(exact, rel=1e-12, abs=1e-18)


def test_interference_moments_match_simulation():
    """Mean, variance and skew of nu_i against 2**17 samples, within 5 standard errors."""
    g = torch.Generator().manual_seed(5)
    n_s = 64
    W = torch.randn(n_s, n_s, generator=g, dtype=torch.float64) * 0.1
    W[0] = torch.where(W[0] < 0, W[0] * 3, W[0] * 0.2)  # a one-sided row: negative skew
    mom = interference_moments(W, P)
    x = SparseSampler(n_s, P, 0, "test-nu").sample(2**17).double()
    Woff = W - torch.diag(torch.diagonal(W))
    nu = x @ Woff.T  # (B, n_s)
    n = nu.shape[0]
    for i in (0, 1, 2):
        c = nu[:, i] - nu[:, i].mean()
        m2 = (c**2).mean()
        assert abs(float(nu[:, i].mean() - mom["mean"][i])) < 5 * float(nu[:, i].std()) / math.sqrt(n)
        se_var = float(((c**2 - m2) ** 2).mean().sqrt()) / math.sqrt(n)
        assert abs(float(m2 - mom["var"][i])) < 5 * se_var
        skew = float((c**3).mean() / m2**1.5)
        se_skew = math.sqrt(float(((c**3 / m2**1.5) ** 2).mean()) / n)  # a conservative SE of the sample skew
        assert abs(skew - float(mom["skew"][i])) < 5 * se_skew
    assert float(mom["skew"][0]) < 0


def test_bad_input():
    with pytest.raises(ValueError, match="W must be a square"):
        diagnostics(torch.zeros(3, 4), None, P)
    with pytest.raises(ValueError, match="b must be"):
        diagnostics(torch.eye(3), torch.zeros(4), P)
    with pytest.raises(ValueError, match="W must be finite"):
        diagnostics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), None, P)
    with pytest.raises(ValueError, match="p must be"):
        diagnostics(torch.eye(3), None, 0.0)
    with pytest.raises(ValueError, match="n_s must be at most"):
        rug_model(2**14, 16, P)


def test_evaluate_loss_of_zero_model_is_p_over_3():
    n_s = 256
    m, se = evaluate_loss(lambda x: torch.zeros_like(x), n_s, P, seed=1, n_samples=8192)
    assert abs(m - P / 3) < 4 * se
    out = paired_losses({"zero": lambda x: torch.zeros_like(x), "identity": lambda x: x}, n_s, P, 1, 4096)
    assert out["identity"] == (0.0, 0.0)
    assert out["diff"][0] == pytest.approx(out["zero"][0], rel=1e-12)


def test_model_file_roundtrip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = TrainedModel(torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g),
                         torch.randn(32, generator=g), {"steps": 7, "stop_reason": "converged"})
    path = save_model(tmp_path / "m.safetensors", model, extra={"adam.W_in.exp_avg": torch.ones(8, 32)})
    back = load_model(path)
    for a, b in ((model.W_in, back.W_in), (model.W_out, back.W_out), (model.b, back.b)):
        assert torch.equal(a, b)
    assert back.meta == model.meta
    x = SparseSampler(32, P, 0, "t").sample(16)
    assert torch.equal(model.forward(x), back.forward(x))
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(Exception):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="model path must be an existing"):
        load_model(tmp_path / "missing.safetensors")


def test_trend_figure_with_exactly_symmetric_panels(tmp_path):
    """The rug alone: every spread is exactly 0, which a log axis cannot show; the panel must still draw."""
    rows = [{"model": "rug", **diagnostics(rug_model(n, n // 4, P).W, None, P)} for n in (32, 64)]
    assert all(r["diag_std"] == 0 for r in rows)
    plot_trends(rows, tmp_path / "trend.png")
    assert (tmp_path / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_symmetry_command_writes_the_report_and_reloads(tmp_path, capsys):
    from decoderbench.cli import main

    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["symmetry", "--ns", "32", "--max-steps", "40", "--threads", "1", "--cache-dir", str(cache),
            "--eval-samples", "2048", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trained" in printed and "rug" in printed
    md = (out / "trained_vs_rug.md").read_text()
    assert "Command: `decoderbench symmetry --ns 32 --max-steps 40" in md and "torch " in md
    assert "| 32 | 8 |" in md and "step_cap" in md
    for name in ("trained_vs_rug.png", "trained_vs_rug_symmetry.png", "trained_vs_rug_W_b_ns32.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # the cached model can be diagnosed without training; same model, same numbers
    (path,) = list(cache.glob("*.safetensors"))
    assert main(["symmetry", "--load", str(path), "--eval-samples", "2048", "--out", str(tmp_path / "o2"),
                 "--no-figures"]) == 0
    assert not list((tmp_path / "o2").glob("*.png"))
    md2 = (tmp_path / "o2" / "trained_vs_rug.md").read_text()
    row = [line for line in md.splitlines() if line.startswith("| 32 |")][0].split("|")
    row2 = [line for line in md2.splitlines() if line.startswith("| 32 |")][0].split("|")
    assert row[3:22] == row2[3:22]  # losses and diagnostics agree (train time columns may differ)


def test_symmetry_command_bad_input(capsys):
    from decoderbench.cli import main

    assert main(["symmetry", "--ns", "48"]) == 2
    assert "n_s must be a power of two" in capsys.readouterr().err
    assert main(["symmetry", "--ns", "16384"]) == 2
    assert "--ns must be at most 8192" in capsys.readouterr().err
    assert main(["symmetry", "--load", "/nonexistent/model.safetensors"]) == 2
    assert "model path must be an existing safetensors file" in capsys.readouterr().err
