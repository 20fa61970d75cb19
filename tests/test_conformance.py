"""The decoder contract, checked on every registered decoder (built-in or installed).

Each case runs at a small cell (n_s = 256) with cheap options where a decoder offers them, so the
whole suite stays fast; a decoder it does not know runs with its defaults. What is checked:
attributes (name, kind, version, description, requires), fit returns JSON-able params, decode returns
(B, n_s) finite values, leaves its input alone and repeats itself, handles a batch of one and the
all-zero input, the same seed gives the same loss and another seed another, fit never draws from the
evaluation stream (and the training rows it saw are not evaluation rows), and elementwise /
filtering decoders really act on entries / within rows.
"""

from __future__ import annotations

import json

import pytest
import torch

from decoderbench import KINDS, PersianRug
from decoderbench.contract import registry as plugins
from decoderbench.model import data as data_mod
from decoderbench.contract.decoder import Cell, DecoderContext, TrainingSet, input_encoder, json_safe, prepare_input
from decoderbench.run.runner import WorkUnit, run_unit

N_S, N_D, P = 256, 64, 0.05
#: Cheap settings for decoders that have costly defaults (fewer pooled pairs, few steps/iterations).
CHEAP = {
    "linear": {"fit_pairs": 2**16}, "relu": {"fit_pairs": 2**16}, "jumprelu": {"fit_pairs": 2**16},
    "trec": {"fit_pairs": 2**16}, "prolu": {"fit_pairs": 2**16}, "gated": {"fit_pairs": 2**16},
    "topk": {"fit_pairs": 2**16}, "batchtopk": {"fit_pairs": 2**16},
    "vamp": {"max_iter": 3}, "amp": {"max_iter": 3},
    "trained": {"max_steps": 40, "batch": 64, "window": 10, "warm_steps": 0, "cache": False, "max_time_s": 0},
}
CHEAP.update({f"trained-{a}": CHEAP["trained"] for a in ("relu", "linear", "topk", "batchtopk", "jumprelu", "trec",
                                                           "prolu", "gated", "topk-practitioner",
                                                           "batchtopk-practitioner")})
CAPABILITIES = {"fast_transform", "orthogonal_rows"}

NAMES = sorted(plugins.decoders())


def _ctx(name: str, seed: int = 0) -> DecoderContext:
    enc = PersianRug(N_S, N_D, seed=seed)
    return DecoderContext(cell=Cell(N_S, N_D, P), seed=seed, encoder=enc, options=dict(CHEAP.get(name, {})),
                          decoder_name=name)


def _fitted(name: str, seed: int = 0):
    reg = plugins.get_decoder(name)
    ctx = _ctx(name, seed)
    dec = reg.cls(ctx)
    params = dec.fit(TrainingSet(ctx, reg.cls.input_kind()))
    return reg, ctx, dec, params


def _unit(name: str, seed: int = 0) -> WorkUnit:
    return WorkUnit(N_S, N_D, P, name, seed=seed, min_samples=256, max_samples=256,
                    options=json.dumps(CHEAP.get(name, {}), sort_keys=True))


def test_registry_is_not_empty_and_builtins_load():
    assert {"linear", "relu", "jumprelu", "trec", "prolu", "gated", "topk", "batchtopk", "oracle"} <= set(NAMES)
    broken = {k: v for k, v in plugins.load_errors().items()}
    assert not broken, f"plugins failed to load: {broken}"


@pytest.mark.parametrize("name", NAMES)
def test_attributes(name):
    reg = plugins.get_decoder(name)
    cls = reg.cls
    assert cls.name == name == reg.name
    assert cls.kind in KINDS and reg.kind == cls.kind
    assert isinstance(cls.version, str) and cls.version
    assert isinstance(cls.description, str) and cls.description.strip()
    assert set(cls.requires) <= CAPABILITIES, f"{name} requires unknown capabilities {set(cls.requires)}"
    assert cls.input_kind() in ("z", "h", "code")


@pytest.mark.parametrize("name", NAMES)
def test_fit_and_decode_contract(name):
    reg, ctx, dec, params = _fitted(name)
    assert params is None or isinstance(params, dict)
    json.dumps(json_safe({**(params or {}), **(dec.info or {})}))  # JSON-able after json_safe
    x = data_mod.SparseSampler(N_S, P, 99, "conformance-check").sample(16)
    enc = input_encoder(dec, ctx.encoder)  # a learned decoder's own W_in, else the cell's encoder
    inp = prepare_input(enc, reg.cls.input_kind(), x)
    before = inp.clone()
    with torch.no_grad():
        out = dec.decode(inp)
        again = dec.decode(inp)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (16, N_S)
    assert out.dtype.is_floating_point
    assert bool(torch.isfinite(out).all())
    assert torch.equal(inp, before), "decode modified its input"
    assert torch.equal(out, again), "decode is not repeatable"
    # a batch of one, and the all-zero input (x = 0, hence z = 0 and h = 0)
    with torch.no_grad():
        one = dec.decode(inp[:1].clone())
        zero = dec.decode(prepare_input(enc, reg.cls.input_kind(), torch.zeros(3, N_S)))
    assert tuple(one.shape) == (1, N_S) and bool(torch.isfinite(one).all())
    assert tuple(zero.shape) == (3, N_S) and bool(torch.isfinite(zero).all())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_loss_other_seed_other_loss(name):
    a, b, c = run_unit(_unit(name)), run_unit(_unit(name)), run_unit(_unit(name, seed=1))
    for row in (a, b, c):
        assert row["status"] == "ok", row["error"]
        assert row["loss"] > 0 and row["loss_se"] > 0
    assert a["loss"] == b["loss"] and a["loss_se"] == b["loss_se"] and a["n_eval"] == b["n_eval"]
    assert c["loss"] != a["loss"]


@pytest.mark.parametrize("name", NAMES)
def test_fit_never_sees_evaluation_samples(name, monkeypatch):
    purposes = []
    real_init = data_mod.SparseSampler.__init__

    def spy(self, *args, **kw):
        real_init(self, *args, **kw)
        purposes.append(self.purpose)

    seen = []

    class Recording(TrainingSet):
        def sample(self, batch):
            inp, x = super().sample(batch)
            seen.append(x.clone())
            return inp, x

    monkeypatch.setattr(data_mod.SparseSampler, "__init__", spy)
    reg = plugins.get_decoder(name)
    ctx = _ctx(name)
    dec = reg.cls(ctx)
    dec.fit(Recording(ctx, reg.cls.input_kind()))
    monkeypatch.undo()
    assert not any(str(q).startswith("eval") for q in purposes), f"{name}.fit drew from the evaluation stream"
    from decoderbench.model.evalkey import eval_sampler

    evals = eval_sampler(ctx.cell, 0).sample(2048)  # the harness's (keyed) evaluation stream
    eval_rows = {bytes(r.numpy().tobytes()) for r in evals if bool(r.any())}
    train_rows = [r for t in seen for r in t if bool(r.any())]
    assert not any(bytes(r.numpy().tobytes()) in eval_rows for r in train_rows)


def _kind(name):
    return plugins.get_decoder(name).kind


@pytest.mark.parametrize("name", [n for n in NAMES if _kind(n) == "elementwise"])
def test_elementwise_acts_on_each_entry_alone(name):
    _, ctx, dec, _ = _fitted(name)
    g = torch.Generator().manual_seed(7)
    values = torch.linspace(-1.0, 2.0, 61)
    z = values[torch.randint(0, values.numel(), (8, N_S), generator=g)]
    with torch.no_grad():
        out = dec.decode(z)
    for v in values:  # equal inputs, wherever they sit, give equal outputs
        sel = out[z == v]
        if sel.numel():
            assert torch.equal(sel, sel[:1].expand_as(sel)), f"{name}: output at z={float(v)} depends on position"
    perm = torch.randperm(8 * N_S, generator=g)
    with torch.no_grad():
        shuffled = dec.decode(z.reshape(-1)[perm].reshape(8, N_S))
    assert torch.equal(shuffled.reshape(-1), out.reshape(-1)[perm])


@pytest.mark.parametrize("name", [n for n in NAMES if _kind(n) == "filtering"])
def test_filtering_is_equivariant_within_rows(name):
    reg, ctx, dec, _ = _fitted(name)
    x = data_mod.SparseSampler(N_S, P, 5, "conformance-check").sample(8)
    z = prepare_input(ctx.encoder, "z", x)
    perm = torch.randperm(N_S, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = dec.decode(z)
        out_p = dec.decode(z[:, perm].contiguous())
    assert torch.equal(out_p, out[:, perm])
