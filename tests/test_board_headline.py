"""The board's first screen (headline), the nominal r, and learned decoders skipped on the default grid."""

from __future__ import annotations

import json

import pytest

from decoderbench._validate import nominal_r
from decoderbench.board.leaderboard import aggregate, headline, render, select_rows, summary_text

from test_leaderboard import N_S, _row, _rows, _theory


def test_headline_numbers_are_the_rows():
    agg = aggregate(select_rows(_rows()))
    h = headline(agg)
    # elementwise/filtering only (the oracle is a reference): cell 1024: topk 3.0, relu 4.1; cell 410: relu 2, topk 6
    assert "between 2 and 6 times the appendix E.2 bound" in h["finding"]
    assert "differ by a factor 3.000 (max / min)" in h["finding"]
    # r = 0.25 predicts recovery and vamp is exact there; at r = 0.1 vamp is 1.5 / 2 of the best elementwise
    assert "recovers x exactly on 1 of the 1 cells" in h["finding"]
    assert "reaches 0.75 times the loss of the best elementwise" in h["finding"]
    by_r = {row[1]: row for row in h["rows"]}
    assert by_r["0.1"][3] == "2 - 6 (2)" and by_r["0.1"][4] == "3.000"
    assert by_r["0.25"][3] == "3 - 4.1 (2)" and by_r["0.25"][7] == "exact recovery (vamp)"


def test_identical_losses_are_explained():
    e2 = _theory(1024)["e2_bound"]
    rows = [_row("relu", "elementwise", 1024, 4.0 * e2, 1e-5), _row("gated", "elementwise", 1024, 4.0 * e2, 1e-5),
            _row("topk", "filtering", 1024, 3.0 * e2, 1e-5)]
    h = headline(aggregate(select_rows(rows)))
    assert "gated = relu on 1 of 1 cell" in h["same"] and "reduce to the same function" in h["same"]


def test_summary_leads_with_the_finding_and_run_ends_with_it():
    files = render(_rows(), "t", "cmd", figure=True)
    summary = files["summary.md"]
    first_screen = summary[:summary.index("## Decoders across cells")]
    assert "## What this board found" in first_screen and "![" in first_screen and "headline.png" in first_screen
    assert "Decoder versions" not in first_screen and "Decoder versions" in summary  # provenance at the foot
    text = summary_text(_rows())
    assert text.rstrip().splitlines()[-1].startswith("| 4096 | 0.25 |")  # the headline table is the last screen
    assert "## Per cell" not in text  # the long per-cell tables are in the board, not on the terminal


@pytest.mark.parametrize("n_s, n_d, r", [(4096, 410, 0.1), (4096, 1024, 0.25), (1024, 102, 0.1), (1024, 100, 0.098),
                                         (256, 3, 0.01), (1048576, 10486, 0.01), (1024, 1023, 0.999)])
def test_nominal_r_is_the_shortest_decimal_that_gives_n_d(n_s, n_d, r):
    assert nominal_r(n_s, n_d) == r
    assert int(round(nominal_r(n_s, n_d) * n_s)) == n_d


def test_rows_store_nominal_and_exact_r(tmp_path):
    from decoderbench.run.runner import WorkUnit, run_unit

    row = run_unit(WorkUnit(decoder="linear", n_s=256, n_d=26, p=0.045, seed=0, max_samples=64, min_samples=64))
    assert row["status"] == "ok" and row["r"] == 0.1 and row["r_exact"] == 26 / 256


@pytest.mark.parametrize("isolate", ["--no-isolate", "--isolate"])
def test_default_grid_skips_untrained_learned_decoders_with_a_reason(tmp_path, monkeypatch, capsys, isolate):
    """On the default grid (only_cached) a learned decoder with no converged model in the cache trains nothing:
    its row is skipped, names the grid that trains it, and the run exits 0."""
    from decoderbench.cli import main

    monkeypatch.setenv("DECODERBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "store"
    code = main(["run", "--grid", "default", "--ns", "256", "--p", "0.045", "--r", "0.25",
                 "--plugins", "trained-topk,trained,linear", "--out", str(out), "--no-summary", isolate])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped 2 row(s) of trained, trained-topk:" in err and "--grid trained" in err
    import pandas as pd

    df = pd.read_parquet(out / "rows")
    skipped = df[df.status == "skipped"]
    assert sorted(skipped.decoder) == ["trained", "trained-topk"]
    assert all("decoderbench run --grid trained" in e for e in skipped.error)
    assert (df[df.decoder == "linear"].status == "ok").all()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing was trained


def test_only_cached_scores_a_converged_cached_model(tmp_path, monkeypatch):
    """A converged model in the cache is scored under only_cached (no training), equal to the row that trained it."""
    from decoderbench.run.runner import WorkUnit, run_unit

    monkeypatch.setenv("DECODERBENCH_CACHE", str(tmp_path / "cache"))
    cell = dict(n_s=64, n_d=16, p=0.1, seed=0, max_samples=64, min_samples=64)
    trained = run_unit(WorkUnit(decoder="trained", options=json.dumps({"max_time_s": 0}), **cell))
    assert trained["status"] == "ok" and trained["params"]["stop_reason"] == "converged"
    again = run_unit(WorkUnit(decoder="trained", options=json.dumps({"only_cached": True}), **cell))
    assert again["status"] == "ok" and again["params"]["reused"] is True and again["loss"] == trained["loss"]


def test_only_cached_without_the_cache_is_bad_input(capsys):
    from decoderbench.cli import main

    code = main(["run", "--ns", "256", "--r", "0.25", "--p", "0.045", "--plugins", "trained", "--grid",
                 str(_grid_file(capsys))])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only_cached needs cache = true" in err[0]


def _grid_file(capsys):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "g.toml"
    path.write_text('name = "g"\n[cells]\nn_s = [256]\nr = [0.25]\np = [0.045]\n'
                    '[options.trained]\nonly_cached = true\ncache = false\n')
    return path
