"""The Python API (decoderbench.api): evaluate, theory, load_results, verify, Board and the resolver.

Cells are small (n_s = 256, at most 512 evaluation samples) so that each test takes seconds. The CLI
checks go through ``decoderbench.cli.main`` in this process (the same code path as the console script).
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

import decoderbench as db
from decoderbench import api, cli
from decoderbench.contract import registry as plugins

CELL = dict(n_s=256, r=0.25, p=0.05, max_samples=512)
CELL_ARGS = ["--ns", "256", "--r", "0.25", "--p", "0.05", "--max-samples", "512", "--device", "cpu"]
SAME = ("loss", "loss_se", "n_eval", "params", "key", "ratio_e2", "ratio_mmse", "status", "decoder_version")


class Half(db.Decoder):
    """A session-defined decoder: 0.5 max(z, 0) scaled by a fitted factor."""

    name = "half"
    kind = "elementwise"

    def fit(self, train):
        z, x = train.pairs(32)
        y = 0.5 * z.clamp(min=0)
        self.c = float((x * y).sum() / (y * y).sum())
        return {"c": self.c}

    def decode(self, z):
        return self.c * 0.5 * z.clamp(min=0)


class EnvProbe(db.Decoder):
    """Reports a DECODERBENCH_* setting as its worker process sees it."""

    name = "envprobe"
    kind = "elementwise"

    def fit(self, train):
        import os

        return {"setting": os.environ.get("DECODERBENCH_TEST_SETTING")}

    def decode(self, z):
        return z.clamp(0, 1)


def numbers(row: dict, col: str):
    """A column of a row, with the timings (params ending in _s) left out of params."""
    v = row[col]
    return {k: x for k, x in v.items() if not k.endswith("_s")} if col == "params" else v


def cli_json(args, capsys) -> list[dict]:
    capsys.readouterr()
    rc = cli.main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_evaluate_and_run_give_bit_identical_rows(capsys):
    df = db.evaluate(["linear", "relu"], **CELL, device="cpu", progress=False)
    assert isinstance(df, pd.DataFrame) and list(df.columns[:11]) == api.ROW_COLUMNS
    rows = {r["decoder"]: r for r in api.records(df)}
    # the same torch thread count as evaluate here (fitted float64 sums in params move in their last bits with it)
    ran = {r["decoder"]: r for r in cli_json(["run", "--plugins", "linear,relu", *CELL_ARGS, "--json", "--threads",
                                              str(torch.get_num_threads())], capsys)}
    assert set(rows) == set(ran) == {"linear", "relu"}
    for name in rows:
        for col in SAME:
            assert numbers(rows[name], col) == numbers(ran[name], col), (name, col)
    assert rows["relu"]["command"].startswith("python: decoderbench.evaluate(")


def test_session_class_and_activation_run_in_process_and_say_so():
    df = db.evaluate([Half, torch.relu, "relu"], **CELL, device="cpu", progress=False)
    rows = {r["decoder"]: r for r in api.records(df)}
    assert set(rows) == {"half", "relu_act", "relu"}  # torch.relu's own name is taken by the built-in
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    assert rows["half"]["source"] == f"local:{__name__}.Half" and rows["half"]["isolated"] is False
    assert rows["relu_act"]["source"] == "local:torch.relu"
    assert rows["half"]["decoder_version"].startswith("1+local.")
    assert rows["relu"]["source"].startswith("decoderbench==")
    assert "half" not in plugins.decoders() and "relu_act" not in plugins.decoders()  # forgotten after the run


def test_cells_as_cell_objects_grids_and_lists():
    df = db.evaluate("linear", [db.Cell(256, 64, 0.05), (256, 32, 0.05)], seeds=[0, 1], max_samples=256,
                     device="cpu", progress=False)
    assert sorted(zip(df.n_d, df.seed)) == [(32, 0), (32, 1), (64, 0), (64, 1)]
    df2 = db.evaluate("linear", n_s=[256], n_d=[64, 32], p=0.05, seeds=[0, 1], max_samples=256, device="cpu",
                      progress=False)
    assert sorted(df2.key) == sorted(df.key)


def test_store_reuses_rows_as_run_does_and_load_results_reads_them(tmp_path, capsys):
    store = tmp_path / "store"
    first = db.evaluate(["linear"], **CELL, store=store, device="cpu", progress=False)
    again = db.evaluate(["linear"], **CELL, store=store, device="cpu", progress=False)
    assert list(first.finished_at) == list(again.finished_at)  # reused, not recomputed
    loaded = db.load_results(store)
    assert list(loaded.key) == list(first.key) and list(loaded.loss) == list(first.loss)
    capsys.readouterr()
    assert cli.main(["run", "--plugins", "linear", *CELL_ARGS, "--out", str(store)]) == 0
    assert "1 rows reused, 0 computed" in capsys.readouterr().err
    verdicts = db.verify(store)
    assert list(verdicts.verdict) == ["reproduced"]


def test_without_a_store_nothing_touches_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db.evaluate(["linear"], **CELL, device="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spec, error, words", [
    (42, TypeError, "42"),
    (int, TypeError, "not a subclass of decoderbench.Decoder"),
    ("no-such-decoder", ValueError, "no-such-decoder"),
    (lambda y: y.sum(-1), ValueError, "shape"),
    (lambda y: torch.log(y), ValueError, "non-finite"),
    (lambda y: "text", TypeError, "torch tensor"),
])
def test_bad_decoders_are_refused_naming_them_with_no_store(tmp_path, spec, error, words):
    with pytest.raises(error, match=words):
        db.evaluate([spec], **CELL, store=tmp_path / "s", device="cpu", progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_s=1000, r=0.25, p=0.05), "power of two"),
    (dict(n_s=256, r=1.5, p=0.05), "r must be"),
    (dict(n_s=256, r=0.25, n_d=64, p=0.05), "not both"),
    (dict(n_s=256, r=0.25, p=0.05, options={"topk": {"k": 3}}), "no decoder 'topk'"),
    (dict(n_s=256, r=0.25, p=0.05, workers=2), "this session"),
])
def test_bad_cells_and_options_are_refused_with_no_store(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        db.evaluate(["linear", Half], **kwargs, store=tmp_path / "s", device="cpu", progress=False)
    assert not (tmp_path / "s").exists()


def test_two_different_decoders_with_one_name_are_refused():
    class Other(Half):
        pass

    with pytest.raises(ValueError, match="two different decoders are named 'half'"):
        db.evaluate([Half, Other], **CELL, progress=False)
    with pytest.raises(ValueError, match="taken by the registered decoder"):
        db.resolve(type("R", (Half,), {"name": "relu"}))
    assert db.resolve(Half, name="half2").name == "half2"
    assert [r.name for r in api.resolve_all([(Half, "half2"), Half])] == ["half2", "half"]


def test_theory_is_the_cli_json(capsys):
    t = db.theory(1024, r=0.25, p=0.045)
    capsys.readouterr()
    assert cli.main(["theory", "--ns", "1024", "--r", "0.25", "--p", "0.045", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(t))
    assert db.theory(1024, n_d=256, p=0.045) == t
    import decoderbench.model.theory as module  # the submodule stays importable and callable

    assert module(1024, r=0.25, p=0.045) == t and callable(module.cell_theory)
    with pytest.raises(ValueError, match="not both"):
        db.theory(1024, r=0.25, n_d=256)
    capsys.readouterr()
    assert cli.main(["theory", "--ns", "256", "--r", "0.25", "--p", "0.05", "--exact", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(db.theory(256, r=0.25, p=0.05, exact=True,
                                                                                  seed=1)))


def test_board_aggregates_once_and_writes_tables_figures(tmp_path, monkeypatch):
    df = db.evaluate(["linear", "relu"], [(256, 64, 0.05), (256, 32, 0.05)], max_samples=1024, target_se=0.05,
                     device="cpu", progress=False)
    from decoderbench.board import leaderboard

    calls = []
    real = leaderboard.aggregate
    monkeypatch.setattr(leaderboard, "aggregate", lambda rows: calls.append(1) or real(rows))
    import decoderbench.board.plots as plots

    monkeypatch.setattr(plots, "aggregate", leaderboard.aggregate)
    board = db.Board(df)
    md = board.markdown()
    tables = board.tables()
    figs = board.figures(tmp_path / "figs")
    assert len(calls) == 1
    assert "relu" in md and md.count("Made by") == 1 and set(tables) == {"cells", "summary"}
    assert set(tables["cells"].decoder) <= {"linear", "relu"} and len(tables["summary"]) == 2
    assert figs and all(f.exists() for f in figs)
    # the same files as `decoderbench leaderboard` makes from the same rows
    assert board.files()["summary.md"] == leaderboard.render(board.rows, board.title, board.command)["summary.md"]


def test_records_turn_missing_values_back_into_none():
    df = db.evaluate(["linear"], **CELL, device="cpu", progress=False)
    (row,) = api.records(df)
    assert row["traceback"] is None and isinstance(row["n_s"], int) and isinstance(row["params"], dict)
    assert math.isfinite(row["loss"])


@pytest.mark.slow
def test_quickstart_runs_and_is_the_readme_first_python_block(tmp_path):
    """examples/quickstart.py: under 30 lines, the README's first Python block, and it prints the table of
    four decoders on two cells and saves its figure."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / "examples" / "quickstart.py").read_text()
    assert len(script.splitlines()) < 30
    first = re.search(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S).group(1)
    assert first == script
    out = subprocess.run([sys.executable, str(root / "examples" / "quickstart.py")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for name in ("squareplus", "relu", "oracle", "vamp"):
        assert sum(1 for ln in lines if ln.split()[:1] == [name]) == 2, out.stdout
    assert (tmp_path / "quickstart" / "loss_vs_r.png").stat().st_size > 10_000


def test_per_decoder_sampling_keeps_a_costly_decoder_affordable():
    df = db.evaluate(["linear", "relu"], n_s=256, r=0.25, p=0.05, max_samples=1024, target_se=0.001,
                     sampling={"relu": {"max_samples": 256}}, device="cpu", progress=False)
    n = dict(zip(df.decoder, df.n_eval))
    assert n["relu"] <= 256 < n["linear"] <= 1024
    with pytest.raises(ValueError, match="sampling.relu: unknown key 'max'"):
        db.evaluate(["relu"], **CELL, sampling={"relu": {"max": 1}}, progress=False)


def test_a_session_class_is_isolated_on_request_with_the_same_numbers():
    """isolate=True sends an importable session class to a worker process: the same row, marked isolated."""
    here = api.records(db.evaluate([Half], **CELL, device="cpu", progress=False))[0]
    there = api.records(db.evaluate([Half], **CELL, device="cpu", progress=False, isolate=True))[0]
    assert there["isolated"] is True and here["isolated"] is False
    for col in ("loss", "loss_se", "n_eval", "params", "key"):
        assert numbers(there, col) == numbers(here, col), col


def test_isolated_workers_see_the_settings_of_now(monkeypatch):
    """Worker processes fork from a server started by an earlier run: DECODERBENCH_* settings made since (as a
    notebook does between runs) still reach them."""
    db.evaluate([Half], **CELL, device="cpu", progress=False, isolate=True)  # the server is running
    monkeypatch.setenv("DECODERBENCH_TEST_SETTING", "now")
    (row,) = api.records(db.evaluate([EnvProbe], **CELL, device="cpu", progress=False, isolate=True))
    assert row["isolated"] is True and row["params"]["setting"] == "now"
