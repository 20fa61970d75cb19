"""The results store: one small parquet file per result row, written atomically.

Layout of a store directory (``results/`` by default)::

    decoderbench-store.json      marker: {"store": "decoderbench", "format_version": 1, ...}
    rows/<key>.parquet           one row per (cell, encoder, decoder, seed, ...) key

``key`` is ``WorkUnit.key(decoder_version)``: a hash of everything that determines the row's numbers
(cell, encoder, decoder and its version, seed, resolved device, dtype, sampling target, options).
A row is written the moment it is finished: to a temporary file in ``rows/``, flushed and fsynced,
then renamed over ``rows/<key>.parquet`` (``os.replace`` is atomic), so a run killed at any point, even
by SIGKILL, loses at most the rows in flight and never leaves a partial row behind. Leftover
temporary files (names starting with ``.``) are ignored by readers and removed by the next writer.

A row whose ``status`` is ``error`` is stored (so the failure is on record) but does not count as
done: the next run computes it again and replaces it. ``ok`` and ``skipped`` rows are done.

A directory that is not empty and has no marker, or whose marker has another ``format_version``, is
refused (``ValueError``, exit 2 from the CLI), never written into.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import BadInput

MARKER = "decoderbench-store.json"
STORE_FORMAT = 1  # bump when the layout or the column meanings change
ROWS_DIR = "rows"
DONE_STATUSES = ("ok", "skipped")

# Columns with a fixed type, so that every row file has the same schema whatever is None in it.
_FLOAT = ("p", "r", "target_rel_se", "loss", "loss_se", "ratio_e2", "ratio_mmse", "fit_time_s", "eval_time_s",
          "wall_time_s", "sigma", "trivial", "linear", "mmse_elementwise", "e2_bound", "relu_theory", "vamp_se",
          "amp_se", "predicted", "ratio_predicted")
_INT = ("n_s", "n_d", "seed", "n_eval", "min_samples", "max_samples", "results_format", "store_format")
_JSON = ("params",)  # dicts, stored as JSON strings and parsed back on reading


def _arrow_type(name: str, value):
    if name in _FLOAT:
        return pa.float64()
    if name in _INT:
        return pa.int64()
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


def row_table(row: dict) -> pa.Table:
    """One row as a one-line arrow table, columns in sorted order."""
    names = sorted(row)
    cells = {k: _to_cell(k, row[k]) for k in names}
    schema = pa.schema([pa.field(k, _arrow_type(k, cells[k])) for k in names])
    return pa.Table.from_pylist([cells], schema=schema)


def _from_stored(row: dict) -> dict:
    for k in _JSON:
        if isinstance(row.get(k), str):
            row[k] = json.loads(row[k])
    return row


class StoreError(BadInput):
    """A directory that cannot be used as a results store (bad input: the CLI exits 2)."""


class ResultsStore:
    """A results directory. ``ResultsStore(path)`` creates it when absent or empty, else checks its marker."""

    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        self.rows_dir = self.path / ROWS_DIR
        marker = self.path / MARKER
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"results store {self.path}: exists and is not a directory")
        if marker.is_file():
            self._check_marker(marker)
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise StoreError(f"results store {self.path}: not a decoderbench results store (the directory is not "
                             f"empty and has no {MARKER}); refusing to write there, choose another --out")
        elif not create:
            raise StoreError(f"results store {self.path}: no such results store (no {MARKER})")
        else:
            self._create(marker)
        if create:
            self.rows_dir.mkdir(exist_ok=True)

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
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta = {"store": "decoderbench", "format_version": STORE_FORMAT,
                     "created_by": f"decoderbench {__version__}", "layout": f"{ROWS_DIR}/<key>.parquet, one row each"}
        _atomic_write_bytes(marker, (json.dumps(self.meta, indent=2, sort_keys=True) + "\n").encode())
        self.rows_dir.mkdir(exist_ok=True)

    # -- rows -----------------------------------------------------------------------------------

    def row_path(self, key: str) -> Path:
        if not key or not all(c.isalnum() or c in "-_" for c in key):
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
        """The stored row of ``key`` (params parsed back to a dict), or None."""
        return self._read_path(self.row_path(key))

    def _read_path(self, path: Path) -> dict | None:
        try:
            rows = pq.read_table(path).to_pylist()
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowInvalid) as exc:  # should not happen with atomic writes; recompute it
            warnings.warn(f"results store {self.path}: unreadable row file {path.name} ({exc}); treating it as missing")
            return None
        return _from_stored(rows[0]) if rows else None

    def done(self, key: str) -> dict | None:
        """The stored row of ``key`` if it is done (status ok or skipped), else None."""
        row = self.read(key)
        return row if row is not None and row.get("status") in DONE_STATUSES else None

    def keys(self) -> list[str]:
        if not self.rows_dir.is_dir():
            return []
        return sorted(f.name[:-8] for f in self.rows_dir.iterdir()
                      if f.name.endswith(".parquet") and not f.name.startswith("."))

    def rows(self) -> list[dict]:
        """Every stored row, sorted by key (deterministic)."""
        out = []
        for k in self.keys():
            row = self.read(k)
            if row is not None:
                out.append(row)
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
