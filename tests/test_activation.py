"""Bring your own activation (decoderbench.contract.activation): ``act(a z + b)`` fitted by a grid of starts and L-BFGS."""

from __future__ import annotations

import pytest
import torch

import decoderbench as db
from decoderbench import api
from decoderbench.contract.activation import activation_decoder, callable_name, check_activation


def test_torch_relu_lands_within_one_percent_of_the_exact_relu():
    """On the cell n_s = 1024, r = 0.25, p = 0.045 the generic fit of torch.relu matches the built-in relu,
    whose (a, b) are the exact least-squares optimum (a full threshold scan): same samples, same rug."""
    df = db.evaluate([torch.relu, "relu"], n_s=1024, r=0.25, p=0.045, max_samples=8192, device="cpu",
                     progress=False)
    rows = {r["decoder"]: r for r in api.records(df)}
    mine, exact = rows["relu_act"], rows["relu"]
    assert mine["status"] == exact["status"] == "ok"
    assert abs(mine["loss"] / exact["loss"] - 1) < 0.01
    assert abs(mine["params"]["a"] - exact["params"]["a"]) < 0.02 * exact["params"]["a"]
    assert mine["params"]["train_loss"] <= exact["params"]["train_loss"] * 1.01
    assert "L-BFGS" in mine["params"]["optimizer"] and mine["params"]["module_params"] == 0


def test_a_module_fits_its_own_parameters_and_the_users_module_is_untouched():
    prelu = torch.nn.PReLU(init=0.25)
    df = db.evaluate([prelu, "relu"], n_s=256, r=0.25, p=0.05, max_samples=1024, device="cpu", progress=False)
    rows = {r["decoder"]: r for r in api.records(df)}
    assert rows["prelu"]["status"] == "ok" and rows["prelu"]["params"]["module_params"] == 1
    # a PReLU contains the ReLU (negative slope 0): its training loss is no worse than the generic relu fit's
    assert rows["prelu"]["loss"] < 1.05 * rows["relu"]["loss"]
    assert float(prelu.weight.detach()) == 0.25  # fitted on a copy


def test_an_activation_that_compares_entries_is_caught_by_the_elementwise_probe():
    def softmax(y):
        return torch.softmax(y, dim=-1)

    df = db.evaluate([softmax], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", progress=False)
    (row,) = api.records(df)
    assert row["status"] == "error" and "does not act on each entry alone" in row["error"]
    # declared filtering, it is scored
    cls = activation_decoder(softmax, kind="filtering")
    (row,) = api.records(db.evaluate([cls], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu",
                                     progress=False))
    assert row["status"] == "ok" and row["kind"] == "filtering"


def test_names_and_checks():
    assert callable_name(torch.nn.functional.gelu) == "gelu"
    assert callable_name(torch.nn.GELU()) == "gelu"
    assert callable_name(lambda y: y) == "lambda"
    with pytest.raises(ValueError, match="'bad'.*shape"):
        check_activation(lambda y: y[:, :3], "bad")
    with pytest.raises(ValueError, match="non-finite"):
        check_activation(lambda y: y / 0, "bad")
    with pytest.raises(ValueError, match="fails on"):
        check_activation(lambda y: y.foo(), "bad")


def test_fit_is_deterministic():
    df1 = db.evaluate([torch.tanh], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", progress=False)
    df2 = db.evaluate([torch.tanh], n_s=256, r=0.25, p=0.05, max_samples=256, device="cpu", progress=False)
    assert df1.loss.tolist() == df2.loss.tolist() and df1.params[0]["a"] == df2.params[0]["a"]
