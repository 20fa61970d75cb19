"""The declared row schema (decoderbench/results/rows.py): one declaration of the row's columns drives the key, the
runner's layout, error rows and the store's column types; every key is what it was before the declaration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from decoderbench.results import rows
from decoderbench.results import store
from decoderbench.run.runner import WorkUnit, error_row, key_of_row, run_unit

ROOT = Path(__file__).resolve().parent.parent


def test_the_declaration_is_well_formed():
    assert all(c.type in rows.TYPES and c.meaning for c in rows.COLUMNS)
    assert len({c.name for c in rows.COLUMNS}) == len(rows.COLUMNS)
    # the unit's fields are the unit columns of the schema, in order, with the same defaults
    f = dataclasses.fields(WorkUnit)
    assert tuple(x.name for x in f) == rows.UNIT_COLUMNS
    assert {x.name: x.default for x in f if x.default is not dataclasses.MISSING} == {
        k: v for k, v in rows.UNIT_DEFAULTS.items() if v is not None}
    for x in f:  # the key normalises each field to its declared type, as the dataclass declares it
        assert rows.COLUMN[x.name].type == {"int": "int", "float": "float", "str": "str"}[str(x.type)]


def test_the_store_types_are_the_declared_ones():
    assert store._FLOAT == rows.FLOAT and store._INT == rows.INT and store._BOOL == rows.BOOL
    assert store._JSON == ("params",)
    assert set(rows.FLOAT) >= {"loss", "loss_se", "p", "se_floor"} and "converged" in rows.BOOL


@pytest.mark.parametrize("board", sorted(p.parent.name for p in (ROOT / "leaderboards").glob("*/rows.json")))
def test_keys_of_committed_rows_are_unchanged(board):
    """The committed boards' rows (and every store's file names) depend on the key: it must not move. A row's key
    is recomputed with its own results format; a unit of this version (RESULTS_FORMAT) has another key, so a run
    never reuses a row whose numbers meant something else (format 2: loss was the plain mean)."""
    stored = json.loads((ROOT / "leaderboards" / board / "rows.json").read_text())
    sample = stored[:: max(1, len(stored) // 7)]
    assert sample
    for row in sample:
        assert rows.key_of_row(row) == row["key"]
        assert key_of_row(row) == row["key"]
        proc = dict(eval_batch=row["eval_batch"], transform_backend=row["transform_backend"],
                    eval_stream=row["eval_stream"])
        unit = WorkUnit.from_row(row)
        assert unit.key(row["decoder_version"], results_format=row["results_format"], **proc) == row["key"]
        if row["results_format"] != rows.RESULTS_FORMAT:
            assert unit.key(row["decoder_version"], **proc) != row["key"]


def test_a_key_is_a_fixed_hash_of_the_declared_key_columns():
    u = WorkUnit(256, 64, 0.05, "relu")
    k = u.key("1", eval_batch=4096, transform_backend="torch", eval_stream="public")
    assert k == rows.key(u.fields(), "1", 4096, "torch", "public")
    assert rows.key({**u.fields(), "n_s": 256.0, "p": 0.05}, "1", 4096, "torch", "public") == k  # 256 == 256.0
    assert rows.key(u.fields(), "1", 4096, "torch", "public", results_format=rows.RESULTS_FORMAT + 1) != k
    assert rows.key(u.fields(), "1", 4096, "torch", "public", results_format=rows.RESULTS_FORMAT) == k
    # a row's key is its own format's: a row without the column is of this version's
    row = {**u.fields(), "decoder_version": "1", "eval_batch": 4096, "transform_backend": "torch",
           "eval_stream": "public"}
    assert rows.key_of_row(row) == k
    assert rows.key_of_row({**row, "results_format": 2}) == rows.key(u.fields(), "1", 4096, "torch", "public",
                                                                     results_format=2) != k


def test_key_of_row_needs_the_process_columns_or_a_source_of_them():
    row = {"n_s": 256, "n_d": 64, "p": 0.05, "decoder": "relu"}
    with pytest.raises(KeyError):
        rows.key_of_row(row, process_defaults=None)
    # the default source derives them from the unit (the eval batch and stream a run would have stamped)
    assert rows.key_of_row(row) == key_of_row(row) == WorkUnit(256, 64, 0.05, "relu").key("?")
    with pytest.raises(KeyError, match="decoder"):
        rows.unit_of_row({"n_s": 256, "n_d": 64, "p": 0.05})


def test_the_runner_lays_out_the_declared_columns():
    r = run_unit(WorkUnit(256, 64, 0.05, "nosuch-decoder", min_samples=256, max_samples=256))
    assert r["status"] == "error" and r["loss"] is None
    assert set(r) <= set(rows.COLUMN)
    assert list(r)[: len(rows.new_row())] == list(rows.new_row())
    with pytest.raises(KeyError, match="not declared"):
        rows.new_row(no_such_column=1)


def test_an_error_row_is_made_without_running_a_decoder():
    from decoderbench.contract import registry as plugins

    unit = WorkUnit(256, 64, 0.05, "linear", min_samples=256, max_samples=256)
    reg = plugins.get_decoder("linear")
    r = error_row(unit, reg, "WorkerDied: gone", status="timeout")
    assert r["status"] == "timeout" and r["error"] == "WorkerDied: gone" and r["loss"] is None
    assert r["key"] == unit.key(reg.version) and r["decoder_version"] == reg.version and r["kind"] == reg.kind
    assert r["fit_time_s"] is None and r["traceback"] is None and r["n_eval"] == 0
    ok = run_unit(unit)
    assert list(ok) == list(r)  # the same columns in the same order as a row that ran
