"""Leaderboards: pooled numbers are exact, tables are deterministic and are what the command writes; figures."""

from __future__ import annotations

import re

import json
import math
import random
import statistics

import pytest

from decoderbench.model import theory as T
from decoderbench.cli import main
from decoderbench.board.leaderboard import aggregate, render, select_rows, summary_markdown, summary_text
from decoderbench.results.store import ResultsStore

N_S, P = 4096, 0.045


def _theory(n_d):
    t = T.cell_theory(N_S, n_d, P)
    return {k: t[k] for k in ("r", "sigma", "trivial", "linear", "mmse_elementwise", "e2_bound", "relu_theory",
                              "vamp_se", "amp_se")}


def _row(decoder, kind, n_d, loss, se, seed=0, status="ok", finished="2026-01-01T00:00:00+00:00", version="1",
         error=None):
    t = _theory(n_d)
    key = f"{decoder}-{n_d}-{seed}-{version}-{finished[:19].replace(':', '')}"
    return {"key": key.replace(".", "_"), "decoder": decoder, "kind": kind, "encoder": "rug", "dtype": "float32",
            "n_s": N_S, "n_d": n_d, "p": P, "seed": seed, "status": status, "loss": loss if status == "ok" else None,
            "loss_se": se if status == "ok" else None, "n_eval": 1024, "finished_at": finished, "params": {"a": 1.0},
            "decoder_version": version, "source": "test==0", "decoderbench_version": "0.1.0", "torch_version": "2",
            "device": "cpu", "error": error, **t}


def _rows():
    e2_a, e2_b = _theory(1024)["e2_bound"], _theory(410)["e2_bound"]
    return [
        _row("relu", "elementwise", 1024, 4.0 * e2_a, 1e-5),
        _row("relu", "elementwise", 1024, 4.2 * e2_a, 2e-5, seed=1),
        _row("topk", "filtering", 1024, 3.0 * e2_a, 1e-5),
        _row("oracle", "reference", 1024, 3.5 * e2_a, 1e-5),
        _row("vamp", "iterative", 1024, 1e-9, 1e-12),
        _row("trained", "learned", 1024, 2.9 * e2_a, 1e-5),
        _row("broken", "elementwise", 1024, None, None, status="error", error="ModuleNotFoundError: nope\nmore"),
        # an older version of topk on the same cell: the latest finished row wins
        _row("topk", "filtering", 1024, 100.0 * e2_a, 1e-5, finished="2025-01-01T00:00:00+00:00", version="0"),
        _row("relu", "elementwise", 410, 2.0 * e2_b, 1e-5),
        _row("topk", "filtering", 410, 6.0 * e2_b, 1e-5),
        _row("vamp", "iterative", 410, 1.5 * e2_b, 1e-5),
    ]


def test_pooled_numbers_are_exact():
    rows = select_rows(_rows())
    assert len(rows) == 10  # the stale topk row is gone
    agg = aggregate(rows)
    cell = ("rug", "float32", N_S, 1024, P)
    a = agg[cell]
    e2, mm = a["theory"]["e2_bound"], a["theory"]["mmse_elementwise"]
    relu = next(e for e in a["scored"] if e["decoder"] == "relu")
    assert relu["n_seeds"] == 2
    assert relu["loss"] == pytest.approx(4.1 * e2, rel=1e-12)
    assert relu["sampling_se"] == pytest.approx(math.sqrt(1e-10 + 4e-10) / 2, rel=1e-12)
    assert relu["ratio_e2"] == pytest.approx(4.1, rel=1e-12)
    assert relu["ratio_mmse"] == pytest.approx(4.1 * e2 / mm, rel=1e-12)
    assert [e["decoder"] for e in a["scored"]] == ["vamp", "trained", "topk", "oracle", "relu"]  # ranked by loss
    assert next(e for e in a["scored"] if e["decoder"] == "topk")["ratio_e2"] == pytest.approx(3.0, rel=1e-12)
    assert [f["decoder"] for f in a["failed"]] == ["broken"]
    assert a["failed"][0]["error"] == "ModuleNotFoundError: nope"


def test_summary_medians_worst_and_spread_per_regime():
    text = summary_markdown(aggregate(select_rows(_rows())))
    lines = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    # regimes: r = 0.25, p = 0.045 is a cell where VAMP's state evolution predicts exact recovery, r = 0.1 is not;
    # columns: cells, median, worst where no recovery is predicted, then the same where it is
    assert "| relu | elementwise | 1/1 | 2 | 2 | 1/1 | 4.1 | 4.1 | - |" in lines["relu"]
    assert "| topk | filtering | 1/1 | 6 | 6 | 1/1 | 3 | 3 | - |" in lines["topk"]
    assert "| oracle | reference | 0/1 | - | - | 1/1 | 3.5 | 3.5 | - |" in lines["oracle"]
    assert "| vamp | iterative | 1/1 | 1.5 | 1.5 | 1/1 (1 exact) |" in lines["vamp"]  # never one median of both
    # per cell: among z-decoders (relu 4.1, oracle 3.5, topk 3.0) the spread is 4.1/3 on the n_d=1024 cell;
    # vamp (iterative) is not part of it, and is the best iterative decoder
    cell_1024 = next(ln for ln in text.splitlines() if ln.startswith(f"| {N_S} | 0.25 |"))
    assert "topk (3)" in cell_1024 and "relu (4.1)" in cell_1024 and f"| {4.1 / 3.0:.3g} |" in cell_1024
    assert "vamp (" in cell_1024 and ", exact)" in cell_1024 and "trained (2.9)" in cell_1024
    cell_410 = next(ln for ln in text.splitlines() if ln.startswith(f"| {N_S} | 0.1 |"))
    assert "| 3 |" in cell_410 and "vamp (1.5)" in cell_410
    # the caption's claim is measured from the rows under it
    assert f"is between 1.37 and 3 (median {statistics.median([4.1 / 3.0, 3.0]):.3g})" in text
    assert "on 1 of the 1 cells where the VAMP state evolution predicts exact recovery" in text
    assert "- broken (seed 0): error: ModuleNotFoundError: nope" in text
    assert "None: every ok row is ranked." in text


def test_seed_spread_beside_sampling_error_and_one_seed_says_so():
    agg = aggregate(select_rows(_rows()))
    a = agg[("rug", "float32", N_S, 1024, P)]
    relu = next(e for e in a["scored"] if e["decoder"] == "relu")
    e2 = a["theory"]["e2_bound"]
    assert relu["seed_sd"] == pytest.approx(statistics.stdev([4.0 * e2, 4.2 * e2]), rel=1e-12)
    assert relu["loss_se"] == pytest.approx(relu["seed_sd"] / math.sqrt(2), rel=1e-12)  # the error shown: seeds
    cells = render(_rows(), "t", "c")["cells.md"]
    assert f"2: SD {relu['seed_sd']:.2g}, sampling SE {relu['sampling_se']:.2g}" in cells
    assert "1: sampling error only" in cells


def test_render_is_deterministic_and_order_free():
    rows = _rows()
    a = render(rows, "t", "decoderbench leaderboard --x")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    b = render(shuffled, "t", "decoderbench leaderboard --x")
    assert a == b
    assert set(a) == {"summary.md", "cells.md"}
    for text in a.values():
        assert text.startswith("<!-- generated by `decoderbench leaderboard --x` with decoderbench ")
        assert "relu 1 (test==0)" in text  # decoder versions in the header


def _store_with_rows(path):
    from decoderbench.run.runner import key_of_row

    st = ResultsStore(path)
    for row in _rows():  # the store validates rows on reading: their key must be the one of their columns
        row = {"target_rel_se": 0.01, "min_samples": 1024, "max_samples": 1024, "options": "{}", **row}
        row["key"] = key_of_row(row)
        st.write(row)
    return st


def test_leaderboard_command_writes_what_it_prints_and_is_byte_identical(tmp_path, capsys):
    st = _store_with_rows(tmp_path / "res")
    out1, out2 = tmp_path / "lb1", tmp_path / "lb2"
    args = ["leaderboard", "--results", str(st.path), "--no-figures"]
    assert main([*args, "--out", str(out1)]) == 0
    printed = capsys.readouterr().out
    assert main([*args, "--out", str(out1)]) == 0  # again into the same place
    capsys.readouterr()
    b1 = {f: (out1 / f).read_bytes() for f in ("cells.md", "summary.md")}
    # the table is exactly what the generator makes from the store's rows for that command
    command = f"decoderbench leaderboard --results {st.path} --out {out1} --no-figures"
    expected = render(ResultsStore(st.path, create=False).rows(), f"decoderbench leaderboard: store {st.path} (all rows)",
                      command)
    assert b1 == {f: expected[f].encode() for f in b1}
    assert expected["cells.md"] in printed and expected["summary.md"] in printed
    # same store, other output directory: the same bytes but for the --out in the command line
    assert main([*args, "--out", str(out2)]) == 0
    for f in b1:
        assert (out2 / f).read_bytes() == b1[f].replace(str(out1).encode(), str(out2).encode())


def test_leaderboard_grid_selection(tmp_path, capsys):
    st = _store_with_rows(tmp_path / "res")
    grid = tmp_path / "g.toml"
    grid.write_text(f"seeds = [0]\n[cells]\nn_s = [{N_S}]\nn_d = [410]\np = [{P}]\n")
    assert main(["leaderboard", "--results", str(st.path), "--grid", str(grid), "--no-figures",
                 "--out", str(tmp_path / "lb")]) == 0
    text = (tmp_path / "lb" / "cells.md").read_text()
    assert "n_d = 410" in text and "n_d = 1024" not in text
    assert "# decoderbench leaderboard: grid g" in text
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(st.path), "--ns", "64", "--p", "0.5", "--no-figures",
                 "--out", str(tmp_path / "lb2")]) == 2
    assert "holds no rows" in capsys.readouterr().err and not (tmp_path / "lb2").exists()


def test_figures_and_theory_curves(tmp_path):
    from matplotlib.image import imread

    from decoderbench.board.plots import R_FINE, R_RELU, make_figures, theory_curves

    c = theory_curves(P)
    v = T.feature_variance(P)
    i = R_FINE.index(0.24)
    sigma = math.sqrt(v * (1 / 0.24 - 1))
    assert c["e2"][i] == T.e2_bound(P, sigma) and c["mmse"][i] == T.scalar_mmse(P, sigma)
    assert c["vamp"][i] == T.vamp_se_mse(P, 0.24) and c["linear"][i] == T.best_linear(P, 0.24)
    j = R_RELU.index(0.26)
    assert c["relu"][j] == T.relu_theory(P, math.sqrt(v * (1 / 0.26 - 1)))[0]
    # the E.2 bound lies below the elementwise MMSE, which lies below the ReLU theory (elementwise decoders)
    assert all(e <= m for e, m in zip(c["e2"], c["mmse"]))
    mm_at_relu = [c["mmse"][R_FINE.index(r)] if r in R_FINE else None for r in R_RELU]
    assert all(m is None or m <= rl * (1 + 1e-9) for m, rl in zip(mm_at_relu, c["relu"]))

    from decoderbench.board.leaderboard import rows_digest
    from decoderbench.board.plots import MAX_PX, figure_digest

    paths = make_figures(_rows(), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(["headline.png", "loss_vs_r.png", "loss_vs_p2_over_r.png", f"ratio_e2_ns{N_S}.png"])
    digest = rows_digest(select_rows(_rows()))
    for p in paths:
        img = imread(p)
        assert img.ndim == 3 and 200 < min(img.shape[:2]) and max(img.shape[:2]) <= MAX_PX
        assert p.with_suffix(".svg").is_file()  # a vector copy beside each PNG
        assert figure_digest(p) == digest == figure_digest(p.with_suffix(".svg"))  # drawn from the tables' rows
    # the same rows draw the same bytes
    again = make_figures(_rows(), tmp_path / "again")
    for a, b in zip(paths, again):
        assert a.read_bytes() == b.read_bytes() and a.with_suffix(".svg").read_bytes() == b.with_suffix(".svg").read_bytes()


# ----------------------------------------------------------------------------- rows ranked nowhere


def _flagged_rows():
    """Clean rows on two cells plus one row of each kind that must be ranked nowhere."""
    e2_a, e2_b = _theory(1024)["e2_bound"], _theory(410)["e2_bound"]
    rows = [
        _row("relu", "elementwise", 1024, 4.0 * e2_a, 1e-5),
        _row("topk", "filtering", 1024, 3.0 * e2_a, 1e-5),
        _row("vamp", "iterative", 1024, 1e-12, 1e-14),
        _row("relu", "elementwise", 410, 2.0 * e2_b, 1e-5),
        _row("topk", "filtering", 410, 2.5 * e2_b, 1e-5),
    ]
    capped = _row("trained", "learned", 1024, 0.1 * e2_a, 1e-6)  # "best" by loss, but it stopped on a time cap
    capped["params"] = {"stop_reason": "time_cap", "steps": 5}
    itercap = _row("vamp", "iterative", 410, 0.5 * e2_b, 1e-5)  # some samples at the iteration cap
    itercap["params"] = {"stop_reason": "converged", "stop_reasons": {"converged": 20, "max_iter": 12}, "max_iter": 60}
    itercap["predicted"] = 0.5 * e2_b
    imprecise = _row("oracle", "reference", 410, 1.0 * e2_b, 0.2 * e2_b)  # SE 20% of the loss, target 2%
    imprecise["target_rel_se"] = 0.02
    told = _row("linear", "elementwise", 1024, 1.5 * e2_a, 1e-9)  # precise-looking, but scoring says it missed
    told["precision_met"] = False
    unsettled = _row("amp", "iterative", 410, 0.9 * e2_b, 1e-5)  # capped and 4000 SE above its state evolution
    unsettled["params"] = {"stop_reasons": {"converged": 2, "max_iter": 30}, "max_iter": 60}
    unsettled["predicted"] = 0.5 * e2_b
    for r in rows:
        r["target_rel_se"] = 0.02
    return rows + [capped, itercap, imprecise, told, unsettled], {"trained", "oracle", "linear", "amp"}, itercap


def test_capped_and_imprecise_rows_are_ranked_nowhere_and_listed(tmp_path, capsys):
    from decoderbench.board.leaderboard import row_flags

    rows, gone, itercap = _flagged_rows()
    # the iteration-capped vamp sits at its plateau (its loss is its state evolution): a result, ranked and marked
    assert [bool(row_flags(r)) for r in rows] == [False] * 5 + [True, False, True, True, True]
    agg = aggregate(select_rows(rows))
    for a in agg.values():
        assert not {e["decoder"] for e in a["scored"]} & gone
    vamp = next(e for e in agg[("rug", "float32", N_S, 410, P)]["scored"] if e["decoder"] == "vamp")
    assert "capped on 12/32 samples, at its plateau" in vamp["note"]
    files = render(rows, "t", "cmd")
    summary, cells = files["summary.md"], files["cells.md"]
    ranked_part = summary[:summary.index("## Not converged or imprecise")]
    per_cell = ranked_part[ranked_part.index("## Per cell"):]
    for name in gone:
        assert f"| {name} (" not in per_cell  # in no "best"/"worst" column
        line = next(ln for ln in ranked_part.splitlines() if ln.startswith(f"| {name} |"))
        assert "| - | - |" in line and line.rstrip(" |").endswith("1")  # no median, worst; counted as unranked
    assert "vamp (0.5" in per_cell  # the capped vamp at its plateau is the best iterative decoder; amp is not
    section = summary[summary.index("## Not converged or imprecise"):]
    assert "stopped on time_cap after 5 steps" in section and "| time_cap |" in section
    assert "30 of 32 samples hit the iteration cap (60), not at its plateau" in section
    assert "not at its plateau: loss / state evolution 1.8" in section
    assert "imprecise: SE 20% of loss, target 2%" in section
    assert section.count("| 1024 |") == 4  # every row lists its samples (4 rows ranked nowhere)
    for text in (cells,):
        for block in text.split("\n## ")[1:]:
            ranked = block.split("Not converged or imprecise on this cell")[0]
            assert not any(f"| {name} |" in ranked for name in gone)
    # every figure: the flagged decoders are in no main series
    from decoderbench.board import plots

    for e in plots._entries(rows):
        assert e["decoder"] not in gone
    pngs = plots.make_figures(rows, tmp_path / "fig")
    assert len(pngs) == 4
    for png in pngs:
        svg = png.with_suffix(".svg").read_text()  # text is kept as text: legends and titles can be read
        # the flagged decoders are in no legend or series of the line figures; the heatmaps show them as n/c only
        if not png.name.startswith("ratio_e2"):
            assert not any(re.search(rf"(?<![a-z]){name} \(", svg) for name in gone), png.name
        else:
            assert svg.count(">n/c<") == 4  # one per flagged row (amp, trained, oracle, linear)


def test_plateau_note_measures_the_distance_to_state_evolution():
    from decoderbench.board.leaderboard import plateau_note

    _, _, row = _flagged_rows()
    assert plateau_note(row).startswith("at its plateau: loss / state evolution 1 (0 SE away)")
    row = dict(row, loss=row["predicted"] * 1.5, loss_se=row["predicted"] * 0.01)
    assert plateau_note(row).startswith("not at its plateau: loss / state evolution 1.5 (50 SE away)")
    row = dict(row, predicted=None)
    assert "plateau unknown" in plateau_note(row)


# ----------------------------------------------------------------------------- runs leave the tree alone


def _readme_first_commands() -> list[str]:
    """The `decoderbench ...` commands of the README's first code block (the first-hour commands)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    cmds = []
    for line in block.splitlines():
        for part in line.split("#")[0].split("&&"):
            part = part.strip()
            if part.startswith("decoderbench "):
                cmds.append(part)
    return cmds


def test_readme_first_commands_leave_a_fresh_clone_clean(tmp_path):
    """`git status` is clean after the README's first-hour commands, run in a fresh clone.

    The commands are the README's, on a small cell (--ns 256, two decoders) so that the test is quick;
    what matters here is where they write, which the cell size does not change.
    """
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("needs git and a git checkout")
    if sys.version_info < (3, 11):
        pytest.skip("runs the checkout's code from another directory with python -P (Python 3.11+)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    cmds = _readme_first_commands()
    assert cmds[0].startswith("decoderbench run") and any(c.startswith("decoderbench leaderboard") for c in cmds)
    # the code under test (this checkout), run with the fresh clone as its working directory
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    for cmd in cmds:
        args = cmd.split()[1:]
        if args[0] == "run":
            args = [a if a != "all" else "linear,relu" for a in args] + ["--ns", "256", "--device", "cpu"]
            if "--grid" not in args:
                args += ["--grid", "default"]  # what the bare command runs; --ns alone would make it ad-hoc
        if args[0] == "leaderboard":
            args += ["--ns", "256"]
        # -P: the clone (the working directory) is not put on sys.path, so this checkout's code runs
        res = subprocess.run([sys.executable, "-P", "-m", "decoderbench", *args], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored=no"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", status
    assert (clone / "results" / "board").is_dir()  # the board went into the store's folder


def test_a_row_worse_than_trivial_is_flagged_and_ranked_nowhere():
    """A row whose loss is above p/3 (the loss of x_hat = 0) is flagged, whatever its decoder."""
    from decoderbench.board.leaderboard import row_flags

    bad = _row("vamp", "iterative", 1024, 1.2 * P / 3, 1e-5)
    good = _row("vamp", "iterative", 1024, 0.8 * P / 3, 1e-5)
    assert any("worse than trivial" in f for f in row_flags(bad))
    assert not any("worse than trivial" in f for f in row_flags(good))
    agg = aggregate(select_rows([bad, _row("relu", "elementwise", 1024, 0.01, 1e-5)]))
    a = agg[("rug", "float32", N_S, 1024, P)]
    assert [e["decoder"] for e in a["scored"]] == ["relu"]
    assert "worse than trivial" in a["unconverged"][0]["why"]


def test_recovered_fraction_is_shown_for_decoders_that_see_h():
    rows = [_row("vamp", "iterative", 1024, 1e-5, 1e-6), _row("relu", "elementwise", 1024, 0.004, 1e-5)]
    rows[0]["recovered_frac"], rows[1]["recovered_frac"] = 0.75, 0.0
    cells = render(rows, title="t", command="c")["cells.md"]
    assert "| recovered |" in cells.replace("recovered |", "recovered |")
    assert "0.750 ± 0.014" in cells  # sqrt(0.75 * 0.25 / 1024)
    vamp_line = next(line for line in cells.splitlines() if "| vamp" in line)
    relu_line = next(line for line in cells.splitlines() if "| relu" in line)
    assert "0.750" in vamp_line and "| - |" in relu_line
    # rows without the column (older stores) keep the old table
    for r in rows:
        del r["recovered_frac"]
    assert "recovered" not in render(rows, title="t", command="c")["cells.md"]


def test_the_board_reads_the_declared_stop_columns_and_falls_back_to_params():
    """``converged`` and ``stop_reason`` are row columns of the decoder contract (decoder.STOP_COLUMNS); the board
    reads them, and a row made before them (no column) is read from its params as before."""
    from decoderbench.board.leaderboard import capped_mark, iteration_cap_hits, row_flags, stop_text

    base = _row("thirdparty", "iterative", 1024, 1e-3, 1e-5)
    # the columns alone, no plugin-specific params: a cap stop is ranked nowhere, an iteration cap is marked
    capped = dict(base, converged=False, stop_reason="time_cap")
    assert any("stopped on time_cap" in f for f in row_flags(capped)) and stop_text(capped) == "time_cap"
    iter_capped = dict(base, converged=False, stop_reason="max_iter")
    assert iteration_cap_hits(iter_capped) == (1, 1) and capped_mark(iter_capped).startswith("capped on 1/1")
    done = dict(base, converged=True, stop_reason="converged")
    assert not row_flags(done) and capped_mark(done) == "" and stop_text(done) == "converged"
    assert capped_mark(base) == "stop not reported"
    # the column wins over params; a row without the columns is read from params as before
    assert not row_flags(dict(base, stop_reason="converged", params={"stop_reason": "time_cap"}))
    old = dict(base, params={"stop_reason": "step_cap", "steps": 7})
    assert "stopped on step_cap after 7 steps" in row_flags(old)
    old = dict(base, params={"stop_reasons": {"max_iter": 3, "converged": 5}})
    assert iteration_cap_hits(old) == (3, 8) and iteration_cap_hits(dict(old, converged=True)) == (0, 0)
