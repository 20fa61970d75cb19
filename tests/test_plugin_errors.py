"""A misbehaving plugin costs only its own row.

Throwaway decoders that raise in fit or decode, return the wrong shape or non-finite values, and
entry points that fail to import: each gets a row with status "error" and the reason, the other
decoders still run, and `decoderbench run` exits 1. An unknown --plugins name is bad input: exit 2,
one line that lists the registered names.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from decoderbench import Decoder, hookimpl
from decoderbench.contract import registry as plugins
from decoderbench.cli import main
from decoderbench.run.runner import WorkUnit, run_unit

CELL = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "256", "--device", "cpu"]


class GoodT(Decoder):
    name = "good_t"
    kind = "elementwise"
    description = "0.25 z + 0.0125"

    def decode(self, z):
        return 0.25 * z + 0.0125


class RaisesInFitT(Decoder):
    name = "raises_in_fit_t"
    kind = "elementwise"
    description = "raises in fit"

    def fit(self, train):
        raise RuntimeError("boom in fit")

    def decode(self, z):
        return z


class RaisesInDecodeT(Decoder):
    name = "raises_in_decode_t"
    kind = "filtering"
    description = "raises in decode"

    def decode(self, z):
        raise KeyError("boom in decode")


class WrongShapeT(Decoder):
    name = "wrong_shape_t"
    kind = "elementwise"
    description = "drops a column"

    def decode(self, z):
        return z[:, :-1]


class NotATensorT(Decoder):
    name = "not_a_tensor_t"
    kind = "reference"
    description = "returns a list"

    def decode(self, z):
        return z.tolist()


class NaNT(Decoder):
    name = "nan_t"
    kind = "elementwise"
    description = "returns NaN"

    def decode(self, z):
        out = z.clone()
        out[0, 0] = float("nan")
        return out


class InfT(Decoder):
    name = "inf_t"
    kind = "iterative"
    description = "returns inf"

    def decode(self, h):
        return torch.full((h.shape[0], 256), float("inf"))


BAD = {
    "raises_in_fit_t": "RuntimeError: boom in fit",
    "raises_in_decode_t": "KeyError: 'boom in decode'",
    "wrong_shape_t": "decode returned shape (256, 255), expected (256, 256)",
    "not_a_tensor_t": "decode returned shape list",
    "nan_t": "decode returned non-finite values",
    "inf_t": "decode returned non-finite values",
}


class ThrowawayPlugin:
    @hookimpl
    def decoderbench_register_decoders(self, register):
        for cls in (GoodT, RaisesInFitT, RaisesInDecodeT, WrongShapeT, NotATensorT, NaNT, InfT):
            register(cls)


@pytest.fixture
def throwaway():
    name = plugins.register_plugin(ThrowawayPlugin(), name="throwaway_errors")
    yield
    plugins.unregister_plugin(name)


@pytest.fixture
def fresh_plugins():
    """Reload entry points before and after (for tests that change what is installed or allowed)."""
    plugins.reset()
    yield
    plugins.reset()


def test_each_failure_is_its_row(throwaway):
    good = run_unit(WorkUnit(256, 64, 0.05, "good_t", min_samples=256, max_samples=256))
    assert good["status"] == "ok" and good["error"] is None and good["loss"] > 0
    for name, msg in BAD.items():
        row = run_unit(WorkUnit(256, 64, 0.05, name, min_samples=256, max_samples=256))
        assert row["status"] == "error", name
        assert msg in row["error"], (name, row["error"])
        assert row["loss"] is None and row["traceback"]


def test_cli_runs_the_others_and_exits_1(throwaway, capsys):
    names = ",".join(["good_t", *BAD, "linear"])
    rc = main(["run", "--plugins", names, *CELL, "--json"])
    out = capsys.readouterr()
    assert rc == 1
    rows = {r["decoder"]: r for r in json.loads(out.out)}
    assert rows["good_t"]["status"] == "ok" and rows["linear"]["status"] == "ok"
    for name, msg in BAD.items():
        assert rows[name]["status"] == "error" and msg in rows[name]["error"]


def test_cli_all_ok_exits_0(throwaway, capsys):
    assert main(["run", "--plugins", "good_t", *CELL, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "ok"


def test_unknown_plugin_name_is_bad_input(capsys):
    rc = main(["run", "--plugins", "linear,no_such_decoder_zz", *CELL])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "no_such_decoder_zz" in lines[0]
    for name in ("linear", "relu", "oracle"):  # the registered names are listed
        assert name in lines[0]


def _dist(tmp_path, dist: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A minimal installed distribution on sys.path: a .dist-info with entry points, plus modules."""
    info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "[decoderbench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for mod, src in modules.items():
        (tmp_path / f"{mod}.py").write_text(textwrap.dedent(src))


@pytest.mark.parametrize("target,src,msg", [
    ("no_such_module_for_decoderbench_test", None, "No module named 'no_such_module_for_decoderbench_test'"),
    ("dbt_raising_import_mod", "raise RuntimeError('needs a library this machine lacks')\n",
     "RuntimeError: needs a library this machine lacks"),
])
def test_broken_entry_point_is_an_error_row(tmp_path, monkeypatch, capsys, fresh_plugins, target, src, msg):
    _dist(tmp_path, "dbt-broken-plugin", {"broken_thing": target}, {target: src} if src else {})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,linear,broken_thing")
    plugins.reset()
    assert set(plugins.decoders()) == {"linear"}
    assert msg in plugins.load_errors()["broken_thing"]

    assert main(["plugins", "--json"]) == 1  # something is broken: the exit code says so
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["broken_thing"]["kind"] == "error" and msg in listed["broken_thing"]["error"]

    rc = main(["run", "--plugins", "all", *CELL, "--json"])
    rows = {r["decoder"]: r for r in json.loads(capsys.readouterr().out)}
    assert rc == 1
    assert rows["linear"]["status"] == "ok"
    assert rows["broken_thing"]["status"] == "error" and msg in rows["broken_thing"]["error"]

    rc = main(["run", "--plugins", "broken_thing", *CELL, "--json"])  # selected by name: the same row
    assert rc == 1 and json.loads(capsys.readouterr().out)[0]["status"] == "error"


def test_plugin_that_fails_to_register_is_an_error_row(tmp_path, monkeypatch, capsys, fresh_plugins):
    src = """
    from decoderbench import hookimpl

    @hookimpl
    def decoderbench_register_decoders(register):
        raise ValueError("cannot register today")
    """
    _dist(tmp_path, "dbt-unregistrable", {"unregistrable": "dbt_unregistrable_mod"}, {"dbt_unregistrable_mod": src})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,linear,unregistrable")
    plugins.reset()
    rc = main(["run", "--plugins", "all", *CELL, "--json"])
    rows = {r["decoder"]: r for r in json.loads(capsys.readouterr().out)}
    assert rc == 1 and rows["linear"]["status"] == "ok"
    assert "cannot register today" in rows["unregistrable"]["error"]


def test_broken_entry_point_and_a_name_it_may_have_provided(tmp_path, monkeypatch, capsys, fresh_plugins):
    """`run --plugins relu` while a plugin is broken (relu not registered): an error row naming the broken
    plugin, exit 1, not "unknown decoder" (the broken plugin may have been the one providing relu)."""
    _dist(tmp_path, "dbt-broken-plugin", {"broken_thing": "no_such_module_for_decoderbench_test2"}, {})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,linear,broken_thing")
    plugins.reset()
    rc = main(["run", "--plugins", "relu,linear", *CELL, "--json"])
    out = capsys.readouterr()
    rows = {r["decoder"]: r for r in json.loads(out.out)}
    assert rc == 1 and rows["linear"]["status"] == "ok"
    assert rows["relu"]["status"] == "error" and "not registered" in rows["relu"]["error"]
    assert "broken_thing" in rows["relu"]["error"]
    assert "broken plugin: plugin 'broken_thing' failed to load" in out.err  # the run says so too


COLLIDER = """
import torch
from decoderbench import Decoder, hookimpl


class FakeRelu(Decoder):
    name = "relu"
    kind = "elementwise"
    description = "claims a built-in's name"

    def decode(self, z):
        return torch.zeros_like(z)


class Mine(Decoder):
    name = "collider_own"
    kind = "elementwise"
    description = "its own name: loads"

    def decode(self, z):
        return 0.25 * z


class MineToo(Mine):
    name = "collider_own2"


@hookimpl
def decoderbench_register_decoders(register):
    register(FakeRelu)   # refused alone
    register(Mine)       # still registered
    register(MineToo)    # and so is this
"""


def test_name_collision_is_refused_alone_naming_both(tmp_path, monkeypatch, capsys, fresh_plugins):
    # entry point named "aaa_collider" so that it would come first in any name order
    _dist(tmp_path, "dbt-collider", {"aaa_collider": "dbt_collider_mod"}, {"dbt_collider_mod": COLLIDER})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,linear,activations,aaa_collider")
    plugins.reset()
    dec = plugins.decoders()
    # the built-in module is whole, the colliding plugin lost only the taken name
    assert {"relu", "jumprelu", "trec", "prolu", "gated", "collider_own", "collider_own2"} <= set(dec)
    assert dec["relu"].source.startswith("decoderbench==") and dec["collider_own"].source == "dbt-collider==0.1"
    (msg,) = plugins.collisions()["aaa_collider"]
    assert "'relu'" in msg and "dbt-collider==0.1" in msg and "decoderbench==" in msg
    assert "aaa_collider" not in plugins.failures()  # not a failure: nothing else of it is lost

    rc = main(["plugins"])
    err = capsys.readouterr().err
    assert rc == 1 and "name collision" in err and "dbt-collider==0.1" in err and "decoderbench==" in err

    rc = main(["run", "--plugins", "relu,collider_own", *CELL, "--json"])
    out = capsys.readouterr()
    rows = {r["decoder"]: r for r in json.loads(out.out)}
    assert rc == 0 and set(rows) == {"relu", "collider_own"}
    assert rows["relu"]["source"].startswith("decoderbench==") and rows["relu"]["status"] == "ok"
    assert rows["relu"]["loss"] < rows["collider_own"]["loss"] * 10  # the real relu, not zeros
    assert "name collision" in out.err and "'relu'" in out.err
    # `all` does not select the collision as a decoder of its own
    rc = main(["run", "--plugins", "all", *CELL, "--json"])
    names = [r["decoder"] for r in json.loads(capsys.readouterr().out)]
    assert "aaa_collider" not in names and names.count("relu") == 1


IMPOSTOR = """
import torch
from decoderbench import Decoder, hookimpl

RAN = []
RAN.append("imported")  # never: the entry point is refused before import


class FakeRelu(Decoder):
    name = "relu"
    kind = "elementwise"

    def decode(self, z):
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    register(FakeRelu)
"""


def test_an_entry_point_named_like_a_builtin_plugin_is_refused(tmp_path, monkeypatch, capsys, fresh_plugins):
    """A third-party entry point called `activations` (a built-in plugin's name) is refused and reported; the
    built-in loads whole (relu, jumprelu, trec, prolu, gated from decoderbench) and `plugins` exits 1."""
    import sys

    _dist(tmp_path, "dbt-impostor", {"activations": "dbt_impostor_mod"}, {"dbt_impostor_mod": IMPOSTOR})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DECODERBENCH_PLUGINS", "rug,activations")
    plugins.reset()
    dec = plugins.decoders()
    assert {"relu", "jumprelu", "trec", "prolu", "gated"} <= set(dec)
    assert all(dec[n].source.startswith("decoderbench==") for n in ("relu", "gated"))
    assert "dbt_impostor_mod" not in sys.modules  # never imported
    (msg,) = next(v for k, v in plugins.collisions().items() if "dbt-impostor" in k)
    assert "'activations'" in msg and "built-in plugin" in msg and "dbt-impostor==0.1" in msg
    rc = main(["plugins"])
    assert rc == 1 and "dbt-impostor==0.1" in capsys.readouterr().err
