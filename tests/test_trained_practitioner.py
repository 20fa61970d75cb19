"""TopK trained as practitioners train it (recipe ``practitioner``: tied unit-norm init, unit-norm W_in columns,
AuxK, k annealing, a k sweep) beside the paper's protocol, on small cells (n_s = 64, a few hundred steps)."""

from __future__ import annotations

import pytest
import torch

from decoderbench import BadInput, Cell, DecoderContext, PersianRug, TrainingSet
from decoderbench.model.data import make_generator
from decoderbench_plugins.trained import DECODERS, PRACTITIONER, cache_key, parse_options
from decoderbench_plugins.trained import arch as arch_mod
from decoderbench_plugins.trained.arch import ARCHS, K_ANNEAL_START, K_ANNEAL_STEPS, K_MULTS
from decoderbench_plugins.trained.trainer import _Trainer

P = 0.045
QUICK = {"threads": 1, "batch": 128, "window": 20, "check_every": 10, "max_time_s": 0, "max_steps": 150,
         "cache": False}


def _trainer(recipe: str, k: int = 3, n_s: int = 64, n_d: int = 16):
    opts = {"recipe": recipe, "k": k, **{o: v for o, v in QUICK.items() if o in ("batch", "window", "check_every")}}
    settings, caps = parse_options(opts, n_s, torch.device("cpu"), p=P, fixed="topk")
    return _Trainer(n_s, n_d, P, settings, torch.device("cpu"), torch.float32, make_generator(1), ARCHS["topk"],
                    caps["arch_options"])


def test_practitioner_init_is_tied_with_unit_norm_columns_and_stays_unit_norm():
    t = _trainer("practitioner")
    assert torch.allclose(t.W_in.norm(dim=0), torch.ones(64), atol=1e-6)
    assert torch.equal(t.W_out, t.W_in.T)
    from decoderbench import SparseSampler

    s = SparseSampler(64, P, 0, "train")
    t.train(lambda b: (s.sample(b), None), max_steps=30, max_time_s=None)
    assert torch.allclose(t.W_in.norm(dim=0), torch.ones(64), atol=1e-5)
    assert not torch.equal(t.W_out, t.W_in.T)  # trained apart after the tied start
    paper = _trainer("paper")
    assert not torch.allclose(paper.W_in.norm(dim=0), torch.ones(64), atol=0.1)  # the paper's init is untouched


def test_k_anneals_from_four_times_to_its_value_then_stays():
    opts = {"k": 3, "recipe": "practitioner"}
    a = ARCHS["topk"]
    assert a.k_at(opts, 0)["k"] == K_ANNEAL_START * 3
    mid = a.k_at(opts, K_ANNEAL_STEPS // 2)["k"]
    assert 3 < mid < K_ANNEAL_START * 3
    assert a.k_at(opts, K_ANNEAL_STEPS)["k"] == 3 and a.k_at(opts, 10**6)["k"] == 3
    assert a.k_at({"k": 3}, 0)["k"] == 3  # the paper's recipe: no annealing


def test_auxk_pulls_dead_features_and_counts_them(monkeypatch):
    monkeypatch.setattr("decoderbench_plugins.trained.trainer.DEAD_STEPS", 2)
    t = _trainer("practitioner", k=1)
    from decoderbench import SparseSampler

    s = SparseSampler(64, P, 0, "train")
    x = s.sample(128)
    with torch.no_grad():
        t.b[:32] = -100.0  # half the features can never fire: dead after 2 batches
    for _ in range(3):
        loss, objective = t.loss_of(x)
        t.step += 1
    assert t.n_dead == 32
    assert float(objective.detach()) > float(loss.detach())  # AuxK adds to what Adam minimises, never to the reported loss
    with torch.no_grad():
        l2, o2 = t.loss_of(x)
    assert float(l2) == float(o2)  # no AuxK outside training


def test_the_paper_recipe_keeps_its_cache_key_and_a_bad_recipe_is_refused():
    s1, c1 = parse_options({}, 64, torch.device("cpu"), p=P, fixed="topk")
    s2, c2 = parse_options({"recipe": "paper"}, 64, torch.device("cpu"), p=P, fixed="topk")
    assert c1["arch_options"] == c2["arch_options"] == {"k": 3}
    assert cache_key(64, 16, P, 0, s1, "cpu", torch.float32, "topk", c1["arch_options"]) == \
        cache_key(64, 16, P, 0, s2, "cpu", torch.float32, "topk", c2["arch_options"])
    with pytest.raises(BadInput, match="recipe must be one of paper, practitioner"):
        parse_options({"recipe": "openai"}, 64, torch.device("cpu"), p=P, fixed="topk")
    with pytest.raises(BadInput, match="unknown option 'recipe'"):
        parse_options({"recipe": "paper"}, 64, torch.device("cpu"), p=P, fixed="relu")
    with pytest.raises(BadInput, match="must be 'practitioner'"):
        PRACTITIONER["topk"]._parse({"recipe": "paper"}, 64, P, torch.device("cpu"))


@pytest.mark.parametrize("act", ["topk", "batchtopk"])
def test_the_sweep_trains_every_k_and_keeps_the_least_training_loss(act):
    n_s, n_d = 64, 16
    cls = PRACTITIONER[act]
    ctx = DecoderContext(cell=Cell(n_s, n_d, P), seed=0, encoder=PersianRug(n_s, n_d, seed=0),
                         options=dict(QUICK), decoder_name=cls.name)
    dec = cls(ctx)
    params = dec.fit(TrainingSet(ctx, cls.input_kind()))
    ks = sorted({max(1, round(m * P * n_s)) for m in K_MULTS})
    assert sorted(int(k) for k in params["k_sweep"]) == ks
    losses = {int(k): v["loss_train_last"] for k, v in params["k_sweep"].items()}
    assert params["k_best"] == min(losses, key=lambda k: (losses[k], k)) == params["k"]
    assert params["recipe"] == "practitioner" and params["activation"] == act
    again = cls(ctx).fit(TrainingSet(ctx, cls.input_kind()))  # same command and seed, same numbers
    assert again["k_sweep"] == params["k_sweep"]
    # k given: no sweep
    one = cls(DecoderContext(cell=ctx.cell, seed=0, encoder=ctx.encoder, options={**QUICK, "k": 2},
                             decoder_name=cls.name))
    p1 = one.fit(TrainingSet(ctx, cls.input_kind()))
    assert list(p1["k_sweep"]) == ["2"] and p1["k_best"] == 2
    assert DECODERS[act].name == f"trained-{act}"  # the paper's recipe keeps its name
