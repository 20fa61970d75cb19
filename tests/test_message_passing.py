"""AMP and VAMP (plugins/message_passing.py) against their state evolution (decoderbench.model.theory).

Reference numbers (state evolution, checked against a direct VAMP run on the rug at n_s = 4096):
vamp_se(p=0.05, r=0.1) = 0.00972, vamp_se(0.08, 0.1) = 0.0195 (stalls below the recovery
threshold), vamp_se(0.045, 0.25) = 0 (exact recovery). At n_s = 4096, r = 0.1 means n_d = 410.

Simulated losses are compared with the prediction on a fixed seed. The per-sample loss spreads a lot
near a stall (about 23% at p = 0.05), most of it explained by the sample's own ||x||^2, whose mean
n_s p / 3 is known exactly: the tests use it as a control variate (regression estimator), which cuts
the standard error 2-3x, so 64 samples resolve a 5% departure at about 2.5-10 standard errors.

The denoiser (the posterior moments) dominates the cost; on an oversubscribed CPU,
torch's intra-op threads spin against each other (a denoiser call measured 8x slower with 2 threads
than with 1 on a busy 2-core box), so the module runs single-threaded and restores the setting.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from decoderbench import PersianRug, SparseSampler
from decoderbench.contract import registry as plugins
from decoderbench.contract.decoder import Cell, DecoderContext
from decoderbench.run.runner import WorkUnit, run_unit
from decoderbench.model.theory import amp_se, cell_theory, vamp_se
from decoderbench_plugins.gaussian import Gaussian
from decoderbench_plugins.message_passing import AMP, REASONS, VAMP


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def decode(cls, encoder, p, B, options=None, seed=0, dtype=torch.float64):
    """Decode B fresh samples; return (per-sample losses, x, x_hat, decoder)."""
    n_s, n_d = encoder.n_s, encoder.n_d
    ctx = DecoderContext(cell=Cell(n_s, n_d, p), seed=seed, encoder=encoder, dtype=dtype,
                         options=dict(options or {}), decoder_name=cls.name)
    dec = cls(ctx)
    x = SparseSampler(n_s, p, seed, "eval", dtype=dtype).sample(B)
    x_hat = dec.decode(encoder.encode(x))
    loss = ((x - x_hat) ** 2).to(torch.float64).mean(-1)
    return loss, x, x_hat, dec


def cv_mean(loss: torch.Tensor, x: torch.Tensor, p: float) -> tuple[float, float]:
    """Mean loss with ||x||^2 (known mean n_s p/3) as control variate, and its standard error."""
    l = loss.numpy()
    q = (x.to(torch.float64) ** 2).sum(-1).numpy()
    c = np.cov(l, q)
    beta = c[0, 1] / c[1, 1]
    adj = l - beta * (q - x.shape[-1] * p / 3.0)
    n = len(adj)
    se = math.sqrt(((adj - adj.mean()) ** 2).sum() / (n - 2) / n)
    return float(adj.mean()), se


def rug(n_s, n_d, dtype=torch.float64, seed=0):
    return PersianRug(n_s, n_d, seed=seed, dtype=dtype)


# ----------------------------------------------------------------------------- exact recovery


def test_vamp_recovers_exactly_float64_through_the_runner():
    n_s, n_d, p = 4096, 1024, 0.045
    unit = WorkUnit(n_s, n_d, p, "vamp", dtype="float64", min_samples=4, max_samples=4)
    row = run_unit(unit)
    assert row["status"] == "ok", row["error"]
    assert row["loss"] < 1e-20  # machine precision (measured ~5e-31)
    assert row["loss"] < 1e-15 * row["e2_bound"]
    assert row["predicted"] == 0.0 == vamp_se(p, n_d / n_s).mse
    assert row["ratio_predicted"] is None  # undefined against an exact-recovery prediction
    prm = row["params"]
    assert prm["stop_reasons"] == {"variance_collapse": 4}
    assert row["converged"] is True and row["stop_reason"] == "variance_collapse"  # the declared columns
    assert prm["breakdown"] == 0 and prm["n_decoded"] == 4
    assert 1 <= prm["iterations_mean"] <= prm["iterations_max"] < 100
    assert prm["variances"] == "per sample"


def test_vamp_recovers_exactly_float32():
    p = 0.045
    loss, _, x_hat, dec = decode(VAMP, rug(4096, 1024, torch.float32), p, 8, dtype=torch.float32)
    assert x_hat.dtype == torch.float32
    assert float(loss.max()) < 1e-6 * p / 3  # measured ~1e-13
    assert float(loss.mean()) < 1e-6 * cell_theory(4096, 1024, p)["e2_bound"]
    assert dec.info["breakdown"] == 0


# ----------------------------------------------------------------------------- stalls


@pytest.mark.parametrize("p,expected", [(0.05, 0.00972), (0.08, 0.0195)])
def test_vamp_stall_matches_state_evolution(p, expected):
    n_s, n_d = 4096, 410
    pred = vamp_se(p, n_d / n_s).mse
    assert pred == pytest.approx(expected, rel=3e-3)  # the reference values above (r = 0.1001 here)
    loss, x, x_hat, dec = decode(VAMP, rug(n_s, n_d), p, 64, {"tol": 1e-3, "max_iter": 100})
    assert bool(torch.isfinite(x_hat).all())
    assert dec.info["predicted"] == pred
    mean, se = cv_mean(loss, x, p)
    assert se < 0.02 * pred  # the test resolves a 5% departure
    assert abs(mean - pred) <= 0.05 * pred
    assert abs(float(loss.mean()) - pred) <= 0.05 * pred  # plain mean too


def test_vamp_never_nan_past_convergence():
    """Where SE stalls, 500 iterations with tol = 0 (far past convergence) stay finite and near the stall."""
    n_s, n_d, p = 4096, 410, 0.05
    enc = rug(n_s, n_d)
    conv_loss, _, _, conv = decode(VAMP, enc, p, 2)
    loss, _, x_hat, dec = decode(VAMP, enc, p, 2, {"max_iter": 500, "tol": 0})
    assert bool(torch.isfinite(x_hat).all())
    assert dec.info["iterations_mean"] > 3 * conv.info["iterations_mean"]  # it did iterate on
    assert set(dec.info["stop_reasons"]) <= set(REASONS)
    # the estimate does not drift away from the fixed point it converged to
    assert torch.allclose(loss, conv_loss, rtol=0.1)
    assert float(loss.max()) < 2 * vamp_se(p, n_d / n_s).mse


def test_vamp_is_per_sample():
    """A sample's x_hat does not depend on the rest of its batch."""
    enc = rug(1024, 103)
    _, x, x_hat, _ = decode(VAMP, enc, 0.08, 4)
    ctx = DecoderContext(cell=Cell(1024, 103, 0.08), seed=0, encoder=enc, dtype=torch.float64)
    for i in range(4):
        alone = VAMP(ctx).decode(enc.encode(x[i:i + 1]))
        assert torch.allclose(alone[0], x_hat[i], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- AMP on i.i.d. Gaussian W


@pytest.mark.parametrize("n_s,r,p", [(4096, 0.1, 0.08), (2048, 0.2, 0.2)])
def test_amp_on_gaussian_matches_state_evolution(n_s, r, p):
    n_d = round(r * n_s)
    pred = amp_se(p, n_d / n_s).mse
    assert pred > 0  # a stall: the prediction is a loss, not exact recovery
    loss, x, x_hat, dec = decode(AMP, Gaussian(n_s, n_d, seed=0, dtype=torch.float64), p, 64, {"tol": 1e-3})
    assert bool(torch.isfinite(x_hat).all())
    assert dec.info["predicted"] == pred and dec.info["predicted_by"] == "amp_se"
    mean, se = cv_mean(loss, x, p)
    assert se < 0.01 * pred
    assert abs(mean - pred) <= 0.05 * pred  # measured within 0.5%
    assert abs(float(loss.mean()) - pred) <= 0.05 * pred


def test_amp_recovers_on_gaussian_through_the_runner():
    unit = WorkUnit(1024, 256, 0.045, "amp", encoder="gaussian", dtype="float64", min_samples=4, max_samples=4)
    row = run_unit(unit)
    assert row["status"] == "ok", row["error"]
    assert row["encoder"] == "gaussian"
    assert row["loss"] < 1e-20
    assert row["params"]["stop_reasons"] == {"variance_collapse": 4}


def test_vamp_is_skipped_on_gaussian():
    row = run_unit(WorkUnit(256, 64, 0.05, "vamp", encoder="gaussian", min_samples=4, max_samples=4))
    assert row["status"] == "skipped"
    assert "orthogonal_rows" in row["error"]


# ----------------------------------------------------------------------------- breakdown


class ShiftedGaussian(Gaussian):
    """Gaussian W_in with every entry shifted by 1/sqrt(n_d): AMP's Onsager correction is wrong for it
    and the iteration diverges."""

    name = "shifted_gaussian_test"

    def __init__(self, n_s, n_d, seed=0, device="cpu", dtype=torch.float32):
        super().__init__(n_s, n_d, seed=seed, device=device, dtype=dtype)
        self.W = self.W + 1.0 / math.sqrt(n_d)


class _ShiftedPlugin:
    @staticmethod
    @plugins.hookimpl
    def decoderbench_register_encoders(register):
        register(ShiftedGaussian)


@pytest.fixture
def shifted_encoder():
    name = plugins.register_plugin(_ShiftedPlugin(), name="shifted-test")
    yield ShiftedGaussian.name
    plugins.unregister_plugin(name)


def test_amp_breakdown_stops_at_best_iterate(shifted_encoder):
    n_s, n_d, p = 1024, 256, 0.045
    row = run_unit(WorkUnit(n_s, n_d, p, "amp", encoder=shifted_encoder, dtype="float64",
                            min_samples=16, max_samples=16))
    assert row["status"] == "ok", row["error"]
    prm = row["params"]
    assert prm["breakdown"] >= 8  # measured 14 of 16
    assert "broke down" in prm["note"] and "best iterate" in prm["note"]
    assert math.isfinite(row["loss"])
    # The last iterate before the breakdown has loss ~0.6 (40x trivial); the best iterate (least
    # residual) is no worse than the start, x = 0, whose loss is p/3.
    assert row["loss"] < 1.2 * p / 3
    assert prm["stop_reason"] == "breakdown"
    assert prm["iterations_mean"] < prm["max_iter"]  # stopped at the breakdown, not at the cap


# ----------------------------------------------------------------------------- options

from decoderbench.contract.options import check as check_options  # noqa: E402


@pytest.mark.parametrize("options,word", [({"max_iter": 0}, "max_iter"), ({"max_iter": 2.5}, "max_iter"),
                                          ({"tol": -1}, "tol"), ({"tol": float("nan")}, "tol"),
                                          ({"tol": float("inf")}, "tol"), ({"damping": 0}, "damping"),
                                          ({"damping": 1.5}, "damping"), ({"damping": float("nan")}, "damping"),
                                          ({"damping": "x"}, "damping"), ({"dampng": 0.5}, "dampng")])
def test_bad_options(options, word):
    ctx = DecoderContext(cell=Cell(64, 16, 0.1), seed=0, encoder=rug(64, 16), options=options)
    with pytest.raises(ValueError, match=word):
        VAMP(ctx)
    with pytest.raises(ValueError, match=word):  # the check the harness runs before any unit
        check_options(AMP, options, Cell(64, 16, 0.1))


@pytest.mark.parametrize("line,word", [("damping = 0", "damping"), ("damping = 1.5", "damping"),
                                       ("max_iter = 0", "max_iter"), ("tol = -1e-3", "tol")])
def test_bad_options_are_refused_before_anything_runs(tmp_path, monkeypatch, capsys, line, word):
    """`decoderbench run` with a bad option: one line naming it, exit 2, no store."""
    from decoderbench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.toml").write_text(f'name = "g"\nseeds = [0]\n[cells]\nn_s = [64]\nr = [0.25]\np = [0.1]\n'
                                     f"[options.vamp]\n{line}\n")
    assert main(["run", "--grid", "g.toml", "--plugins", "vamp", "--out", "res"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and word in err and "Traceback" not in err, err
    assert not (tmp_path / "res").exists()


def test_bad_options_become_an_error_row():
    row = run_unit(WorkUnit(64, 16, 0.1, "amp", options=json.dumps({"max_iter": -3}), min_samples=4,
                            max_samples=4))
    assert row["status"] == "error" and "max_iter" in row["error"]


def test_max_iter_caps_the_iterations():
    loss, _, x_hat, dec = decode(VAMP, rug(1024, 103), 0.05, 4, {"max_iter": 3, "tol": 0})
    assert dec.info["iterations_max"] == 3
    assert dec.info["stop_reasons"] == {"max_iter": 4}
    assert dec.info["converged"] is False and dec.info["stop_reason"] == "max_iter"
    assert bool(torch.isfinite(x_hat).all())


# ----------------------------------------------------------------------------- robustness (collapse, restarts)


def test_false_collapse_restarts_instead_of_being_accepted():
    """n_s 256, r 0.1, p 0.01 (2.6 active features per sample): the posterior variance collapses on wrong
    estimates too; accepting every collapse gave a loss 5x the trivial p/3. Only estimates that reproduce h
    end a sample; the rest restart, and the row counts them."""
    p = 0.01
    enc = rug(256, 26, torch.float32)
    loss, _, x_hat, dec = decode(VAMP, enc, p, 512, dtype=torch.float32)
    assert bool(torch.isfinite(x_hat).all())
    info = dec.info
    assert info["restarts"] > 0 and 0 < info["restarted_samples"] <= 512
    assert float(loss.mean()) < 0.1 * p / 3  # measured 7.9e-5 at 2048 samples (p/3 = 3.3e-3)
    assert float((loss < 1e-3 * p / 3).double().mean()) > 0.9  # measured 0.98
    # every sample that stopped on a collapse reproduces h
    assert set(info["stop_reasons"]) <= set(REASONS)


def test_amp_false_collapse_restarts():
    p = 0.01
    loss, _, x_hat, dec = decode(AMP, rug(256, 26, torch.float32), p, 512, dtype=torch.float32)
    assert float(loss.mean()) < 0.2 * p / 3  # measured 1.8e-4
    assert dec.info["restarts"] > 0


@pytest.mark.parametrize("cls", [VAMP, AMP])
def test_per_sample_bit_identical_with_restarts(cls):
    """Restarts, per-sample damping and the compaction of stopped rows keep x_hat[i] a function of h[i]."""
    p = 0.01
    enc = rug(256, 26, torch.float32)
    ctx = DecoderContext(cell=Cell(256, 26, p), seed=0, encoder=enc, dtype=torch.float32)
    x = SparseSampler(256, p, 3, "eval", dtype=torch.float32).sample(48)
    h = enc.encode(x)
    dec = cls(ctx)
    full = dec.decode(h)
    assert dec.info["restarts"] > 0  # the batch does exercise the restarts
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cls(ctx).decode(h[perm]), full[perm])
    for i in (0, 7, 31):
        assert torch.equal(cls(ctx).decode(h[i:i + 1])[0], full[i])


def test_damping_keeps_the_fixed_point():
    """Damping changes the path, not the fixed point: a stall still sits on state evolution."""
    n_s, n_d, p = 4096, 410, 0.05
    pred = vamp_se(p, n_d / n_s).mse
    loss, x, _, dec = decode(VAMP, rug(n_s, n_d), p, 32, {"tol": 1e-3, "max_iter": 200, "damping": 0.7})
    assert dec.info["damping"] == 0.7
    mean, se = cv_mean(loss, x, p)
    assert abs(mean - pred) <= 0.06 * pred


def test_predicted_t_is_state_evolution_after_the_iterations_run():
    from decoderbench.model.theory import vamp_se_t

    n_s, n_d, p = 1024, 256, 0.045
    _, _, _, dec = decode(VAMP, rug(n_s, n_d), p, 4, {"max_iter": 3, "tol": 0})
    assert dec.info["predicted_t"] == vamp_se_t(p, n_d / n_s, 3)
    # one step is the elementwise conditional mean: state evolution says the elementwise MMSE
    t1 = vamp_se_t(p, n_d / n_s, 1)
    sigma = cell_theory(n_s, n_d, p)["sigma"]
    from decoderbench.model.theory import scalar_mmse

    assert t1 == pytest.approx(scalar_mmse(p, sigma), rel=1e-9)
    loss, x, _, one = decode(VAMP, rug(4096, 1024), p, 64, {"max_iter": 1})
    mean, se = cv_mean(loss, x, p)
    assert abs(mean - one.info["predicted_t"]) <= 0.05 * one.info["predicted_t"]


def test_recovery_threshold_matches_the_state_evolution_brackets():
    """r_c(p) lies in the brackets found by scanning vamp_se on a grid of r."""
    from decoderbench.model.theory import recovery_threshold

    for p, lo, hi in [(0.01, 0.03, 0.05), (0.045, 0.10, 0.125), (0.1, 0.175, 0.2), (0.2, 0.30, 0.35)]:
        rc = recovery_threshold(p)
        assert lo < rc < hi
        assert vamp_se(p, rc).mse == 0.0 and vamp_se(p, rc - 2e-3).mse > 0.0


def test_runner_row_records_recovery_and_restarts():
    row = run_unit(WorkUnit(256, 26, 0.01, "vamp", min_samples=256, max_samples=256))
    assert row["status"] == "ok", row["error"]
    assert 0.9 < row["recovered_frac"] <= 1.0 and row["recovered_frac_se"] > 0
    assert row["loss"] < row["trivial"] / 10
    assert row["params"]["restarts"] >= row["params"]["restarted_samples"] > 0
