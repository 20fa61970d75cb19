"""The results store: atomic rows, resume after SIGKILL, reuse and --force, failed rows retried, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import torch

from decoderbench import Decoder
from decoderbench.contract import registry as plugins
from decoderbench.cli import main
from decoderbench.run.grids import adhoc_grid
from decoderbench.board.leaderboard import render
from decoderbench.results.store import MARKER, STORE_FORMAT, ResultsStore, StoreError
from decoderbench.run.sweep import execute_serial, resolve_device, run_sweep, units_for

ENV = {**os.environ, "DECODERBENCH_PLUGINS": "rug,linear"}


def run_cli(*args, cwd, timeout=180):
    return subprocess.run([sys.executable, "-m", "decoderbench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


class HalfStore(Decoder):
    name = "half_store_test"
    kind = "elementwise"

    def decode(self, z):
        return 0.5 * z


class FailStore(Decoder):
    name = "fail_store_test"
    kind = "elementwise"

    def decode(self, z):
        raise RuntimeError("always fails")


@pytest.fixture
def throwaway():
    from decoderbench import hookimpl

    class P:
        @hookimpl
        def decoderbench_register_decoders(self, register):
            register(HalfStore)
            register(FailStore)

    name = plugins.register_plugin(P(), name="store_test_plugin")
    yield
    plugins.unregister_plugin(name)


def valid_row(**over) -> dict:
    """A row as the runner writes it (its key computed from its columns, as the store checks)."""
    from decoderbench.run.runner import key_of_row

    row = {"decoder": "d", "encoder": "rug", "device": "cpu", "dtype": "float32", "n_s": 64, "n_d": 16, "p": 0.1,
           "r": 0.25, "seed": 0, "n_eval": 64, "target_rel_se": 0.01, "min_samples": 64, "max_samples": 64,
           "options": "{}", "decoder_version": "1", "status": "ok", "loss": 0.5, "loss_se": 0.01, "error": None}
    row.update(over)
    row["key"] = key_of_row(row)
    return row


def _small_grid(**kw):
    return adhoc_grid([64], [0.25, 0.5], None, [0.1], [0], target_rel_se=0.05, min_samples=64, max_samples=256, **kw)


class Counting:
    """An executor that counts what it computes."""

    def __init__(self):
        self.n = 0

    def __call__(self, units, before=None):
        for u, row in execute_serial(units, before):
            self.n += 1
            yield u, row


# ----------------------------------------------------------------------------- rows and layout


def test_new_store_has_marker_and_row_roundtrip(tmp_path):
    st = ResultsStore(tmp_path / "res")
    meta = json.loads((tmp_path / "res" / MARKER).read_text())
    assert meta["store"] == "decoderbench" and meta["format_version"] == STORE_FORMAT
    row = valid_row(loss_se=None, params={"a": 1.25, "nested": {"k": [1, 2]}}, ratio_e2=float("nan"), flag=True)
    k = row["key"]
    st.write(row)
    back = st.read(k)
    assert back["params"] == {"a": 1.25, "nested": {"k": [1, 2]}}
    assert back["loss"] == 0.5 and back["loss_se"] is None and back["ratio_e2"] is None and back["flag"] is True
    assert st.done(k) is not None
    st.write({**row, "status": "error", "loss": None})
    assert st.read(k)["status"] == "error" and st.done(k) is None  # failed rows are not done
    assert st.keys() == [k]
    # a reopened store reads the same
    assert ResultsStore(tmp_path / "res").read(k)["status"] == "error"


def test_declared_stop_columns_are_typed_and_checked(tmp_path):
    """converged (bool or null, typed even when null) and stop_reason (text) are declared row columns: the runner
    copies them from what the decoder reports (runner.stop_columns), the store keeps their types."""
    from decoderbench.run.runner import stop_columns
    from decoderbench.results.store import BadRow, check_row, row_table

    assert stop_columns({"converged": True, "stop_reason": "converged"}) == {"converged": True,
                                                                             "stop_reason": "converged"}
    assert stop_columns({"converged": 1, "stop_reason": ""}) == {"converged": None, "stop_reason": None}
    assert stop_columns({}) == {"converged": None, "stop_reason": None}
    st = ResultsStore(tmp_path / "res")
    for conv in (True, None):
        row = valid_row(seed=0 if conv else 1, converged=conv, stop_reason="converged" if conv else None)
        assert row_table(row).schema.field("converged").type == pa.bool_()
        st.write(row)
        assert st.read(row["key"])["converged"] is conv
    from decoderbench.results.store import HASH_COLUMN, content_hash

    cells = dict(row_table(valid_row()).to_pylist()[0], converged="yes")  # a forged row, its hash recomputed
    cells[HASH_COLUMN] = content_hash(cells)
    with pytest.raises(BadRow, match="converged"):
        check_row(cells, cells["key"])


def test_leftover_temporary_files_are_ignored_and_cleaned(tmp_path):
    st = ResultsStore(tmp_path)
    row = valid_row()
    st.write(row)
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    junk = st.rows_dir / f".tmp-{dead_pid}-k2.parquet"
    junk.write_bytes(b"PAR1 half a row")  # what a SIGKILL during a write leaves behind
    assert st.keys() == [row["key"]] and [r["key"] for r in st.rows()] == [row["key"]]
    assert st.clean_temporaries() == 1 and not junk.exists()


# ----------------------------------------------------------------------------- refusals


def test_refuses_foreign_directory(tmp_path, capsys):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my thesis")
    with pytest.raises(StoreError, match="not a decoderbench results store"):
        ResultsStore(d)
    assert main(["run", "--plugins", "linear", "--ns", "64", "--out", str(d), "--json"]) == 2
    err = capsys.readouterr().err
    assert "not a decoderbench results store" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"] and (d / "notes.txt").read_text() == "my thesis"


@pytest.mark.parametrize("marker,needle", [
    ({"store": "decoderbench", "format_version": STORE_FORMAT + 998}, f"format version {STORE_FORMAT + 998}"),
    ({"store": "something-else", "format_version": STORE_FORMAT}, "does not identify a decoderbench results store"),
    ("{not json", "unreadable"),
])
def test_refuses_incompatible_or_foreign_marker(tmp_path, marker, needle, capsys):
    d = tmp_path / "res"
    d.mkdir()
    text = marker if isinstance(marker, str) else json.dumps(marker)
    (d / MARKER).write_text(text)
    with pytest.raises(StoreError, match=needle.replace("(", r"\(")):
        ResultsStore(d)
    assert main(["run", "--plugins", "linear", "--out", str(d), "--json"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in d.iterdir()) == [MARKER] and (d / MARKER).read_text() == text


def test_leaderboard_refuses_missing_store(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path / "nothing")]) == 2
    assert "no such results store" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------- reuse, force, failures


def test_rerun_reuses_force_recomputes_failures_retry(tmp_path, throwaway):
    st = ResultsStore(tmp_path / "res")
    units = units_for(_small_grid(), ["half_store_test", "fail_store_test"], device="cpu")
    assert len(units) == 4
    ex = Counting()
    first = run_sweep(units, store=st, command="test", grid="t", executor=ex)
    assert (first.n_reused, first.n_computed, first.n_failed, ex.n) == (0, 4, 2, 4)
    assert len(st.keys()) == 4  # failed rows are recorded too
    assert {r["status"] for r in st.rows()} == {"ok", "error"}

    ex = Counting()
    second = run_sweep(units, store=st, command="test", grid="t", executor=ex)
    assert (second.n_reused, second.n_computed, ex.n) == (2, 2, 2)  # only the failed ones again
    ok_first = [r for r in first.rows if r["status"] == "ok"]
    ok_second = [r for r in second.rows if r["status"] == "ok"]
    assert [r["loss"] for r in ok_first] == [r["loss"] for r in ok_second]
    assert [r["decoder"] for r in second.rows] == [u.decoder for u in units]  # unit order kept

    half = [u for u in units if u.decoder == "half_store_test"]
    ex = Counting()
    third = run_sweep(half, store=st, command="test", grid="t", executor=ex)
    assert (third.n_reused, third.n_computed, ex.n) == (2, 0, 0)
    assert third.counts_line.startswith("2 rows reused, 0 computed")
    ex = Counting()
    forced = run_sweep(half, store=st, force=True, command="test", grid="t", executor=ex)
    assert (forced.n_reused, forced.n_computed, ex.n) == (0, 2, 2)
    # same unit, same numbers: the fit and evaluation streams are derived from the seed
    assert [r["loss"] for r in forced.rows] == [r["loss"] for r in ok_first]


def test_key_includes_resolved_device_and_stamped_columns(tmp_path, throwaway):
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device must be auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="resolve the device first"):
        units_for(_small_grid(), ["half_store_test"], device="auto")
    g = _small_grid()
    cpu = units_for(g, ["half_store_test"], device="cpu")
    cuda = units_for(g, ["half_store_test"], device="cuda")  # only described, never run here
    assert {u.key("1") for u in cpu}.isdisjoint({u.key("1") for u in cuda})
    st = ResultsStore(tmp_path / "res")
    res = run_sweep(cpu[:1], store=st, command="decoderbench run --x", grid="t")
    row = st.read(res.rows[0]["key"])
    assert row["key"] == cpu[0].key(HalfStore.version) and row["device"] == "cpu"
    for col in ("command", "finished_at", "wall_time_s", "decoderbench_version", "decoder_version", "source",
                "torch_version", "store_format", "results_format", "min_samples", "max_samples", "options"):
        assert row.get(col) is not None, col
    assert row["command"] == "decoderbench run --x" and isinstance(row["params"], dict)


# ----------------------------------------------------------------------------- SIGKILL and resume


SWEEP = ["run", "--plugins", "linear", "--ns", "256", "--r", "0.1,0.25,0.5", "--p", "0.05,0.1",
         "--target-se", "0.05", "--max-samples", "512", "--device", "cpu", "--no-summary"]


def _rows_by_key(store_dir):
    return {r["key"]: r for r in ResultsStore(store_dir, create=False).rows()}


def test_sigkill_midway_then_resume_gives_the_uninterrupted_table(tmp_path):
    killed = tmp_path / "killed"
    args = [*SWEEP, "--out", str(killed), "--leaderboard", str(tmp_path / "lb_killed")]
    proc = subprocess.Popen([sys.executable, "-m", "decoderbench", *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_dir = killed / "rows"
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_dir.is_dir() and any(f.suffix == ".parquet" and not f.name.startswith(".")
                                         for f in rows_dir.iterdir()):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the sweep finished before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    n_before = len(_rows_by_key(killed))
    assert 1 <= n_before < 6

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_before} rows reused, {6 - n_before} computed" in resumed.stderr

    clean = tmp_path / "clean"
    full = run_cli(*SWEEP, "--out", str(clean), "--leaderboard", str(tmp_path / "lb_clean"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    a, b = _rows_by_key(killed), _rows_by_key(clean)
    assert sorted(a) == sorted(b) and len(a) == 6
    assert all(a[k]["loss"] == b[k]["loss"] and a[k]["loss_se"] == b[k]["loss_se"] for k in a)
    assert render(list(a.values()), "t", "cmd") == render(list(b.values()), "t", "cmd")
    # and the tables the two runs wrote are identical but for the command line in their headers
    def body(p):
        return [ln for ln in p.read_text().splitlines() if not ln.startswith(("<!--", "Made by"))]

    assert body(tmp_path / "lb_killed" / "cells.md") == body(tmp_path / "lb_clean" / "cells.md")
    assert body(tmp_path / "lb_killed" / "summary.md") == body(tmp_path / "lb_clean" / "summary.md")
