"""Declared option schemas (decoderbench.contract.options): checked before a sweep, listed, one line per bad option."""

from __future__ import annotations

import json

import pytest
from pydantic import Field

import decoderbench as db
from decoderbench import cli
from decoderbench.contract import options
from decoderbench.contract import registry as plugins
from decoderbench.contract.decoder import Cell
from decoderbench.contract.options import PosInt

CELL = Cell(256, 64, 0.05)


@pytest.mark.parametrize("name, opts, line", [
    ("relu", {"fit_pair": 10}, "relu.fit_pair: unknown option 'fit_pair'; relu takes: fit_pairs"),
    ("relu", {"fit_pairs": "many"}, "relu.fit_pairs: Input should be a valid number"),
    ("relu", {"fit_pairs": True}, "relu.fit_pairs: must be a number, not true/false"),
    ("relu", {"fit_pairs": -1}, "relu.fit_pairs: Input should be greater than 0"),
    ("linear", {"fit_pairs": float("inf")}, "linear.fit_pairs:"),
    ("oracle", {"exact": 1}, "oracle.exact: Input should be a valid boolean, got 1"),
    ("topk", {"k": 0}, "topk.k: Input should be greater than 0"),
    ("topk", {"k": 2.5}, "topk.k:"),
    ("batchtopk", {"k": 257}, "batchtopk: k must be an integer in [1, n_s=256], got 257"),
    ("trained-relu", {"k": 3}, "trained-relu: unknown option 'k' for activation relu; allowed: max_steps"),
    ("trained", {"lr": -1}, "trained option lr must be a finite number > 0, got -1"),
    ("vamp", {"damping": 1.5}, "vamp.damping: Input should be less than or equal to 1, got 1.5"),
    ("amp", {"max_iter": 2.5}, "amp.max_iter:"),
    ("amp", {"tol": -1e-3}, "amp.tol: Input should be greater than or equal to 0"),
    ("vamp", {"maxiter": 5}, "vamp.maxiter: unknown option 'maxiter'; vamp takes: max_iter, tol, damping"),
    ("oracle-exact", {"exact": True}, "oracle-exact.exact: unknown option 'exact'; oracle-exact takes: (no options)"),
])
def test_bad_options_are_one_line_naming_decoder_and_option(name, opts, line):
    with pytest.raises(ValueError) as err:
        options.check(plugins.get_decoder(name).cls, opts, CELL)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_good_options_are_validated_with_defaults():
    o = options.check(plugins.get_decoder("topk").cls, {"k": 12}, CELL)
    assert o.k == 12 and o.fit_pairs == 2**20
    assert options.check(plugins.get_decoder("oracle").cls, {}, CELL).exact is False
    mp = options.check(plugins.get_decoder("vamp").cls, {"damping": 0.7}, CELL)
    assert (mp.damping, mp.max_iter, mp.tol) == (0.7, None, None)  # None: the decoder's own default


def test_cli_refuses_a_bad_option_before_anything_runs(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[cells]\nn_s = [256]\nr = [0.25]\np = [0.05]\n[options.oracle]\nexact = \"yes\"\n")
    assert cli.main(["run", "--grid", str(grid), "--plugins", "oracle,linear", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: oracle.exact: Input should be a valid boolean, got 'yes'"]
    assert not (tmp_path / "s").exists()


def test_a_session_decoder_declares_its_options_and_reads_them(tmp_path):
    class Scaled(db.Decoder):
        name = "scaled_opts"
        kind = "elementwise"

        class Options(db.Options):
            scale: PosInt = Field(2, description="the factor")

        def decode(self, z):
            return z.clamp(min=0) / self.opts.scale

    with pytest.raises(ValueError, match="scaled_opts.scale: Input should be greater than 0"):
        db.evaluate([Scaled], n_s=256, r=0.25, p=0.05, options={"scaled_opts": {"scale": 0}},
                    store=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    df = db.evaluate([Scaled], n_s=256, r=0.25, p=0.05, max_samples=256, options={"scaled_opts": {"scale": 3}},
                     progress=False)
    assert df.status[0] == "ok" and json.loads(df.options[0]) == {"scale": 3}


def test_plugins_lists_declared_options(capsys):
    assert cli.main(["plugins", "--json"]) in (0, 1)
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    topk = {o["name"]: o for o in listed["topk"]["options"]}
    assert set(topk) == {"fit_pairs", "k"} and topk["fit_pairs"]["default"] == 2**20
    assert "searched" in topk["k"]["description"]
    assert listed["oracle"]["options"][0]["name"] == "exact"
    assert [o["name"] for o in listed["vamp"]["options"]] == ["max_iter", "tol", "damping"]
    assert "(0, 1]" in listed["amp"]["options"][2]["description"]
    trained = {o["name"]: o for o in listed["trained-topk"]["options"]}
    assert {"max_steps", "lr", "k"} <= set(trained) and "activation" not in trained
    assert "bandwidth" in {o["name"] for o in listed["trained"]["options"]}


def test_every_trained_option_is_documented_in_its_schema():
    from decoderbench_plugins.trained.settings import KNOWN_OPTIONS, OPTION_DOCS

    assert set(OPTION_DOCS) == set(KNOWN_OPTIONS)
    fields = plugins.get_decoder("trained").cls.Options.model_fields
    assert set(KNOWN_OPTIONS) | {"activation"} <= set(fields)


def test_every_builtin_declares_its_options():
    """No built-in uses the older protocol (validate_options / ctx.check_options): each declares a schema."""
    from decoderbench.contract.decoder import Decoder

    for name, reg in plugins.decoders().items():
        if not reg.source.startswith("decoderbench=="):
            continue
        assert reg.cls.Options is not None, name
        assert reg.cls.validate_options.__func__ is Decoder.validate_options.__func__, name


def test_the_older_protocol_still_works_and_warns(tmp_path):
    class Legacy(db.Decoder):
        name = "legacy_opts"
        kind = "elementwise"

        @classmethod
        def validate_options(cls, options, cell):
            if options.get("scale", 1) <= 0:
                raise ValueError("legacy_opts: scale must be > 0")

        def decode(self, z):
            return z.clamp(min=0)

    with pytest.warns(DeprecationWarning, match="validate_options is deprecated"):
        with pytest.raises(ValueError, match="legacy_opts: scale must be > 0"):
            db.evaluate([Legacy], n_s=256, r=0.25, p=0.05, options={"legacy_opts": {"scale": 0}}, progress=False)
