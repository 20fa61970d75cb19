"""`decoderbench run`: grids, the store it writes, reuse, --force, --json, the progress bar, failed rows."""

from __future__ import annotations

import json

import pytest
import torch

from decoderbench import Decoder, hookimpl
from decoderbench.contract import registry as plugins
from decoderbench.cli import main
from decoderbench.run.grids import load_grid
from decoderbench.results.store import ResultsStore
from decoderbench.run.sweep import run_sweep, units_for

JSON_KEYS = {"decoder", "kind", "n_s", "n_d", "p", "seed", "loss", "loss_se", "e2_bound", "mmse_elementwise",
             "ratio_e2", "params", "status"}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


class FailRun(Decoder):
    name = "fail_run_test"
    kind = "filtering"

    def fit(self, train):
        raise RuntimeError("cannot fit")

    def decode(self, z):  # pragma: no cover - never reached
        return z


@pytest.fixture
def failing():
    class P:
        @hookimpl
        def decoderbench_register_decoders(self, register):
            register(FailRun)

    name = plugins.register_plugin(P(), name="run_test_plugin")
    yield
    plugins.unregister_plugin(name)


def test_adhoc_json_keeps_its_format_and_writes_no_store(in_tmp, capsys):
    rc = main(["run", "--plugins", "linear", "--ns", "64", "--r", "0.25", "--p", "0.1", "--max-samples", "256",
               "--device", "cpu", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = json.loads(out.out)
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert JSON_KEYS <= set(row) and row["status"] == "ok" and isinstance(row["params"], dict)
    assert (row["decoder"], row["n_s"], row["n_d"], row["p"]) == ("linear", 64, 16, 0.1)
    assert row["ratio_e2"] == pytest.approx(row["loss"] / row["e2_bound"], rel=1e-12)
    assert list(in_tmp.iterdir()) == []  # ad-hoc cells without --out store nothing


def test_grid_run_stores_rows_prints_summary_then_reuses_then_force(in_tmp, capsys):
    args = ["run", "--plugins", "linear", "--grid", "default", "--ns", "256", "--device", "cpu"]  # at a small n_s
    assert main(args) == 0
    out = capsys.readouterr()
    n = len(load_grid("default").cells())
    assert f"0 rows reused, {n} computed" in out.err
    assert "## Decoders across cells" in out.out and "| linear | elementwise |" in out.out
    st = ResultsStore(in_tmp / "results", create=False)
    rows = st.rows()
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
    assert {r["command"] for r in rows} == {"decoderbench run --decoders linear --grid default --ns 256 --device cpu"}
    assert sorted(f.name for f in in_tmp.iterdir()) == ["results"]  # a run writes its store only
    assert "decoderbench leaderboard --grid default --ns 256" in out.err  # and says how to make the board

    assert main(args) == 0
    out = capsys.readouterr()
    assert f"{n} rows reused, 0 computed" in out.err
    assert "## Decoders across cells" in out.out
    assert [r["loss"] for r in ResultsStore(in_tmp / "results", create=False).rows()] == [r["loss"] for r in rows]

    assert main([*args, "--force", "--no-summary"]) == 0
    out = capsys.readouterr()
    assert f"0 rows reused, {n} computed" in out.err and "## Decoders" not in out.out
    again = ResultsStore(in_tmp / "results", create=False).rows()
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]  # recomputed: same seeds, same numbers
    assert [r["finished_at"] for r in again] >= [r["finished_at"] for r in rows]


def test_json_with_a_store_prints_only_json(in_tmp, capsys):
    grid = in_tmp / "tiny.toml"
    grid.write_text("[cells]\nn_s = [64]\nr = [0.25, 0.5]\np = [0.1]\n[sampling]\nmax_samples = 256\n")
    assert main(["run", "--plugins", "linear", "--grid", str(grid), "--out", "res", "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [(r["n_d"], r["status"]) for r in rows] == [(16, "ok"), (32, "ok")]
    assert all(JSON_KEYS <= set(r) and isinstance(r["params"], dict) for r in rows)
    assert len(ResultsStore(in_tmp / "res", create=False).keys()) == 2
    assert not (in_tmp / "leaderboards").exists()  # tables only where --leaderboard asks
    # reused rows come back from the store in the same JSON shape
    assert main(["run", "--plugins", "linear", "--grid", str(grid), "--out", "res", "--json", "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [r["loss"] for r in again] == [r["loss"] for r in rows] and all(isinstance(r["params"], dict) for r in again)


def test_failed_rows_exit_1_are_stored_and_retried(in_tmp, capsys, failing):
    args = ["run", "--plugins", "linear,fail_run_test", "--ns", "64", "--r", "0.25", "--p", "0.1",
            "--max-samples", "256", "--out", "res", "--device", "cpu"]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "fail_run_test: error: RuntimeError: cannot fit" in out.err
    assert "0 rows reused, 2 computed (1 failed)" in out.err
    rows = {r["decoder"]: r for r in ResultsStore(in_tmp / "res", create=False).rows()}
    assert rows["fail_run_test"]["status"] == "error" and "cannot fit" in rows["fail_run_test"]["error"]
    assert main(args) == 1
    assert "1 rows reused, 1 computed (1 failed)" in capsys.readouterr().err


def test_progress_bar_shows_cell_decoder_and_eta(tmp_path, capsys):
    g = load_grid("default").override(ns=[64], p=[0.1], r=[0.25], max_samples=128)
    units = units_for(g, ["linear"], device="cpu")
    res = run_sweep(units, store=ResultsStore(tmp_path / "res"), progress=True, command="t", grid="t")
    err = capsys.readouterr().err
    assert res.n_computed == 1
    assert "n_s=64 r=0.25 p=0.1 seed=0 linear" in err and "1/1" in err and "<" in err  # elapsed<remaining
    # stderr not a terminal (as under pytest): plain progress lines, no bar, no carriage returns
    assert main(["run", "--plugins", "linear", "--ns", "64", "--r", "0.25,0.5", "--p", "0.1", "--max-samples", "128",
                 "--out", str(tmp_path / "res2"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("progress: ")]
    assert lines and "\r" not in err and "|" not in err, err
    assert lines[0].startswith("progress: 1/2 rows (50%), at n_s=64 r=0.25 p=0.1 seed=0 linear, ") and "ETA" in lines[0]
    assert lines[-1].startswith("progress: 2/2 rows (100%)") and lines[-1].endswith("done")
    # and nothing but JSON under --json
    assert main(["run", "--plugins", "linear", "--ns", "64", "--r", "0.25", "--p", "0.2", "--max-samples", "128",
                 "--out", str(tmp_path / "res2"), "--device", "cpu", "--json"]) == 0
    assert "progress:" not in capsys.readouterr().err


def test_line_progress_is_periodic():
    import io

    from decoderbench.run.progress import LineProgress

    t = [0.0]
    out = io.StringIO()
    lp = LineProgress(total=10, interval_s=30, file=out, clock=lambda: t[0])
    for k in range(10):
        lp.set_description_str(f"unit {k}")
        t[0] += 10.0
        lp.update(1)
    lp.close()
    lines = out.getvalue().splitlines()
    # the first row, then every 30 s (rows 4, 7: 40 s and 70 s), then the end: not one line per row
    assert [ln.split(" rows")[0] for ln in lines] == ["progress: 1/10", "progress: 4/10", "progress: 7/10",
                                                      "progress: 10/10"]
    assert lines[1] == "progress: 4/10 rows (40%), at unit 3, 40 s elapsed, ETA 60 s"


@pytest.mark.parametrize("args,needle", [
    (["--ns", "64", "--r", "0.25", "--nd", "16"], "--r and --nd: give one of them"),
    (["--grid", "default", "--ns", "64", "--r", "0.001"], "impossible cell n_s=64 r=0.001"),
    (["--ns", "64", "--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--ns", "64", "--target-se", "1.5"], "--target-se must be a number in (0, 1)"),
    (["--ns", "64", "--seed", "-1"], "seed must be an integer in 0..2^63-1"),
])
def test_bad_run_options_exit_2(in_tmp, capsys, args, needle):
    assert main(["run", "--plugins", "linear", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert list(in_tmp.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_gpu_is_refused(in_tmp, capsys):
    assert main(["run", "--plugins", "linear", "--ns", "64", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_run_leaderboard_option_writes_the_grids_tables_from_the_whole_store(in_tmp, capsys):
    grid = in_tmp / "tiny.toml"
    grid.write_text("[cells]\nn_s = [64]\nr = [0.5]\np = [0.1]\n[sampling]\nmax_samples = 256\n")
    base = ["run", "--grid", str(grid), "--out", "res", "--device", "cpu"]
    assert main([*base, "--plugins", "linear"]) == 0
    assert main([*base, "--plugins", "relu", "--leaderboard", "lb"]) == 0
    out = capsys.readouterr().out
    summary = out[out.rindex("## Decoders across cells"):]
    assert "| relu |" in summary and "| linear |" not in summary  # the printed summary: this run's rows
    table = (in_tmp / "lb" / "cells.md").read_text()
    assert "| relu |" in table and "| linear |" in table  # the written leaderboard: every row of the grid
