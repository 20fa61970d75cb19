"""The results store: one small parquet file per result row, written atomically.

Layout of a store directory (``results/`` by default)::

    decoderbench-store.json      marker: {"store": "decoderbench", "format_version": 1, ...}
    rows/<key>.parquet           one row per (cell, encoder, decoder, seed, ...) key

``key`` is ``WorkUnit.key(decoder_version)`` (``rows.key``: the row schema, decoderbench/results/rows.py, declares the
key columns and every column's type): a hash of everything that determines the row's numbers
(cell, encoder, decoder and its version, seed, resolved device, dtype, sampling target, options).
A row is written the moment it is finished: to a temporary file in ``rows/``, flushed and fsynced,
then renamed over ``rows/<key>.parquet`` (``os.replace`` is atomic), so a run killed at any point, even
by SIGKILL, loses at most the rows in flight and never leaves a partial row behind. Leftover
temporary files (names starting with ``.``) are ignored by readers and removed by the next writer.

A row whose ``status`` is ``error`` is stored (so the failure is on record) but does not count as
done: the next run computes it again and replaces it. ``ok`` and ``skipped`` rows are done.

A directory that is not empty and has no marker, or whose marker has another ``format_version``, is
refused (``StoreError``, bad input: exit 2 from the CLI), never written into. Creating a store is
atomic: two runs started together into one new folder both get the same store (the marker is
written once, under a lock file ``.decoderbench-store.lock``).

Trust (format version 2):

* **Every row is validated when read** (:func:`check_row`): its ``key`` column equals its file name, a
  content hash (``row_hash``, sha256 of every other stored cell) matches, the columns have their
  types, an ``ok`` row has a finite non-negative loss and SE and at least one sample, and the key
  recomputed from the row's own columns (``rows.key_of_row``) is the key it is stored under. A row that
  fails is not done (the next ``run`` recomputes it when it is one of its units) and is reported by
  file name; :meth:`ResultsStore.rows` refuses (``StoreError`` naming the files) to hand out a store
  it cannot fully read, so ``leaderboard`` never averages in silence. The hash catches edits and
  truncation, not forgery (anyone can recompute a sha256): ``decoderbench verify`` recomputes rows.
* **Concurrent runs**: a run claims a key before computing it, by an exclusive ``flock`` on
  ``locks/<key>.lock`` through `filelock` (already a dependency of torch; cross-platform, and the lock
  dies with its process, so a ``kill -9``'d run never leaves a stale claim). A run that finds a key
  claimed skips it, and at the end waits for that claim and reuses the row (or computes it, if the
  other run's attempt failed). Rows are written before their claim is released, and a run re-checks
  the store after claiming, so two runs into one store compute and write each row once. A lock per
  key, not one per store, lets two runs share the work of one sweep.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .._version import __version__
from . import rows as _schema
from ..errors import BadInput

MARKER = "decoderbench-store.json"
STORE_FORMAT = 2  # bump when the layout or the column meanings change (2: row_hash, validated rows, claims)
ROWS_DIR = "rows"
LOCKS_DIR = "locks"
CREATE_LOCK = ".decoderbench-store.lock"
DONE_STATUSES = _schema.DONE_STATUSES
STATUSES = _schema.STATUSES
HASH_COLUMN = "row_hash"

# Columns with a fixed type, so that every row file has the same schema whatever is None in it: the row
# schema's declaration (decoderbench/results/rows.py) says which and what type.
_FLOAT = _schema.FLOAT
_INT = _schema.INT
_BOOL = _schema.BOOL  # True/False, or null (typed even when null, so every row file has one schema)
_JSON = _schema.JSON  # dicts, stored as JSON strings and parsed back on reading


def _arrow_type(name: str, value):
    if name in _FLOAT:
        return pa.float64()
    if name in _INT:
        return pa.int64()
    if name in _BOOL:
        return pa.bool_()
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def _to_cell(name: str, value):
    """A row value as stored: JSON columns and any dict/list as JSON text, non-finite floats as null."""
    if name in _JSON or isinstance(value, (dict, list, tuple)):
        return json.dumps(value if value is not None else {}, sort_keys=True, allow_nan=False)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if name in _FLOAT and value is not None:
        return float(value)
    if name in _INT and value is not None:
        return int(value)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        return str(value)
    return value


def content_hash(cells: dict) -> str:
    """sha256 of a row's stored cells (every column but ``row_hash``), canonical JSON."""
    body = {k: v for k, v in cells.items() if k != HASH_COLUMN}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False, default=str).encode()).hexdigest()


def row_table(row: dict) -> pa.Table:
    """One row as a one-line arrow table, columns in sorted order, with its content hash."""
    cells = {k: _to_cell(k, v) for k, v in row.items() if k != HASH_COLUMN}
    cells[HASH_COLUMN] = content_hash(cells)
    names = sorted(cells)
    cells = {k: cells[k] for k in names}
    schema = pa.schema([pa.field(k, _arrow_type(k, cells[k])) for k in names])
    return pa.Table.from_pylist([cells], schema=schema)


#: A row file larger than this, or whose columns claim more than ``MAX_ROW_UNCOMPRESSED`` bytes once
#: decompressed, is not read (a decoderbench row is a few kB; a compression bomb is refused before it expands).
MAX_ROW_FILE = 4 << 20
MAX_ROW_UNCOMPRESSED = 16 << 20
#: JSON cells nested deeper than this are refused (a row's params are a few levels deep).
MAX_JSON_DEPTH = 64


def _json_cell(text: str):
    """``json.loads`` of a stored cell, refusing absurd nesting before it recurses (BadRow, not RecursionError)."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            esc, in_str = (False, True) if esc else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise BadRow(f"a JSON cell is nested deeper than {MAX_JSON_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise BadRow("a JSON cell does not parse") from None


def _from_stored(row: dict) -> dict:
    for k in _JSON:
        if isinstance(row.get(k), str):
            row[k] = _json_cell(row[k])
    return row


def _read_row_file(path: Path) -> list[dict]:
    """The rows of one row file, refusing anything that is not a small regular parquet file before reading it:
    FileNotFoundError when absent, BadRow naming what it is otherwise."""
    st = os.stat(path, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise BadRow("a symbolic link, not a row file")
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else ("a FIFO" if stat.S_ISFIFO(st.st_mode)
                                                             else "not a regular file")
        raise BadRow(f"{what}, not a row file")
    if st.st_size > MAX_ROW_FILE:
        raise BadRow(f"{st.st_size} bytes, larger than any row ({MAX_ROW_FILE} at most)")
    try:
        meta = pq.ParquetFile(path).metadata
        size = sum(meta.row_group(i).column(j).total_uncompressed_size
                   for i in range(meta.num_row_groups) for j in range(meta.num_columns))
        if size > MAX_ROW_UNCOMPRESSED:
            raise BadRow(f"would decompress to {size} bytes, more than any row ({MAX_ROW_UNCOMPRESSED} at most)")
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException, MemoryError) as exc:
        raise BadRow(f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


class StoreError(BadInput):
    """A directory that cannot be used as a results store (bad input: the CLI exits 2)."""


class BadRow(ValueError):
    """A stored row that fails validation (the message says why)."""


def _is(v, types, none_ok=True) -> bool:
    if v is None:
        return none_ok
    if isinstance(v, bool) and bool not in types:
        return False
    return isinstance(v, types)


def _finite_nonneg(v) -> bool:
    return _is(v, (int, float), none_ok=False) and math.isfinite(v) and v >= 0


#: The columns the row check types beyond the typed ones: the strings a row must have, and its integers.
_CHECKED_STR = tuple(c for c in _schema.STR_REQUIRED if c not in ("key", "status"))  # those two: checked first
_CHECKED_INT = tuple(c for c in _schema.UNIT_COLUMNS if _schema.COLUMN[c].type == "int") + ("n_eval",)


def check_row(cells: dict, key: str) -> None:
    """Raise BadRow unless the stored cells of ``rows/<key>.parquet`` are a row decoderbench wrote."""
    if cells.get("key") != key:
        raise BadRow(f"its key column {cells.get('key')!r} is not its file name")
    if cells.get(HASH_COLUMN) != content_hash(cells):
        raise BadRow("its content hash does not match its contents (edited or damaged after it was written)")
    if cells.get("status") not in STATUSES:
        raise BadRow(f"status {cells.get('status')!r} is not one of {', '.join(STATUSES)}")
    for col in _CHECKED_STR:
        if not _is(cells.get(col), (str,), none_ok=False):
            raise BadRow(f"column {col} must be a string, got {cells.get(col)!r}")
    for col in _CHECKED_INT:
        if not _is(cells.get(col), (int,), none_ok=_schema.COLUMN[col].nullable):
            raise BadRow(f"column {col} must be an integer, got {cells.get(col)!r}")
    for col in _FLOAT:
        v = cells.get(col)
        if not _is(v, (int, float)) or (v is not None and not math.isfinite(v)):
            raise BadRow(f"column {col} must be a finite number or empty, got {v!r}")
    for col in _BOOL:  # absent in rows of versions before the column
        if cells.get(col) is not None and not isinstance(cells[col], bool):
            raise BadRow(f"column {col} must be true, false or empty, got {cells[col]!r}")
    if cells["status"] == "ok":
        if not _finite_nonneg(cells.get("loss")):
            raise BadRow(f"an ok row needs a finite loss >= 0, got {cells.get('loss')!r}")
        if cells.get("loss_se") is not None and not _finite_nonneg(cells["loss_se"]):
            raise BadRow(f"loss_se must be finite and >= 0, got {cells['loss_se']!r}")
        if cells["n_eval"] < 1:
            raise BadRow(f"an ok row needs n_eval >= 1, got {cells['n_eval']!r}")
    if isinstance(cells.get("params"), str):
        try:
            _json_cell(cells["params"])
        except BadRow:
            raise BadRow("column params is not JSON (or nested absurdly deep)") from None
    try:
        expected = _schema.key_of_row(cells)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild the unit is a bad row
        raise BadRow(f"its columns do not describe a work unit ({type(exc).__name__}: {exc})") from None
    if expected != key:
        raise BadRow(f"the key of its contents is {expected}, not its file name")


class ResultsStore:
    """A results directory. ``ResultsStore(path)`` creates it when absent or empty, else checks its marker."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        self.rows_dir = self.path / ROWS_DIR
        marker = self.path / MARKER
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"results store {self.path}: exists and is not a directory")
        self.locks_dir = self.path / LOCKS_DIR
        if marker.is_file():
            self._check_marker(marker)
        elif self._foreign():
            raise self._not_a_store()
        elif not create:
            raise StoreError(f"results store {self.path}: no such results store (no {MARKER})")
        else:
            self._create(marker)
        if create:
            self.rows_dir.mkdir(exist_ok=True)
            self.locks_dir.mkdir(exist_ok=True)

    def _foreign(self) -> bool:
        """The directory holds something that is not a store's own (a store being created holds only
        its creation lock and temporary files)."""
        if not self.path.is_dir():
            return False
        return any(not (f.name == CREATE_LOCK or f.name.startswith(".tmp-")) for f in self.path.iterdir())

    def _not_a_store(self) -> StoreError:
        return StoreError(f"results store {self.path}: not a decoderbench results store (the directory is not "
                          f"empty and has no {MARKER}); refusing to write there, choose another --out")

    # -- marker ---------------------------------------------------------------------------------

    def _check_marker(self, marker: Path) -> None:
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise StoreError(f"results store {self.path}: {MARKER} is unreadable; not a decoderbench results "
                             "store, refusing to use it") from None
        if not isinstance(meta, dict) or meta.get("store") != "decoderbench":
            raise StoreError(f"results store {self.path}: {MARKER} does not identify a decoderbench results store; "
                             "refusing to use it")
        if meta.get("format_version") != STORE_FORMAT:
            raise StoreError(f"results store {self.path}: format version {meta.get('format_version')!r}, this "
                             f"decoderbench ({__version__}) reads version {STORE_FORMAT}; refusing to use it "
                             "(choose another --out, or use the decoderbench that wrote it)")
        self.meta = meta

    def _create(self, marker: Path) -> None:
        from filelock import FileLock

        self.path.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path / CREATE_LOCK)):  # two runs creating one store: one writes the marker
            if marker.is_file():
                self._check_marker(marker)
                return
            if self._foreign():
                raise self._not_a_store()
            self.meta = {"store": "decoderbench", "format_version": STORE_FORMAT,
                         "created_by": f"decoderbench {__version__}",
                         "layout": f"{ROWS_DIR}/<key>.parquet, one row each; {LOCKS_DIR}/<key>.lock, claims"}
            _atomic_write_bytes(marker, (json.dumps(self.meta, indent=2, sort_keys=True) + "\n").encode())
            self.rows_dir.mkdir(exist_ok=True)

    # -- rows -----------------------------------------------------------------------------------

    def row_path(self, key: str) -> Path:
        if not _is_key(key):
            raise ValueError(f"key must be alphanumeric, got {key!r}")
        return self.rows_dir / f"{key}.parquet"

    def write(self, row: dict) -> Path:
        """Store one finished row under ``row['key']``, atomically (replacing an older row of that key)."""
        path = self.row_path(row["key"])
        sink = pa.BufferOutputStream()
        pq.write_table(row_table(row), sink, compression="zstd")
        _atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return path

    def read(self, key: str) -> dict | None:
        """The stored row of ``key`` (params parsed back to a dict), or None if absent or invalid."""
        row, _ = self.read_checked(key)
        return row

    def read_checked(self, key: str) -> tuple[dict | None, str | None]:
        """``(row, None)``, ``(None, None)`` when absent, ``(None, reason)`` when the file fails validation."""
        path = self.row_path(key)
        try:
            rows = _read_row_file(path)
            if len(rows) != 1:
                return None, f"holds {len(rows)} rows, not one"
            check_row(rows[0], key)
            return _from_stored(rows[0]), None
        except FileNotFoundError:
            return None, None
        except BadRow as exc:
            return None, str(exc)

    def read_raw(self, key: str) -> dict | None:
        """The stored cells of ``key`` without validation (for ``verify`` to recompute a bad row), or None."""
        try:
            rows = _read_row_file(self.row_path(key))
        except (OSError, BadRow):
            return None
        if len(rows) != 1:
            return None
        try:
            return _from_stored(rows[0])
        except BadRow:
            return rows[0]

    def done(self, key: str) -> dict | None:
        """The stored row of ``key`` if it is valid and done (status ok or skipped), else None."""
        row = self.read(key)
        return row if row is not None and row.get("status") in DONE_STATUSES else None

    def problems(self) -> dict[str, str]:
        """Every row file that fails validation: {file name: why}."""
        out = {}
        for k in self.keys():
            _, why = self.read_checked(k)
            if why is not None:
                out[f"{ROWS_DIR}/{k}.parquet"] = why
        if self.rows_dir.is_dir():  # entries that cannot be rows at all: a bad name, not a regular file
            for f in self.rows_dir.iterdir():
                if f.name.startswith("."):
                    continue
                if not _is_key(f.name[:-8] if f.name.endswith(".parquet") else ""):
                    out[f"{ROWS_DIR}/{f.name}"[:200]] = ("not a row file (rows are <key>.parquet, the key "
                                                        "alphanumeric with - and _)")
                elif not _is_regular(f):
                    try:
                        _read_row_file(f)
                    except (OSError, BadRow) as exc:
                        out[f"{ROWS_DIR}/{f.name}"] = str(exc)
        return out

    # -- claims ---------------------------------------------------------------------------------

    def claim(self, key: str, wait: bool = False):
        """An exclusive claim on ``key`` (a held filelock, to ``release()``), or None if another process
        holds it and ``wait`` is false."""
        from filelock import FileLock, Timeout

        self.row_path(key)  # validates the key
        self.locks_dir.mkdir(exist_ok=True)
        path = self.locks_dir / f"{key}.lock"
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise StoreError(f"results store {self.path}: {LOCKS_DIR}/{key}.lock is not a lock file (a directory, "
                             "link or special file); delete it and run again")
        lock = FileLock(str(path), thread_local=False)
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return None
        except OSError as exc:
            raise StoreError(f"results store {self.path}: cannot claim {LOCKS_DIR}/{key}.lock "
                             f"({type(exc).__name__}: {exc})") from None
        return lock

    def keys(self) -> list[str]:
        if not self.rows_dir.is_dir():
            return []
        return sorted(f.name[:-8] for f in self.rows_dir.iterdir()
                      if f.name.endswith(".parquet") and not f.name.startswith(".") and _is_key(f.name[:-8])
                      and _is_regular(f))

    def rows(self, strict: bool = True) -> list[dict]:
        """Every stored row, sorted by key (deterministic). ``strict``: refuse (``StoreError`` naming the
        files) a store with any row file that fails validation; otherwise skip those."""
        out, bad = [], {}
        for k in self.keys():
            row, why = self.read_checked(k)
            if row is not None:
                out.append(row)
            elif why is not None:
                bad[f"{ROWS_DIR}/{k}.parquet"] = why
        if strict and bad:
            raise StoreError(bad_rows_message(self.path, bad))
        return out

    def clean_temporaries(self) -> int:
        """Remove temporary files left by a killed writer whose process is gone; return how many."""
        n = 0
        if not self.rows_dir.is_dir():
            return 0
        for f in self.rows_dir.iterdir():
            if not f.name.startswith(".tmp-"):
                continue
            try:
                pid = int(f.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and _pid_alive(pid):
                continue
            try:
                f.unlink()
                n += 1
            except OSError:
                pass
        return n


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _is_key(key: str) -> bool:
    return bool(key) and len(key) <= 200 and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)


def bad_rows_message(path, bad: dict) -> str:
    """One line naming the row files that fail validation (the first few with their reasons)."""
    items = sorted(bad.items())
    shown = "; ".join(f"{name}: {why}" for name, why in items[:3])
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return (f"results store {path}: {len(items)} row file(s) fail validation, refusing to read the store: "
            f"{shown}{more}. Re-run the command that made them (`decoderbench run` recomputes its own rows) "
            "or delete those files")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp = path.parent / f".tmp-{os.getpid()}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - e.g. file systems without directory fsync
        pass
