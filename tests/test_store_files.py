"""Store readers survive any file in a store: odd names, directories, FIFOs, links, deep JSON, compression
bombs and a directory where a lock belongs are each named in one line, never a traceback or a hang."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from decoderbench.results.store import BadRow, ResultsStore, StoreError, _json_cell, check_row, content_hash


def _store_with_a_row(tmp_path):
    from decoderbench.cli import main

    assert main(["run", "--plugins", "linear", "--ns", "64", "--r", "0.25", "--p", "0.1", "--out",
                 str(tmp_path / "s"), "--min-samples", "16", "--max-samples", "16", "--no-summary"]) == 0
    st = ResultsStore(tmp_path / "s", create=False)
    (row,) = st.rows()
    return st, row


def test_odd_files_are_named_and_the_good_row_is_read(tmp_path):
    st, row = _store_with_a_row(tmp_path)
    rows = st.rows_dir
    (rows / "x.y.parquet").write_bytes(b"not a row")
    (rows / "notes.txt").write_text("hello")
    (rows / "adir.parquet").mkdir()
    os.mkfifo(rows / "fifo.parquet")
    os.symlink(st.row_path(row["key"]), rows / "link.parquet")
    assert [r["key"] for r in st.rows()] == [row["key"]]  # no traceback, no hang on the FIFO
    problems = st.problems()
    assert any("x.y.parquet" in k for k in problems) and any("notes.txt" in k for k in problems)
    assert problems["rows/adir.parquet"].startswith("a directory")
    assert problems["rows/fifo.parquet"].startswith("a FIFO")
    assert problems["rows/link.parquet"].startswith("a symbolic link")


def test_a_compression_bomb_is_refused_before_it_expands(tmp_path):
    st, row = _store_with_a_row(tmp_path)
    bomb = pa.table({"params": ["0" * (64 << 20)]})  # 64 MB of zeros, a few kB compressed
    path = st.rows_dir / "bomb.parquet"
    pq.write_table(bomb, path, compression="zstd")
    assert path.stat().st_size < 100_000
    row_, why = st.read_checked("bomb")
    assert row_ is None and "would decompress to" in why
    with pytest.raises(StoreError, match="bomb.parquet: would decompress"):
        st.rows()


def test_deep_json_is_a_bad_row_not_a_recursion_error(tmp_path):
    with pytest.raises(BadRow, match="nested deeper"):
        _json_cell("[" * 200_000 + "]" * 200_000)
    assert _json_cell('{"a": "[[[[", "b": [1, {"c": 2}]}') == {"a": "[[[[", "b": [1, {"c": 2}]}
    st, row = _store_with_a_row(tmp_path)
    cells = pq.read_table(st.row_path(row["key"])).to_pylist()[0]
    cells["params"] = "[" * 100_000 + "]" * 100_000
    cells["row_hash"] = content_hash(cells)
    with pytest.raises(BadRow, match="params is not JSON"):
        check_row(cells, row["key"])


def test_a_directory_where_a_lock_belongs_is_one_line(tmp_path):
    st, row = _store_with_a_row(tmp_path)
    (st.locks_dir / f"{row['key']}.lock").unlink(missing_ok=True)
    (st.locks_dir / f"{row['key']}.lock").mkdir()
    with pytest.raises(StoreError, match=r"locks/.*\.lock is not a lock file"):
        st.claim(row["key"])


def test_the_cli_names_a_bad_lock_in_one_line(tmp_path, capsys):
    from decoderbench.cli import main

    out = tmp_path / "s"
    args = ["run", "--plugins", "linear", "--ns", "64", "--r", "0.25", "--p", "0.1", "--out", str(out),
            "--min-samples", "16", "--max-samples", "16", "--no-summary"]
    assert main(args) == 0
    key = json.loads(json.dumps([f.name for f in (out / "rows").iterdir()]))[0][:-8]
    (out / "rows" / f"{key}.parquet").unlink()
    (out / "locks" / f"{key}.lock").unlink(missing_ok=True)
    (out / "locks" / f"{key}.lock").mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "is not a lock file" in err[-1]
