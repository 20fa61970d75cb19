"""Every numeric flag is bounded where it is parsed: one line naming it and what is allowed, exit 2, before
anything runs (huge timeouts, seeds, sample counts and memory limits; an empty evaluation key)."""

from __future__ import annotations

import pytest

from decoderbench.cli import main

CELL = ["run", "--plugins", "linear", "--ns", "64", "--r", "0.25", "--p", "0.1", "--min-samples", "16"]


@pytest.mark.parametrize("extra, says", [
    (["--timeout", "1e300"], "--timeout must be a positive number of seconds, at most"),
    (["--timeout", "1e7"], "--timeout must be a positive number of seconds, at most"),
    (["--seed", "1e20"], "seed must be an integer in 0..2^63-1"),
    (["--seed", "99999999999999999999"], "seed must be an integer in 0..2^63-1"),
    (["--max-samples", "100000000000000000000"], "max_samples must be an integer of at most 2^40"),
    (["--memory-limit", "1e30"], "--memory-limit must be a number of megabytes in 1024.."),
    (["--memory-limit", "64"], "--memory-limit must be a number of megabytes in 1024.."),
    (["--threads", "0"], "--threads must be auto or an integer in 1..1024"),
    (["--threads", "2.5"], "--threads must be auto or an integer in 1..1024"),
])
def test_out_of_range_flags_are_one_line_exit_2(tmp_path, capsys, extra, says):
    out = tmp_path / "store"
    code = main([*CELL, "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (out / "rows").exists() or not any((out / "rows").iterdir())  # nothing half-written


def test_an_empty_evaluation_key_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DECODERBENCH_EVAL_KEY", "  ")
    code = main([*CELL, "--max-samples", "16", "--out", str(tmp_path / "s"), "--no-summary"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "DECODERBENCH_EVAL_KEY is set but empty" in err[-1]


def test_finite_outputs_that_overflow_float32_are_scored_in_float64():
    import torch

    from decoderbench.run.scoring import sample_losses

    x = torch.rand(4, 8)
    big = torch.full((4, 8), 3e38)  # finite in float32; its square is not
    out = sample_losses(x, big)
    assert bool(torch.isfinite(out).all()) and float(out[0]) == pytest.approx(9e76, rel=1e-6)
    with pytest.raises(ValueError, match="too large to score"):
        sample_losses(x.double(), torch.full((4, 8), 1e200, dtype=torch.float64))


@pytest.mark.parametrize("cells, extra, says", [
    # 3000 x 3000: counted before any cell is built (it took minutes and GBs before)
    ("n_s = [4096]\nn_d = [{nds}]\np = [{ps}]\n", [], "9000000 cells (the product of its n_s, r or n_d and p lists): "
                                                   "more than 10000"),
    ("n_s = [64]\nr = [0.25]\np = [0.1]\n", ["--plugins", "linear"], None),
], ids=["too-many-cells", "fine"])
def test_a_huge_grid_is_counted_and_refused_up_front(tmp_path, capsys, cells, extra, says):
    nds = ", ".join(str(1 + i) for i in range(3000))
    ps = ", ".join(repr(0.01 + i * 1e-5) for i in range(3000))
    grid = tmp_path / "g.toml"
    grid.write_text("name = \"huge\"\n[cells]\n" + cells.format(nds=nds, ps=ps))
    code = main(["run", "--grid", str(grid), "--plugins", "linear", "--min-samples", "16", "--max-samples", "16",
                 "--out", str(tmp_path / "s"), "--no-summary"])
    err = capsys.readouterr().err.strip().splitlines()
    if says is None:
        assert code == 0, err
    else:
        assert code == 2 and len(err) == 1 and says in err[0], err
        assert not (tmp_path / "s").exists()


def test_too_many_units_are_refused(monkeypatch):
    from decoderbench.run import grids
    from decoderbench.run import sweep

    monkeypatch.setattr(grids, "MAX_UNITS", 5)
    g = grids.load_grid("default")
    with pytest.raises(ValueError, match=r"4 cells x 1 seeds x 2 decoders = 8 rows: more than 5"):
        sweep.units_for(g, ["relu", "linear"], device="cpu")


def test_rows_record_their_thread_count_and_auto_uses_the_free_cores(tmp_path, capsys, monkeypatch):
    import json
    import os

    import torch

    from decoderbench import api

    before = torch.get_num_threads()
    assert main([*CELL, "--max-samples", "16", "--threads", "1", "--json"]) == 0
    assert [r["threads"] for r in json.loads(capsys.readouterr().out)] == [1]
    assert torch.get_num_threads() == before  # the run's setting ends with it
    busy = api.busy_cores_now()
    assert busy is None or 0.0 <= busy <= os.cpu_count() + 1e-9  # measured: between no core and every core
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(api, "busy_cores_now", lambda: 1e6)  # a machine busy beyond its cores: one thread
    assert api.free_cores() == 1
    monkeypatch.setattr(api, "busy_cores_now", lambda: 0.0)  # an idle machine: every core
    assert api.free_cores() == cpus
    monkeypatch.setattr(api, "busy_cores_now", lambda: 1.2)  # one core busy
    assert api.free_cores() == max(1, cpus - 1)
    monkeypatch.setattr(api, "busy_cores_now", lambda: None)  # not measurable: the 1-minute load average
    monkeypatch.setattr("os.getloadavg", lambda: (1e6, 0.0, 0.0))
    assert api.free_cores() == 1
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert api.free_cores() == cpus
