"""The result row's declared schema: its columns, their types, which make its key; the key; the one way a row
is laid out.

A result row is a flat dict, one per (cell, encoder, decoder, seed, ...) unit. :data:`COLUMNS` declares every
column decoderbench writes: its name, its type (``int``, ``float``, ``str``, ``bool`` or ``json``), whether it
is part of the row's key, whether it may be null (or absent, in rows of older versions) and what it means.
The declaration drives:

* the key (:func:`key`, :func:`key_of_row`): a hash of the key columns, each normalised to its declared type
  (``runner.WorkUnit.key`` and ``runner.key_of_row`` delegate here, so every key is what it was);
* the row's layout (:func:`new_row`: the runner's columns in their order with their initial values; error and
  skip rows are such rows with a status and a reason; :func:`with_key_columns`, :func:`stamped`);
* the store's column types and its row check (``store.py``: ``FLOAT``, ``INT``, ``BOOL``, ``JSON`` below).

This module sits low in the import graph: it imports only ``errors`` and ``_validate``. What needs torch
(the process's evaluation batch, Walsh-Hadamard backend, evaluation stream) is handed in by the caller.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .._validate import DTYPE_NAMES, MAX_SAMPLES, SAMPLING_DEFAULTS, SE_FLOOR, check_nd, check_ns, check_p, check_seed
from ..errors import BadInput

#: Bump when the meaning of a stored number changes (2: the absolute SE floor and sampling_stop/precision_met;
#: 3: ``loss``/``loss_se`` are the control-variate estimate, the stopping rule uses it, the plain mean moves to
#: ``loss_mean``/``loss_mean_se``). Part of the key, so a run never reuses a row of an older format; a stored row's
#: key is recomputed with its own ``results_format`` (:func:`key_of_row`), so older rows stay valid and readable.
RESULTS_FORMAT = 3

TYPES = ("int", "float", "str", "bool", "json")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # one of TYPES
    key: bool = False  # part of the row's key
    nullable: bool = True  # may be null, or absent in rows of older versions
    meaning: str = ""
    #: The store gives the column its declared parquet type even when null (so every row file has one schema);
    #: False: typed by its value, as the stores before this declaration wrote it.
    typed: bool = True
    #: Laid out by :func:`new_row` (the runner's row before the decoder runs), with this initial value.
    initial: object = None
    runner: bool = False


def _c(name, type, meaning, key=False, nullable=True, typed=True, runner=False, initial=None):
    assert type in TYPES, type
    return Column(name, type, key=key, nullable=nullable, meaning=meaning, typed=typed, initial=initial,
                  runner=runner)


def _r(name, type, meaning, **kw):  # a column of the runner's row, in its order
    return _c(name, type, meaning, runner=True, **kw)


COLUMNS: tuple[Column, ...] = (
    # -- the runner's row, in the order it lays it out --------------------------------------------------------
    _r("decoder", "str", "the decoder's registered name", key=True, nullable=False),
    _r("kind", "str", "the decoder's kind (elementwise, iterative, ...)"),
    _r("source", "str", "where the decoder comes from (built-in, a plugin's distribution)"),
    _r("decoder_version", "str", "the decoder's version (part of the key; '?' when it did not load)", key=True),
    _r("encoder", "str", "the encoder's name (rug, ...)", key=True, nullable=False),
    _r("n_s", "int", "number of features (a power of two)", key=True, nullable=False),
    _r("n_d", "int", "dense dimensions, 1..n_s-1", key=True, nullable=False),
    _r("r", "float", "nominal n_d / n_s (the shortest decimal that rounds to n_d)"),
    _r("r_exact", "float", "n_d / n_s exactly"),
    _r("p", "float", "probability that a feature is on", key=True, nullable=False),
    _r("seed", "int", "the unit's seed (encoder, training stream, evaluation stream)", key=True, nullable=False),
    _r("device", "str", "the device asked for (the unit's field, part of the key); the resolved one in the row",
       key=True, nullable=False),
    _r("dtype", "str", "the evaluation's floating-point type", key=True, nullable=False),
    _r("target_rel_se", "float", "sampling stops when SE <= this times the mean loss", key=True),
    _r("n_eval", "int", "evaluation samples scored", nullable=False, initial=0),
    _r("loss", "float", "estimated expected loss n_s^-1 ||x - x_hat||^2 (null unless ok; see loss_estimator)"),
    _r("loss_se", "float", "standard error of the loss"),
    _r("loss_mean", "float", "the plain mean of the per-sample losses (loss: the control-variate estimate, see "
       "loss_estimator)"),
    _r("loss_mean_se", "float", "the plain mean's standard error"),
    _r("loss_estimator", "str", "what loss and loss_se are: control_variate (scoring's regression on |supp x| and "
       "|x|^2, whose means the data law fixes) or mean (the plain mean); absent in older rows: mean"),
    _r("sampling_stop", "str", "why sampling stopped (target, floor, max_samples)"),
    _r("precision_met", "bool", "whether the sampling target was met", typed=False),
    _r("se_floor_abs", "float", "the absolute SE floor used"),
    _r("recovered_frac", "float", "fraction of samples recovered"),
    _r("recovered_frac_se", "float", "its standard error"),
    _r("support_precision", "float", "precision of the recovered support"),
    _r("support_recall", "float", "recall of the recovered support"),
    _r("support_f1", "float", "F1 of the recovered support"),
    _r("feature_loss_spread", "float", "spread of the per-feature loss"),
    _r("features_never_firing", "int", "features never on in the scored samples"),
    _r("ratio_e2", "float", "loss / e2_bound"),
    _r("ratio_mmse", "float", "loss / mmse_elementwise"),
    _r("ratio_mmse_exact", "float", "loss / mmse_elementwise_exact"),
    _r("params", "json", "what the decoder reported (fit's return and its info), JSON", initial={}),
    _r("status", "str", "ok, skipped, error or timeout", nullable=False, initial="error"),
    _r("error", "str", "why the row is not ok (an error's message, a skip's reason)"),
    _r("predicted", "float", "the decoder's own prediction of its loss"),
    _r("ratio_predicted", "float", "loss / predicted"),
    _r("converged", "bool", "whether the decoder reported convergence (declared stop column)"),
    _r("stop_reason", "str", "why the decoder stopped (declared stop column)"),
    _r("fit_time_s", "float", "seconds in fit"),
    _r("eval_time_s", "float", "seconds scoring"),
    _r("wall_time_s", "float", "seconds for the whole unit"),
    _r("decoderbench_version", "str", "decoderbench's version"),
    _r("torch_version", "str", "torch's version"),
    _r("python_version", "str", "Python's version"),
    _r("options", "str", "the decoder's options, a JSON object with sorted keys", key=True),
    _r("threads", "int", "torch's intra-op threads while the row ran (not part of the key)"),
    # -- added by the runner after the layout ------------------------------------------------------------------
    _c("sigma", "float", "the cell's noise scale sqrt(v (n_s/n_d - 1))"),
    _c("trivial", "float", "the trivial loss p/3"),
    _c("linear", "float", "the best linear decoder's loss"),
    _c("mmse_elementwise", "float", "elementwise MMSE (Gaussian interference)"),
    _c("e2_bound", "float", "the E.2 bound"),
    _c("relu_theory", "float", "the best ReLU decoder's loss in theory"),
    _c("vamp_se", "float", "VAMP state evolution's loss"),
    _c("amp_se", "float", "AMP state evolution's loss"),
    _c("mmse_elementwise_exact", "float", "exact elementwise MMSE of the unit's rug (small rug cells)"),
    _c("e2_bound_exact", "float", "exact E.2 bound of the unit's rug"),
    _c("relu_theory_exact", "float", "exact ReLU optimum of the unit's rug"),
    _c("key", "str", "the row's key: what its file is named", nullable=False),
    _c("traceback", "str", "the last frames of a decoder's exception"),
    _c("isolated", "bool", "whether the decoder ran in a worker process of its own", typed=False),
    # -- the rest of the unit and of its key --------------------------------------------------------------------
    _c("min_samples", "int", "fewest evaluation samples", key=True),
    _c("max_samples", "int", "most evaluation samples", key=True),
    _c("se_floor", "float", "absolute SE floor, as a fraction of the trivial loss p/3", key=True),
    _c("eval_batch", "int", "samples per evaluation batch (batchtopk's output depends on it)", key=True,
       typed=False),
    _c("transform_backend", "str", "the Walsh-Hadamard backend for the unit's device and dtype", key=True),
    _c("eval_stream", "str", "which evaluation key drew the samples (public, or key-<fingerprint>)", key=True),
    _c("results_format", "int", "the meaning of the stored numbers (RESULTS_FORMAT)", key=True),
    # -- provenance, stamped by the sweep ------------------------------------------------------------------------
    _c("command", "str", "the command line that made the row"),
    _c("grid", "str", "the grid the row belongs to"),
    _c("store_format", "int", "the store's format version"),
    _c("finished_at", "str", "UTC time the row was finished (ISO 8601)"),
    _c("row_hash", "str", "sha256 of every other stored cell"),
)

COLUMN = {c.name: c for c in COLUMNS}
#: The columns a summary shows first (``decoderbench run``'s table, the first columns of ``evaluate``'s frame).
SUMMARY_COLUMNS = ("decoder", "kind", "n_s", "n_d", "p", "seed", "loss", "loss_se", "ratio_e2", "ratio_mmse",
                   "status")
assert set(SUMMARY_COLUMNS) <= set(COLUMN)
assert len(COLUMN) == len(COLUMNS)

#: The fields of a unit (``runner.WorkUnit``), in its order, with their defaults (None: required).
UNIT_DEFAULTS = {"n_s": None, "n_d": None, "p": None, "decoder": None, "seed": 0, "encoder": "rug", "device": "cpu",
                 "dtype": "float32", "target_rel_se": SAMPLING_DEFAULTS["target_rel_se"],
                 "min_samples": SAMPLING_DEFAULTS["min_samples"], "max_samples": SAMPLING_DEFAULTS["max_samples"],
                 "options": "{}", "se_floor": SE_FLOOR}
UNIT_COLUMNS = tuple(UNIT_DEFAULTS)
#: The key columns that are not the unit's fields: the decoder's version, the results format, and what this
#: process scores with (evaluation batch, Walsh-Hadamard backend, evaluation stream).
PROCESS_KEY_COLUMNS = ("eval_batch", "transform_backend", "eval_stream")
KEY_COLUMNS = UNIT_COLUMNS + ("decoder_version", "results_format") + PROCESS_KEY_COLUMNS
assert set(KEY_COLUMNS) == {c.name for c in COLUMNS if c.key}

# the store's column types (typed even when null)
FLOAT = tuple(c.name for c in COLUMNS if c.type == "float" and c.typed)
INT = tuple(c.name for c in COLUMNS if c.type == "int" and c.typed)
BOOL = tuple(c.name for c in COLUMNS if c.type == "bool" and c.typed)
JSON = tuple(c.name for c in COLUMNS if c.type == "json")
STR_REQUIRED = tuple(c.name for c in COLUMNS if c.type == "str" and not c.nullable)

STATUSES = ("ok", "skipped", "error", "timeout")
DONE_STATUSES = ("ok", "skipped")


# ----------------------------------------------------------------------------- the unit and the key


def check_unit(u) -> None:
    """Raise BadInput unless the unit fields ``u`` (a mapping) describe a unit (``runner.WorkUnit`` checks this)."""
    check_nd(u["n_d"], check_ns(u["n_s"]))  # the cell
    check_p(u["p"])
    check_seed(u["seed"])
    if u["dtype"] not in DTYPE_NAMES:
        raise BadInput(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {u['dtype']!r}")
    if not (0 < u["target_rel_se"] < 1):
        raise BadInput(f"target_rel_se must be in (0, 1), got {u['target_rel_se']!r}")
    se_floor = u["se_floor"]
    if not (isinstance(se_floor, (int, float)) and 0 <= se_floor < 1):
        raise BadInput(f"se_floor must be a number in [0, 1), got {se_floor!r}")
    if not (isinstance(u["max_samples"], int) and u["max_samples"] <= MAX_SAMPLES):
        raise BadInput(f"max_samples must be an integer of at most 2^40, got {u['max_samples']!r}")
    if not (1 <= u["min_samples"] <= u["max_samples"]):
        raise BadInput("min_samples must be >= 1 and <= max_samples, "
                       f"got min_samples={u['min_samples']}, max_samples={u['max_samples']}")


def unit_of_row(row: dict) -> dict:
    """The unit fields a row measured (its own columns; a field the row lacks, or holds null, takes its default),
    checked (BadInput); KeyError naming the required columns it lacks."""
    missing = [k for k, d in UNIT_DEFAULTS.items() if d is None and k not in row]
    if missing:
        raise KeyError(", ".join(missing))
    u = {k: (row[k] if row.get(k) is not None else d) for k, d in UNIT_DEFAULTS.items()}
    if any(u[k] is None for k in UNIT_COLUMNS):  # a required column held null
        raise TypeError("a unit needs n_s, n_d, p and decoder")
    check_unit(u)
    return u


def _typed(name: str, v):
    t = COLUMN[name].type
    if t == "float":
        return float(v)
    if t == "int":
        return int(v)
    return v


def key(unit: dict, decoder_version: str, eval_batch: int, transform_backend: str, eval_stream: str,
        results_format: int | None = None) -> str:
    """The row's key: a hash of its key columns (the unit's fields, each normalised to its declared type so that
    0 and 0.0 are one unit, the decoder's version, the results format (default :data:`RESULTS_FORMAT`, this
    version's), the evaluation batch, the Walsh-Hadamard backend and the evaluation stream)."""
    d = {k: _typed(k, unit[k]) for k in UNIT_COLUMNS}
    d["decoder_version"] = str(decoder_version)
    d["results_format"] = RESULTS_FORMAT if results_format is None else int(results_format)
    d["eval_batch"] = int(eval_batch)
    d["transform_backend"] = str(transform_backend)
    d["eval_stream"] = str(eval_stream)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


def process_key_columns(unit: dict) -> dict:
    """The key columns this process gives a unit (its fields, a mapping): the evaluation batch it is scored in
    (on its device), the Walsh-Hadamard backend for its device and dtype, the evaluation stream
    (:data:`PROCESS_KEY_COLUMNS`)."""
    from ..model.evalkey import eval_batch_size, eval_stream_id
    from ..model.hadamard import backend_for

    return {"eval_batch": eval_batch_size(unit["n_s"], unit["device"]),
            "transform_backend": backend_for(unit["device"], unit["dtype"], unit["n_s"]),
            "eval_stream": eval_stream_id()}


def key_of_row(row: dict, process_defaults=process_key_columns) -> str:
    """The key a row's own columns give (what the store checks against the row's file name), with the row's own
    ``results_format`` (:data:`RESULTS_FORMAT` where it has none): a row of an older format keeps its key, which a
    unit of this version never has. A process key column the row lacks (:data:`PROCESS_KEY_COLUMNS`) is
    ``process_defaults(unit)[name]``: this process's (:func:`process_key_columns`)."""
    u = unit_of_row(row)
    eb, tb, es = row.get("eval_batch"), row.get("transform_backend"), row.get("eval_stream")
    if eb is None or not tb or not es:
        if process_defaults is None:
            raise KeyError("the row lacks a process key column (eval_batch, transform_backend, eval_stream)")
        fill = process_defaults(u)
        eb = eb if eb is not None else fill["eval_batch"]
        tb, es = tb or fill["transform_backend"], es or fill["eval_stream"]
    extra = {"eval_batch": eb, "transform_backend": tb, "eval_stream": es}
    return key(u, row.get("decoder_version") or "?", results_format=row.get("results_format"), **extra)


# ----------------------------------------------------------------------------- the row's layout


def new_row(**values) -> dict:
    """A row laid out as the runner lays it out (its columns, in its order, with their initial values), with
    ``values`` set. Error and skip rows are such rows with a ``status`` and an ``error``."""
    row = {c.name: (dict(c.initial) if isinstance(c.initial, dict) else c.initial) for c in COLUMNS if c.runner}
    unknown = set(values) - set(COLUMN)
    if unknown:
        raise KeyError(f"not declared row columns: {', '.join(sorted(unknown))}")
    row.update(values)
    return row


def with_key_columns(row: dict, unit: dict, process: dict) -> dict:
    """``row`` with every column its key is made of, where it lacks them: the unit's fields (``unit``, in its
    order) and the process key columns (``process``: eval_batch, transform_backend, eval_stream)."""
    for k in UNIT_COLUMNS:
        row.setdefault(k, unit[k])
    for k in PROCESS_KEY_COLUMNS:
        row.setdefault(k, process[k])
    return row


def stamped(row: dict, unit: dict, process: dict, provenance: dict, defaults: dict) -> dict:
    """A stored row: a copy of ``row`` with its key columns, the ``provenance`` columns set (command, grid,
    formats, finish time) and ``defaults`` where the row lacks them."""
    row = with_key_columns(dict(row), unit, process)  # (min_samples and max_samples among the unit's fields)
    row.update(provenance)
    for k, v in defaults.items():
        row.setdefault(k, v)
    return row
