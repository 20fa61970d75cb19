"""Score one decoder on one cell: a ``WorkUnit`` in, one result row (a dict) out.

A ``WorkUnit`` is a plain, picklable description of everything that determines a number (cell,
encoder, decoder, seed, device, dtype, sample target, options), so a sweep can fan units out over
processes or machines; ``run_unit`` never raises for a decoder's failure: the row records it.

Scoring (per unit): the decoder is fitted on its own training stream, then scored on fresh
evaluation samples drawn in batches until the standard error of the mean loss falls below
``target_rel_se`` times the mean (at least ``min_samples``, at most ``max_samples`` samples). The loss of
a sample is ``n_s^{-1} ||x - x_hat||^2``; the row holds its mean, standard error, and ratios to the
cell's E.2 bound and elementwise MMSE.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import time
import traceback
from dataclasses import dataclass

import torch

from ..errors import BadInput, Skip
from .._version import __version__
from .._validate import DTYPE_NAMES, SAMPLING_DEFAULTS, nominal_r
from ..model.data import SparseSampler  # noqa: F401
from ..model.evalkey import eval_purpose, eval_sampler
from ..results import rows
from . import scoring
from ..contract.decoder import Cell, CellOnlyEncoder, DecoderContext, TrainingSet, input_encoder, json_safe, prepare_input
from .scoring import Accumulator  # noqa: F401 (re-exported)

from ..results.rows import RESULTS_FORMAT  # noqa: E402,F401 (re-exported; the row schema is its home)
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class WorkUnit:
    """One (cell, encoder, decoder, seed) measurement, fully described by plain values."""

    n_s: int
    n_d: int
    p: float
    decoder: str
    seed: int = 0
    encoder: str = "rug"
    device: str = "cpu"
    dtype: str = "float32"
    target_rel_se: float = SAMPLING_DEFAULTS["target_rel_se"]
    min_samples: int = SAMPLING_DEFAULTS["min_samples"]
    max_samples: int = SAMPLING_DEFAULTS["max_samples"]
    options: str = "{}"  # JSON object of decoder options, sorted keys
    se_floor: float = scoring.SE_FLOOR  # absolute SE floor, as a fraction of the trivial loss p/3

    def __post_init__(self):
        rows.check_unit(self.fields())  # the row schema's check of a unit

    def fields(self) -> dict:
        """The unit's fields, in order (the unit columns of its row: ``rows.UNIT_COLUMNS``)."""
        return {k: getattr(self, k) for k in rows.UNIT_COLUMNS}

    @property
    def cell(self) -> Cell:
        return Cell(self.n_s, self.n_d, self.p)

    def key(self, decoder_version: str = "1", eval_batch: int | None = None, transform_backend: str | None = None,
            eval_stream: str | None = None, results_format: int | None = None) -> str:
        """A hash of everything that determines the row's numbers (``rows.key``): the unit's fields, the decoder's
        version, the results format (default: this version's, ``rows.RESULTS_FORMAT``), the evaluation batch size
        (batchtopk's output depends on it), the Walsh-Hadamard backend this process uses for the unit's device and
        dtype and the evaluation stream (defaults: this process's)."""
        u = self.fields()
        proc = {"eval_batch": eval_batch, "transform_backend": transform_backend, "eval_stream": eval_stream}
        if eval_batch is None or not transform_backend or not eval_stream:
            own = rows.process_key_columns(u)
            proc = {"eval_batch": eval_batch if eval_batch is not None else own["eval_batch"],
                    "transform_backend": transform_backend or own["transform_backend"],
                    "eval_stream": eval_stream or own["eval_stream"]}
        return rows.key(u, decoder_version, results_format=results_format, **proc)

    @classmethod
    def from_row(cls, row: dict) -> "WorkUnit":
        """The unit a stored row measured (its own columns; a field the row lacks takes its default)."""
        return cls(**rows.unit_of_row(row))


def key_of_row(row: dict) -> str:
    """The key a row's own columns give (what the store checks against the row's file name)."""
    return rows.key_of_row(row)


def transform_backend_for(device: str, dtype: str, n_s: int) -> str:
    """The ``decoderbench.fwht`` backend this process uses for (B, n_s) tensors of ``device`` and ``dtype``."""
    from ..model.hadamard import backend_for

    return backend_for(device, dtype, n_s)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is bad input."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise BadInput(f"--device {device}: torch sees no CUDA device; use --device cpu or auto")
        return device
    raise BadInput(f"--device must be auto, cpu or cuda, got {device!r}")


def _theory_columns(cell: Cell) -> dict:
    from ..model.theory import cell_theory

    t = cell_theory(cell.n_s, cell.n_d, cell.p)
    return {k: t[k] for k in ("sigma", "trivial", "linear", "mmse_elementwise", "e2_bound", "relu_theory",
                              "vamp_se", "amp_se") if k in t}


#: Rows of rug cells up to this n_s carry the exact (non-Gaussian) references of their rug; the law costs
#: about 1-3 s per (cell, seed) at the grid spacing used here (1/512: relative error about 1e-4), cached.
EXACT_MAX_NS = 1 << 16
EXACT_M = 512
EXACT_COLUMNS = ("mmse_elementwise_exact", "e2_bound_exact", "relu_theory_exact")


def _exact_columns(unit: WorkUnit) -> dict:
    """The exact elementwise MMSE, E.2 bound and ReLU optimum of the unit's rug (decoderbench.model.exact), or None
    where they are not computed (another encoder, n_s above EXACT_MAX_NS)."""
    if unit.encoder != "rug" or unit.n_s > EXACT_MAX_NS:
        return {k: None for k in EXACT_COLUMNS}
    return dict(_exact_cached(unit.n_s, unit.n_d, float(unit.p), int(unit.seed)))


@functools.lru_cache(maxsize=32)
def _exact_cached(n_s: int, n_d: int, p: float, seed: int) -> tuple:
    from ..model.exact import exact_references

    from ..errors import BadInput

    try:  # a row's columns only where the law is cheap (at most 2^16 grid points: under a second or two)
        e = exact_references(n_s, n_d, p, seed=seed, M=EXACT_M, max_points=1 << 16)
    except BadInput:
        return tuple((k, None) for k in EXACT_COLUMNS)
    return tuple((k, e[k]) for k in EXACT_COLUMNS)


def cell_key(unit: WorkUnit) -> tuple:
    """What the cell columns of a unit's row depend on (:func:`cell_columns`): its encoder, cell and seed."""
    return (unit.encoder, unit.n_s, unit.n_d, float(unit.p), int(unit.seed))


def cell_columns(unit: WorkUnit) -> dict:
    """The columns a unit's row takes from its cell alone: the theory of the cell and the exact references of
    its rug (``_theory_columns``, ``_exact_columns``; cached in this process)."""
    return {**_theory_columns(unit.cell), **_exact_columns(unit)}


#: Cell columns handed to this process by the one that started it (``worker.execute_processes`` computes them
#: once per cell, so that a fresh process per unit does not recompute them: 0.2 s of theory and 0.5 s of exact
#: references per unit at n_s 4096), keyed by :func:`cell_key`.
_HANDED: dict = {}


def hand_cell_columns(unit: WorkUnit, columns: dict) -> None:
    """Give this process the cell columns of ``unit`` (what :func:`cell_columns` returns in another process)."""
    _HANDED[cell_key(unit)] = dict(columns)


def stop_columns(params: dict) -> dict:
    """The row's declared stop columns (``decoder.STOP_COLUMNS``) from what the decoder reported: ``converged``
    a bool or None, ``stop_reason`` a string or None."""
    conv = params.get("converged")
    stop = params.get("stop_reason")
    return {"converged": conv if isinstance(conv, bool) else None,
            "stop_reason": str(stop) if stop not in (None, "") else None}


def start_row(unit: WorkUnit) -> dict:
    """The row of ``unit`` before its decoder runs (``rows.new_row``: status error, no loss), with the cell's
    theory and exact references."""
    cell = unit.cell
    row = rows.new_row(
        decoder=unit.decoder, encoder=unit.encoder, n_s=cell.n_s, n_d=cell.n_d,
        r=nominal_r(cell.n_s, cell.n_d), r_exact=cell.r, p=cell.p,
        seed=unit.seed, device=unit.device, dtype=unit.dtype, target_rel_se=unit.target_rel_se,
        decoderbench_version=__version__, torch_version=torch.__version__,
        python_version=platform.python_version(), options=unit.options,
        threads=torch.get_num_threads())  # torch's intra-op threads while this row ran (not part of the key)
    handed = _HANDED.get(cell_key(unit))
    row.update(handed if handed is not None else cell_columns(unit))
    return row


def error_row(unit: WorkUnit, reg, message: str, status: str = "error") -> dict:
    """The row of a unit whose decoder could not run at all (its worker died, timed out, failed to start):
    the unit's row with ``status`` and ``message``, under the key of the registered decoder ``reg``."""
    t_start = time.perf_counter()
    row = start_row(unit)
    row.update(kind=reg.kind, source=reg.source, decoder_version=reg.version)
    row["key"] = unit.key(reg.version)
    try:
        row["device"] = str(torch.device(resolve_device(unit.device)))
    except Exception:  # noqa: BLE001 - the unit's device as asked, as a run that failed there records it
        pass
    row.update(status=status, error=message)
    return _finish(row, t_start)


def run_unit(unit: WorkUnit, registered=None) -> dict:
    """Fit and score one decoder on one cell; return the result row. Never raises for a plugin's fault."""
    from ..contract import registry as plugins

    t_start = time.perf_counter()
    cell = unit.cell
    row = start_row(unit)
    try:
        reg = registered if registered is not None else plugins.get_decoder(unit.decoder)
    except ValueError as exc:
        row["error"] = plugins.error_for(unit.decoder)
        row["key"] = unit.key("?")
        return _finish(row, t_start)
    row.update(kind=reg.kind, source=reg.source, decoder_version=reg.version)
    row["key"] = unit.key(reg.version)
    try:
        device = torch.device(resolve_device(unit.device))
        row["device"] = str(device)
        dtype = DTYPES[unit.dtype]
        enc_reg = plugins.get_encoder(unit.encoder)
        encoder = enc_reg.cls(cell.n_s, cell.n_d, seed=unit.seed, device=device, dtype=dtype)
        missing = set(reg.cls.requires) - set(encoder.capabilities)
        if missing:
            row["status"] = "skipped"
            row["error"] = (f"{unit.decoder} requires encoder capabilities {sorted(missing)} that "
                            f"encoder {unit.encoder!r} lacks")
            return _finish(row, t_start)
        ctx = DecoderContext(cell=cell, seed=unit.seed, device=device, dtype=dtype,
                             encoder=CellOnlyEncoder(encoder, unit.decoder) if reg.cls.kind == "elementwise" else encoder,
                             options=json.loads(unit.options), decoder_name=unit.decoder)
        dec = reg.cls(ctx)
        input_kind = reg.cls.input_kind()
        t0 = time.perf_counter()
        params = dec.fit(TrainingSet(ctx, input_kind)) or {}
        row["fit_time_s"] = time.perf_counter() - t0
        encoder_in = input_encoder(dec, encoder)  # a learned decoder's own W_in, taken once: decode never sees x

        def make_input(x):  # z, h, or a learned decoder's code from its own W_in: never x itself
            return prepare_input(encoder_in, input_kind, x)
        sampler = eval_sampler(cell, unit.seed, device=device, dtype=dtype)  # keyed: see evalkey.py
        decode = dec.decode
        if reg.cls.kind == "elementwise":  # checked on the first scored batch too, not only on the probe's
            decode = _checked_first_batch(dec.decode, eval_purpose(cell.n_s, cell.p, unit.seed))
        res = scoring.score(decode, make_input, sampler, p=cell.p, target_rel_se=unit.target_rel_se,
                            min_samples=unit.min_samples, max_samples=unit.max_samples,
                            se_floor=unit.se_floor, batch=ctx.eval_batch_size)
        row.update(res)
        acc_mean = res["loss"]
        info = getattr(dec, "info", {}) or {}
        row["params"] = json_safe({**params, **info})
        if row.get("e2_bound"):
            row["ratio_e2"] = acc_mean / row["e2_bound"]
        if row.get("mmse_elementwise"):
            row["ratio_mmse"] = acc_mean / row["mmse_elementwise"]
        row["ratio_mmse_exact"] = acc_mean / row["mmse_elementwise_exact"] if row.get("mmse_elementwise_exact") else None
        # a decoder's own prediction of its loss (e.g. state evolution): measured / predicted
        pred = row["params"].get("predicted")
        if isinstance(pred, (int, float)) and not isinstance(pred, bool):
            row["predicted"] = float(pred)
            row["ratio_predicted"] = acc_mean / pred if pred > 0 else None
        row.update(stop_columns(row["params"]))
        row["status"] = "ok"
    except Skip as exc:  # the decoder declined the unit, with its reason
        row["status"] = "skipped"
        row["error"] = str(exc)
    except Exception as exc:  # a plugin's failure becomes its row
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=-3)
    return _finish(row, t_start)


def _checked_first_batch(decode, secret: str):
    """``decode``, which on its first call also checks that it acts entrywise on that (scored) batch
    (:func:`decoderbench.run.worker.entrywise_on_scored`)."""
    from .worker import entrywise_on_scored

    done = []

    def checked(inp):
        out = decode(inp)
        if not done:
            done.append(True)
            if isinstance(out, torch.Tensor) and out.shape == inp.shape and bool(torch.isfinite(out).all()):
                entrywise_on_scored(decode, inp, out, secret)
        return out

    return checked


def _finish(row: dict, t_start: float) -> dict:
    row["wall_time_s"] = time.perf_counter() - t_start
    row.setdefault("traceback", None)
    return row
