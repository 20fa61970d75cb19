"""Grids: the built-in TOML grids, per-decoder options, overrides, and bad grid files (named key or cell, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from decoderbench.run.grids import builtin_grids, load_grid, parse_grid
from decoderbench.run.sweep import units_for


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "decoderbench", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_builtin_grids_are_shipped_and_named():
    assert {"default", "paper-fig2", "paper-fig15"} <= set(builtin_grids())
    for name in builtin_grids():
        assert load_grid(name).name == name


def test_plugins_contribute_grids_through_the_hook(tmp_path):
    """The trained grid ships with its plugin, not in the harness, and loads by name as before; any plugin may
    register a grid; a grid of a taken name is refused alone (the harness's own keep their names)."""
    from importlib import resources

    from decoderbench import hookimpl
    from decoderbench.contract import registry as plugins
    from decoderbench.run.grids import core_grids, plugin_grid_errors

    assert "trained" not in core_grids() and "trained" in builtin_grids()
    assert str(builtin_grids()["trained"]).endswith("trained.toml")
    assert resources.files("decoderbench_plugins.trained").joinpath("trained.toml").is_file()
    assert load_grid("trained").name == "trained"
    mine = tmp_path / "mine.toml"
    mine.write_text('name = "mine"\n[cells]\nn_s = [64]\nr = [0.25]\np = [0.1]\n')

    class GridPlugin:
        @hookimpl
        def decoderbench_register_grids(self, register):
            register("mine-test", mine)
            register("default", mine)  # taken: refused, mine-test stays

    name = plugins.register_plugin(GridPlugin(), name="grid_plugin_test")
    try:
        assert load_grid("mine-test").cells() == [(64, 16, 0.1)]
        assert load_grid("default").name == "default"
        assert "already taken" in plugin_grid_errors()["grid_plugin_test"]
    finally:
        plugins.unregister_plugin(name)
    assert "mine-test" not in builtin_grids()


def test_default_grid_says_something():
    g = load_grid("default")
    cells = g.cells()
    assert len({p for _, _, p in cells}) >= 2 and len({d / n for n, d, _ in cells}) >= 2
    # p n_s >= ~100 everywhere: the interference is close to Gaussian, the theory columns hold
    assert min(p * n_s for n_s, _, p in cells) >= 100
    assert g.target_rel_se <= 0.05 and g.min_samples <= g.max_samples
    # every learned decoder trains nothing here: it scores a converged cached model or is skipped with a reason
    from decoderbench.contract import registry as plugins

    learned = [n for n, reg in plugins.decoders().items() if reg.kind == "learned"]
    assert learned and all(g.options.get(n, {}).get("only_cached") is True for n in learned)


def test_paper_fig2_has_the_figure3_cell_and_spans_r():
    g = load_grid("paper-fig2")
    cells = g.cells()
    assert any(p == 0.045 and d / n == 0.25 for n, d, p in cells)
    rs = sorted({d / n for n, d, _ in cells})
    assert rs[0] <= 0.1 and rs[-1] >= 0.75 and len(rs) >= 6
    assert len({p for _, _, p in cells}) >= 3


def test_paper_fig15_is_appendix_i():
    """Appendix I: n_s = 32768, r in 0.01..0.1 and p in 0.0001..0.01 (10 steps each), keep p n_s > 5 and p < 0.1 r."""
    g = load_grid("paper-fig15")
    rs = [round(0.01 * k, 2) for k in range(1, 11)]
    ps = [round(0.0001 + k * (0.01 - 0.0001) / 9, 4) for k in range(10)]
    expected = [(32768, round(r * 32768), p) for r in rs for p in ps if p * 32768 > 5 and p < 0.1 * r]
    assert sorted(g.cells()) == sorted(expected)
    assert len(expected) > 20
    # runnable on a CPU with a smaller n_s: the filter p n_s > 5 is applied at that n_s
    small = g.override(ns=[1024])
    assert all(n == 1024 and p * 1024 > 5 for n, _, p in small.cells())
    assert len(small.cells()) < len(expected)


def test_options_reach_work_units():
    g = parse_grid(textwrap.dedent("""
        [cells]
        n_s = [256]
        r = [0.25]
        p = [0.05]
        [options.trained]
        max_time_s = 8
        max_steps = 100
        [options.topk]
        k = 3
    """), source="t.toml")
    units = units_for(g, ["trained", "topk", "linear"], device="cpu")
    opts = {u.decoder: json.loads(u.options) for u in units}
    assert opts == {"trained": {"max_time_s": 8, "max_steps": 100}, "topk": {"k": 3}, "linear": {}}
    # the options are part of the key: another time budget is another row
    g2 = parse_grid(textwrap.dedent("""
        [cells]
        n_s = [256]
        r = [0.25]
        p = [0.05]
        [options.trained]
        max_time_s = 9
        max_steps = 100
    """), source="t2.toml")
    k1 = units_for(g, ["trained"], device="cpu")[0].key("1")
    k2 = units_for(g2, ["trained"], device="cpu")[0].key("1")
    assert k1 != k2


def test_sampling_and_seeds_and_explicit_cells():
    g = parse_grid(textwrap.dedent("""
        seeds = [0, 1]
        [cells]
        n_s = [256]
        n_d = [32, 64]
        p = [0.05]
        [[cell]]
        n_s = 512
        r = 0.5
        p = 0.1
        [[cell]]
        n_s = 256
        n_d = 32
        p = 0.05
        [sampling]
        target_rel_se = 0.03
        max_samples = 4096
    """), source="t.toml")
    assert g.cells() == [(256, 32, 0.05), (256, 64, 0.05), (512, 256, 0.1)]  # duplicate removed
    units = units_for(g, ["linear"], device="cpu")
    assert len(units) == 3 * 2
    assert {(u.target_rel_se, u.max_samples, u.min_samples) for u in units} == {(0.03, 4096, 2048)}


def test_override_replaces_axes():
    g = load_grid("default").override(ns=[1024.0], p=[0.2], seeds=[3, 4])
    assert {n for n, _, _ in g.cells()} == {1024}
    assert all(type(n) is int and type(d) is int for n, d, _ in g.cells())  # the key hashes these values
    assert units_for(g, ["linear"], device="cpu")[0].key("1") == units_for(
        load_grid("default").override(ns=[1024], p=[0.2], seeds=[3, 4]), ["linear"], device="cpu")[0].key("1")
    assert {p for _, _, p in g.cells()} == {0.2}
    assert g.seeds == (3, 4)


def test_per_decoder_sampling_overrides():
    g = parse_grid(textwrap.dedent("""
        [cells]
        n_s = [256]
        r = [0.25]
        p = [0.05]
        [sampling]
        target_rel_se = 0.02
        min_samples = 256
        max_samples = 1024
        [sampling.vamp]
        max_samples = 32
        [sampling.slow]
        target_rel_se = 0.1
        min_samples = 64
    """), source="t.toml")
    assert g.sampling_for("relu") == (0.02, 256, 1024)
    assert g.sampling_for("vamp") == (0.02, 32, 32)  # min_samples follows a smaller max_samples
    assert g.sampling_for("slow") == (0.1, 64, 1024)
    units = {u.decoder: u for u in units_for(g, ["relu", "vamp", "slow"], device="cpu")}
    assert (units["vamp"].min_samples, units["vamp"].max_samples) == (32, 32)
    assert units["slow"].target_rel_se == 0.1
    # a command-line option applies to every decoder
    h = g.override(max_samples=64)
    assert h.sampling_for("relu") == (0.02, 64, 64) and h.sampling_for("vamp") == (0.02, 64, 64)
    assert h.sampling_for("slow") == (0.1, 64, 64)


BAD = [
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[sampling.vamp]\nmax=3\n", "unknown key 'sampling.vamp.max'"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[sampling.vamp]\nmax_samples=0\n",
     "sampling.vamp.max_samples must be a positive integer"),
    ("bogus = 1\n[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n", "unknown key 'bogus'"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\nq=[1]\n", "unknown key 'cells.q'"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[sampling]\ntarget=0.1\n", "unknown key 'sampling.target'"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[where]\npns=5\n", "unknown key 'where.pns'"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[1.5]\n", "cells.p: p must be in (0, 1]"),
    ("[cells]\nn_s=[1000]\nr=[0.25]\np=[0.05]\n", "cells.n_s: n_s must be a power of two"),
    ("[cells]\nn_s=[256]\nr=[1.0]\np=[0.05]\n", "cells.r: r must be in the open interval (0, 1)"),
    ("[cells]\nn_s=[256]\nr=0.25\np=[0.05]\n", "cells.r: must be a non-empty list of numbers"),
    ("[cells]\nn_s=[256]\nr=[0.25]\nn_d=[64]\np=[0.05]\n", "cells: give exactly one of r and n_d"),
    ("[cells]\nn_s=[256]\nr=[0.25]\n", "cells: missing p"),
    ("[cells]\nn_s=[64]\nr=[0.001]\np=[0.05]\n", "impossible cell n_s=64 r=0.001 p=0.05"),
    ("[cells]\nn_s=[64]\nn_d=[64]\np=[0.05]\n", "impossible cell n_s=64 n_d=64 p=0.05"),
    ("[[cell]]\nn_s=256\nr=0.25\np=2\n", "cell[0].p: p must be in (0, 1]"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[sampling]\ntarget_rel_se=2\n", "sampling.target_rel_se must be"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[sampling]\nmin_samples=10\nmax_samples=5\n", "sampling.min_samples"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[where]\np_ns_above=1e9\n", "no cells left"),
    ("seeds=[-1]\n[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n", "seeds: must be a non-empty list"),
    ("dtype='float16'\n[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n", "dtype: must be one of float32, float64"),
    ("[cells]\nn_s=[256]\nr=[0.25]\np=[0.05]\n[options]\ntrained=3\n", "options.trained: must be a table"),
    ("name = \n", "not valid TOML"),
    ("", "the grid defines no cells"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_bad_grid_names_the_key_or_cell(text, needle):
    with pytest.raises(ValueError) as exc:
        parse_grid(text, source="bad.toml")
    msg = str(exc.value)
    assert "bad.toml" in msg and needle in msg, msg


@pytest.mark.parametrize("text,needle", [BAD[2], BAD[6], BAD[12]])
def test_bad_grid_file_exits_2_before_anything_runs(tmp_path, text, needle):
    f = tmp_path / "mygrid.toml"
    f.write_text(text)
    res = run_cli("run", "--plugins", "linear", "--grid", str(f), "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, err
    assert needle in err and "mygrid.toml" in err
    assert not (tmp_path / "res").exists() and not (tmp_path / "leaderboards").exists()


def test_unknown_grid_name_exits_2(tmp_path):
    res = run_cli("run", "--grid", "no-such-grid", cwd=tmp_path)
    assert res.returncode == 2
    assert "--grid must be one of" in res.stderr and "paper-fig2" in res.stderr
    assert not (tmp_path / "results").exists()
