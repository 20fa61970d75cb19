"""The trained architectures (``trained-<act>``), the learned kind's input, the model cache's integrity checks and
bad input. Small cells (n_s <= 128) and, where a run must stop by the paper's rule, a shorter window; the whole
file takes well under a minute on one core.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from decoderbench import Cell, Decoder, DecoderContext, PersianRug, TrainingSet
from decoderbench.cli import main
from decoderbench.model.data import SparseSampler, variance
from decoderbench.contract.decoder import LearnedCode, input_encoder, prepare_input
from decoderbench.model.evalkey import eval_sampler
from decoderbench.contract.registry import Registered
from decoderbench.run.runner import WorkUnit, run_unit
from decoderbench_plugins.trained import (
    ARCHS,
    DECODERS,
    ModelFileError,
    Trained,
    cache_key,
    load_model,
    parse_options,
    read_model_file,
)
from decoderbench_plugins.trained.arch import _JumpFn, _ProLUFn

P = 0.045
ARCH_NAMES = list(ARCHS)
#: Shorter windows than the paper's 200 so that the rule fires within about a second at n_s = 64.
QUICK = {"threads": 1, "batch": 256, "window": 40, "check_every": 10, "max_time_s": 60}


def _ctx(name, n_s, n_d, options, seed=0, p=P):
    return DecoderContext(cell=Cell(n_s, n_d, p), seed=seed, encoder=PersianRug(n_s, n_d, seed=seed),
                          options=options, decoder_name=name)


def _fit(name, n_s, n_d, options, seed=0):
    cls = Trained if name == "trained" else DECODERS[name.removeprefix("trained-")]
    ctx = _ctx(name, n_s, n_d, options, seed)
    dec = cls(ctx)
    return dec, dec.fit(TrainingSet(ctx, cls.input_kind()))


def _x(n_s, n=256, p=P):
    return SparseSampler(n_s, p, 0, "test-eval").sample(n)


def _out(dec, x):
    return dec.decode(input_encoder(dec, None).encode(x))


def _same(a, b):
    return all(torch.equal(getattr(a, t), getattr(b, t)) for t in ("W_in", "W_out", "b")) and \
        a.extras.keys() == b.extras.keys() and all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)


# ------------------------------------------------------------------------------------------ registration


def test_every_architecture_is_its_own_decoder():
    from decoderbench.contract import registry as plugins

    reg = plugins.decoders()
    for a in ARCH_NAMES:
        r = reg[f"trained-{a}"]
        assert r.kind == "learned" and r.cls.activation == a and r.cls.input_kind() == "code"
    assert reg["trained"].cls is Trained
    assert set(ARCH_NAMES) == {"relu", "linear", "topk", "batchtopk", "jumprelu", "trec", "prolu", "gated"}


# ------------------------------------------------------------------------------- each architecture trains


@pytest.fixture(scope="module")
def trained_all(tmp_path_factory):
    """Every architecture trained at n_s = 64, r = 0.25 until the rule fires, cached."""
    cache = str(tmp_path_factory.mktemp("cache"))
    out = {}
    for a in ARCH_NAMES:
        opts = {**QUICK, "cache_dir": cache}
        out[a] = (opts, *_fit(f"trained-{a}", 64, 16, opts))
    return out


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_trains_stops_by_the_rule_caches_and_reloads_bit_exactly(trained_all, arch):
    opts, dec, prm = trained_all[arch]
    assert prm["stop_reason"] == "converged", prm
    assert prm["steps"] >= 2 * QUICK["window"] and prm["steps"] % QUICK["check_every"] == 0
    assert prm["activation"] == arch and prm["reused"] is False and prm["model_path"]
    assert prm["loss_train_last"] < P / 3  # better than the trivial decoder
    x = _x(64)
    y = _out(dec, x)
    assert bool(torch.isfinite(y).all()) and tuple(y.shape) == (256, 64)
    # the file is the model
    saved = load_model(prm["model_path"])
    assert saved.arch == arch and _same(saved, dec.model)
    assert torch.equal(saved.forward(x), y)
    # a second fit reuses it without training, bit for bit
    again, prm2 = _fit(f"trained-{arch}", 64, 16, opts)
    assert (prm2["reused"], prm2["train_time_s"], prm2["steps"]) == (True, 0.0, prm["steps"])
    assert _same(again.model, dec.model) and torch.equal(_out(again, x), y)
    for k in ("diag_mean", "bias_mean", "lambda_be", "dead_features"):
        assert prm2[k] == prm[k]


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "gated", "trec"])
def test_resume_from_a_capped_checkpoint_is_bit_exact(tmp_path, arch):
    """Adam state of the extras (theta, r_mag, b_mag) is in the checkpoint: capped then resumed equals straight."""
    base = {"threads": 1, "batch": 128, "window": 50, "cache_dir": str(tmp_path)}
    straight, _ = _fit(f"trained-{arch}", 32, 8, {**base, "max_steps": 60, "cache": False})
    _fit(f"trained-{arch}", 32, 8, {**base, "max_steps": 25})
    resumed, prm = _fit(f"trained-{arch}", 32, 8, {**base, "max_steps": 60})
    assert (prm["resumed_from_step"], prm["steps"]) == (25, 60)
    assert _same(straight.model, resumed.model)


def test_trained_and_trained_relu_are_one_model_and_one_cache_entry(tmp_path):
    opts = {"threads": 1, "max_steps": 30, "cache_dir": str(tmp_path)}
    a, pa = _fit("trained", 32, 8, opts)
    b, pb = _fit("trained-relu", 32, 8, opts)
    c, pc = _fit("trained", 32, 8, {**opts, "activation": "relu"})
    assert pa["cache_key"] == pb["cache_key"] == pc["cache_key"]
    assert pb["reused"] is True and _same(a.model, b.model) and _same(a.model, c.model)
    # the ReLU key is the one decoderbench 0.1.0 used (no architecture fields), other activations differ
    s, caps = parse_options({}, 32, torch.device("cpu"), p=P)
    assert cache_key(32, 8, P, 0, s, "cpu", torch.float32) == cache_key(32, 8, P, 0, s, "cpu", torch.float32, "relu", {})
    keys = {cache_key(32, 8, P, 0, s, "cpu", torch.float32, a, ARCHS[a].defaults(32, P)) for a in ARCH_NAMES}
    assert len(keys) == len(ARCH_NAMES)
    # `trained` with an activation is that architecture's model
    d, pd = _fit("trained", 32, 8, {**opts, "activation": "gated"})
    e, pe = _fit("trained-gated", 32, 8, opts)
    assert pd["cache_key"] == pe["cache_key"] and pe["reused"] is True and _same(d.model, e.model)


def test_all_architectures_start_from_the_same_weights():
    first = {}
    for a in ARCH_NAMES:
        dec, prm = _fit(f"trained-{a}", 32, 8, {"threads": 1, "max_steps": 1, "cache": False, "lr": 1e-30})
        first[a] = dec.model.W_in
    assert all(torch.allclose(first[a], first["relu"], atol=1e-20, rtol=0) for a in ARCH_NAMES)


def test_trained_linear_lands_on_the_best_linear_value():
    """The affine optimum of rank n_d on i.i.d. features is v (1 - r) (PCA of an isotropic covariance). At
    n_s = 128, r = 0.25 the paper's protocol converges in about 1,000 steps; the measured loss lies within 3 SE."""
    opts = {"threads": 1, "max_time_s": 60, "cache": False}
    row = run_unit(WorkUnit(128, 32, P, "trained-linear", seed=0, target_rel_se=0.002, min_samples=16384,
                            max_samples=65536, options=json.dumps(opts, sort_keys=True)))
    assert row["status"] == "ok", row["error"]
    assert row["params"]["stop_reason"] == "converged"
    best = variance(P) * (1 - 0.25)
    assert row["linear"] == pytest.approx(best, rel=1e-12)
    assert abs(row["loss"] - best) < 3 * row["loss_se"], (row["loss"], best, row["loss_se"])


def test_topk_keeps_k_per_sample_and_batchtopk_k_per_sample_on_average(trained_all):
    x = _x(64, 512)
    k = trained_all["topk"][2]["k"]
    assert k == round(P * 64) == 3
    assert int((_out(trained_all["topk"][1], x) > 0).sum(1).max()) <= k
    kb = trained_all["batchtopk"][2]["k"]
    assert int((_out(trained_all["batchtopk"][1], x) > 0).sum()) <= kb * 512


# ------------------------------------------------------------------------------------- pseudo-derivatives


def test_jumprelu_threshold_pseudo_derivative():
    """Rajamanoharan et al. 2024b: d/dtheta [y 1[y > theta]] = -(theta/eps) K((y - theta)/eps), K the rectangle."""
    y = torch.tensor([[0.10, 0.195, 0.204, 0.30], [0.199, 0.21, -1.0, 0.2051]], dtype=torch.float64,
                     requires_grad=True)
    theta = torch.tensor([0.2, 0.2, 0.2, 0.2], dtype=torch.float64, requires_grad=True)
    eps = 0.01
    out = _JumpFn.apply(y, theta, eps)
    assert torch.equal(out.detach(), torch.where(y > theta, y, 0.0).detach())
    g = torch.arange(1.0, 9.0, dtype=torch.float64).reshape(2, 4)
    out.backward(g)
    near = ((y - theta).abs() < eps / 2).double()
    assert torch.allclose(theta.grad, (-(theta / eps) * near * g).sum(0).detach(), rtol=0, atol=1e-15)
    assert torch.equal(y.grad, torch.where(y > theta, g, 0.0).detach())


def test_prolu_gradient_is_taggarts_relu_variant():
    m = torch.tensor([[0.5, -0.1, 0.3], [0.2, 0.4, -0.3]], requires_grad=True)
    b = torch.tensor([-0.4, 0.5, 0.0], requires_grad=True)
    out = _ProLUFn.apply(m, b)
    active = (m > 0) & (m + b > 0)
    assert torch.equal(out.detach(), torch.where(active, m, 0.0).detach())
    out.sum().backward()
    assert torch.equal(m.grad, active.float()) and torch.equal(b.grad, active.float().sum(0))


# ------------------------------------------------------------------------------- the learned kind's input


class Spy(Decoder):
    """A learned decoder that records what decode receives and tries to read x in every way it could."""

    name = "spy_learned"
    kind = "learned"
    description = "records its inputs"
    seen: list = []
    W: torch.Tensor | None = None

    def fit(self, train):
        inp, x = train.sample(8)
        assert torch.equal(inp, x)  # training sees x: the reconstruction target
        self.W = torch.randn(self.ctx.n_d, self.ctx.n_s, generator=torch.Generator().manual_seed(0))
        return {}

    def encoder_weight(self):
        return self.W

    def decode(self, h):
        Spy.seen.append(h.clone())
        self.W.mul_(0.0)  # changing W_in after the harness took it changes nothing
        return torch.zeros(h.shape[0], self.ctx.n_s)


def _reg(cls):
    return Registered(cls.name, cls, cls.kind, "test", "test", "1")


def test_decode_receives_only_the_code_of_its_own_encoder():
    Spy.seen = []
    unit = WorkUnit(64, 16, P, "spy_learned", seed=0, min_samples=64, max_samples=128)
    row = run_unit(unit, registered=_reg(Spy))
    assert row["status"] == "ok", row["error"]
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    sampler = eval_sampler(Cell(64, 16, P), 0)  # the eval stream (keyed: evalkey.py), in the harness's batch sizes
    x = torch.cat([sampler.sample(h.shape[0]) for h in Spy.seen])
    h = torch.cat(Spy.seen)
    assert h.shape == (x.shape[0], 16)  # n_d per sample, never n_s
    assert torch.equal(h, x @ W.T)  # the W_in taken right after fit, despite decode zeroing its own copy


def test_no_input_kind_passes_x():
    enc = PersianRug(64, 16, seed=0)
    x = _x(64, 4)
    with pytest.raises(ValueError, match="input kind must be one of z, h, code"):
        prepare_input(enc, "x", x)
    with pytest.raises(ValueError, match="its own code"):
        prepare_input(enc, "code", x)  # a learned decoder's input cannot come from the cell's encoder
    code = LearnedCode(torch.ones(16, 64), 64, 16)
    with pytest.raises(ValueError, match="needs the cell's encoder"):
        prepare_input(code, "z", x)
    assert prepare_input(code, "code", x).shape == (4, 16)


class Identity(Spy):
    name = "identity_learned"

    def fit(self, train):
        self.W = torch.eye(self.ctx.n_s)
        return {}


class NoWeight(Decoder):
    name = "no_weight_learned"
    kind = "learned"
    description = "no encoder_weight"

    def decode(self, h):
        return torch.zeros(h.shape[0], self.ctx.n_s)


def test_a_learned_decoder_cannot_hand_itself_x():
    row = run_unit(WorkUnit(64, 16, P, "identity_learned", min_samples=64, max_samples=64), registered=_reg(Identity))
    assert row["status"] == "error" and "must have shape (n_d, n_s) = (16, 64), got (64, 64)" in row["error"]
    row = run_unit(WorkUnit(64, 16, P, "no_weight_learned", min_samples=64, max_samples=64), registered=_reg(NoWeight))
    assert row["status"] == "error" and "must define encoder_weight()" in row["error"]


# ------------------------------------------------------------------------------------- cache integrity


def _cached_pair(tmp_path):
    opts = {"threads": 1, "max_steps": 30, "cache_dir": str(tmp_path)}
    dec, prm = _fit("trained-jumprelu", 32, 8, opts)
    return opts, dec, prm, Path(prm["model_path"])


def test_a_corrupt_cache_file_is_retrained_never_used(tmp_path):
    opts, dec, prm, path = _cached_pair(tmp_path)
    path.write_bytes(path.read_bytes()[:200])  # truncated
    again, prm2 = _fit("trained-jumprelu", 32, 8, opts)
    assert prm2["reused"] is False and "cannot be read" in prm2["cache_rejected"]
    assert _same(again.model, dec.model)  # retrained: the same model as the first run
    assert read_model_file(path, require_hash=True)  # and overwritten with a good file


def test_a_cache_file_whose_content_does_not_match_is_retrained(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    opts, dec, prm, path = _cached_pair(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        md, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    t["b"] = t["b"] + 1.0  # tampered tensors under the old hash
    save_file(t, str(path), metadata=md)
    with pytest.raises(ModelFileError, match="do not match its content hash"):
        read_model_file(path)
    _, prm2 = _fit("trained-jumprelu", 32, 8, opts)
    assert prm2["reused"] is False and "content hash" in prm2["cache_rejected"]


def test_another_keys_model_under_this_key_is_retrained(tmp_path):
    opts, dec, prm, path = _cached_pair(tmp_path)
    other, po = _fit("trained-jumprelu", 32, 8, {**opts, "bandwidth": 0.05})
    Path(po["model_path"]).replace(path)  # a valid file, of another key, under this key's name
    again, prm2 = _fit("trained-jumprelu", 32, 8, opts)
    assert prm2["reused"] is False and "its key is" in prm2["cache_rejected"]
    assert _same(again.model, dec.model)


def test_a_file_without_a_content_hash_is_not_reused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    opts, dec, prm, path = _cached_pair(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        md, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    md.pop("content_sha256")
    save_file(t, str(path), metadata=md)
    assert load_model(path).content_verified is False  # still readable as a model
    _, prm2 = _fit("trained-jumprelu", 32, 8, opts)
    assert prm2["reused"] is False and "no content hash" in prm2["cache_rejected"]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("decoder, options, message", [
    ("trained-topk", {"k": 0}, "trained-topk option k must be an integer in 1..n_s=64, got 0"),
    ("trained-batchtopk", {"k": 65}, "trained-batchtopk option k must be an integer in 1..n_s=64, got 65"),
    ("trained-topk", {"k": 2.5}, "option k must be an integer"),
    ("trained-relu", {"k": 3}, "trained-relu: unknown option 'k' for activation relu; allowed: max_steps"),
    ("trained-gated", {"bandwidth": 0.1}, "unknown option 'bandwidth' for activation gated"),
    ("trained-jumprelu", {"bandwidth": 0}, "option bandwidth must be a finite number > 0"),
    ("trained", {"activation": "swish"}, "trained option activation must be one of relu, linear, topk"),
    ("trained-topk", {"activation": "relu"}, "trained-topk option activation must be 'topk'"),
])
def test_bad_options_exit_2_with_one_line_before_training(tmp_path, capsys, decoder, options, message):
    grid = tmp_path / "g.toml"
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    grid.write_text(f'[[cell]]\nn_s = 64\nr = 0.25\np = 0.045\n\n[options.{decoder}]\n{table}\n')
    rc = main(["run", "--grid", str(grid), "--plugins", decoder, "--out", str(tmp_path / "store"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "store" / "rows").exists() or not any((tmp_path / "store" / "rows").iterdir())
    with pytest.raises(ValueError, match=message.split(": ")[-1][:30].replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        _fit(decoder, 64, 16, {**options, "cache": False, "max_steps": 1})


def test_an_isolated_learned_decoder_hands_over_its_encoder_weight():
    """Guarded execution in a child process (worker.run_guarded, isolate=True): the harness asks the child for
    W_in and encodes x itself; the row equals the in-process one."""
    from decoderbench.run.worker import Guard, run_guarded

    opts = json.dumps({"threads": 1, "max_steps": 20, "batch": 64, "cache": False}, sort_keys=True)
    unit = WorkUnit(32, 8, P, "trained-gated", seed=0, min_samples=256, max_samples=256, options=opts)
    iso = run_guarded(unit, Guard(isolate=True, timeout_s=120))
    plain = run_unit(unit)
    assert iso["status"] == "ok", iso["error"]
    assert iso["isolated"] is True and iso["loss"] == plain["loss"]


# ------------------------------------------------------------------------------------------------ the board


def _fake_rows():
    from decoderbench.model.theory import cell_theory

    rows = []
    for n_s, n_d, p in ((64, 16, 0.045), (128, 32, 0.045)):
        t = cell_theory(n_s, n_d, p)
        for i, a in enumerate(ARCH_NAMES):
            for name, loss in ((f"trained-{a}", 0.004 * (1 + 0.1 * i)), (a, 0.005 + 0.0001 * i)):
                rows.append({"decoder": name, "n_s": n_s, "n_d": n_d, "p": p, "seed": 0, "encoder": "rug",
                             "dtype": "float32", "status": "ok", "loss": loss, "loss_se": 1e-5, "key": f"{name}{n_s}",
                             "finished_at": "2026-01-01T00:00:00+00:00", "decoder_version": "1", "source": "t",
                             "params": json.dumps({"stop_reason": "converged", "steps": 900, "dead_features": 0,
                                                   "diag_mean": 1.2, "diag_std": 0.01, "k": 3})
                             if name.startswith("trained") else "{}",
                             **{k: t[k] for k in ("e2_bound", "mmse_elementwise", "linear", "relu_theory", "vamp_se",
                                                  "trivial", "sigma")}})
    return rows


def test_board_spreads_ratios_and_figure(tmp_path):
    from PIL import Image

    from decoderbench_plugins.trained import board

    rows = _fake_rows()
    files, sums = board.render(rows, "decoderbench trained-board")
    s = sums[0]
    nonlinear = [0.004 * (1 + 0.1 * i) for i, a in enumerate(ARCH_NAMES) if a != "linear"]
    assert s["spread_trained"]["factor"] == pytest.approx(max(nonlinear) / min(nonlinear), rel=1e-12)
    assert s["spread_trained"]["best"] == "relu" and s["best_rug"]["best"] == "relu"
    e = next(e for e in s["archs"] if e["arch"] == "gated")
    assert e["ratio"] == pytest.approx(e["t_loss"] / e["r_loss"], rel=1e-12)
    assert e["t_mmse"] == pytest.approx(e["t_loss"] / s["theory"]["mmse_elementwise"], rel=1e-12)
    text = files[board.BOARD_FILE]
    assert "generated by `decoderbench trained-board`" in text and "## n_s = 128, n_d = 32" in text
    png = board.plot(sums, tmp_path / board.FIGURE, rows)
    assert png.with_suffix(".svg").is_file() and max(Image.open(png).size) <= 1600


def test_trained_board_is_a_plugin_command(capsys):
    assert main(["--help"]) == 0
    assert "trained-board" in capsys.readouterr().out
