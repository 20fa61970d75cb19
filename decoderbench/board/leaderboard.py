"""Leaderboards: Markdown tables made from result rows (pure functions; the CLI does the I/O).

Files, each table with a header naming the command, the versions and the rows that made it:

* ``cells.md``: per cell, the decoders ranked by loss (mean over seeds) with its error, their ratio to
  the cell's appendix E.2 bound and to the elementwise MMSE; then the cell's rows that are ranked
  nowhere (see below) and the rows that failed.
* ``summary.md``: across cells, each decoder's median and worst ratio to the E.2 bound, **per regime**
  (the cells where the VAMP state evolution predicts exact recovery, and the others: a median over
  both would sit between 1e-10 and 3 and describe neither); per cell, the spread (max loss / min loss)
  among the decoders that see only ``z = W_out h`` (kinds elementwise, filtering, reference) against
  the best iterative and learned decoders, with the caption's numbers measured from those rows.
* ``rows.json`` (written by the CLI beside them): the rows the tables were made from; the header
  gives their count and digest, and the figures carry the same digest.

**Ranked nowhere.** A row is kept out of every ranking, median, "best" column and figure main
series, and listed in its own section with its stop reason and samples, when (:func:`row_flags`)

* it stopped on a cap before its stopping rule judged it: its ``stop_reason`` column (the decoder contract's,
  ``decoder.STOP_COLUMNS``; ``params.stop_reason`` in rows made before it) is ``time_cap`` or ``step_cap``
  (the trained model), or ``diverged``;
* some of its samples hit the iteration cap of an iterative decoder (``converged`` False on ``max_iter``, with
  the counts from ``params.stop_reasons`` where the decoder gives them; a ``converged`` True row hit no cap)
  **and** the row had not reached its plateau (:func:`at_plateau`): its loss is more than
  ``PLATEAU_SE`` standard errors (and ``PLATEAU_REL``) away from its own state-evolution prediction, or the
  decoder reported ``params.plateau = false`` (not flat over its last iterations). A capped row at its
  plateau, or one whose plateau cannot be judged, is a result: it is ranked and marked ``capped``. So a
  decoder that reports its caps honestly is placed no worse than one that reports nothing (an iterative
  row that reports none of ``converged``, ``stop_reason``, ``stop_reasons`` is ranked too, marked ``stop not
  reported``);
* its loss is above the trivial loss ``p/3`` (the loss of ``x_hat = 0``): worse than outputting nothing;
* it missed its precision target: ``precision_met`` is False, or, in rows that lack that column,
  ``loss_se > target_rel_se * loss`` while above the absolute floor ``1e-9 p / 3`` of the sampler.

**Errors.** A decoder's entry pools its ranked rows over seeds (rugs). With two seeds or more the
error shown is the standard error of the mean *between seeds*, ``sd / sqrt(n)``, which holds the
variation between rugs as well as sampling, with the pooled sampling error ``sqrt(sum se^2) / n`` beside
it; a one-seed entry shows its sampling error and says so.

**Exact recovery**: a loss below ``EXACT_REL`` times the trivial loss ``p/3`` (float32 working
precision); tables print such ratios as they are and count them, figures draw them in a marked band.

Given the same rows the output is byte-identical: rows are deduplicated and sorted deterministically,
and nothing machine- or time-dependent is printed.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict

from .._version import __version__
from .._validate import nominal_r
from ..model.data import trivial_loss
from ..contract.decoder import CAP_STOP_REASONS, INPUT_OF_KIND, KINDS

KIND_ORDER = KINDS  # the contract's kinds, in the board's order
Z_KINDS = tuple(k for k in KINDS if INPUT_OF_KIND[k] == "z")  # decoders that see only z = W_out h
IDENTITY = ("encoder", "dtype", "n_s", "n_d", "p", "seed", "decoder")
CELL = ("encoder", "dtype", "n_s", "n_d", "p")
ROWS_FILE = "rows.json"
EXACT_REL = 1e-6  # loss <= EXACT_REL * trivial loss: exact recovery to working precision
CAP_STOPS = CAP_STOP_REASONS  # the contract's (decoder.py): stopped before the stopping rule judged the row
#: Kinds of decoder that see h: the per-cell table shows their fraction of samples recovered (``recovered_frac``).
RECOVERY_KINDS = ("iterative", "learned")
PLATEAU_SE = 3.0  # within this many standard errors (or PLATEAU_REL) of its state evolution: at its plateau
PLATEAU_REL = 0.05
REGIMES = ("recovery", "other")
REGIME_TEXT = {"recovery": "cells where the VAMP state evolution predicts exact recovery",
               "other": "cells where the VAMP state evolution predicts no exact recovery"}


# ----------------------------------------------------------------------------- selecting rows


def select_rows(rows: list[dict], cells=None, seeds=None, encoder=None, dtype=None, decoders=None) -> list[dict]:
    """Rows of the given cells/seeds/encoder/dtype/decoders (None: any), one per identity.

    Identity: (encoder, dtype, n_s, n_d, p, seed, decoder). When the store holds several rows of one
    identity (another decoder version, device or sampling target) the latest finished one is used.
    """
    cellset = None if cells is None else {(int(n), int(d), float(p)) for n, d, p in cells}
    best: dict = {}
    for row in rows:
        if cellset is not None and (int(row["n_s"]), int(row["n_d"]), float(row["p"])) not in cellset:
            continue
        if seeds is not None and int(row["seed"]) not in seeds:
            continue
        if encoder is not None and row.get("encoder") != encoder:
            continue
        if dtype is not None and row.get("dtype") != dtype:
            continue
        if decoders is not None and row.get("decoder") not in decoders:
            continue
        ident = tuple(row.get(k) for k in IDENTITY)
        order = (row.get("finished_at") or "", row.get("key") or "")
        if ident not in best or order > best[ident][0]:
            best[ident] = (order, row)
    return [best[k][1] for k in sorted(best, key=_ident_sort)]


def _ident_sort(ident):
    return tuple("" if v is None else (f"{v:020.10f}" if isinstance(v, (int, float)) else str(v)) for v in ident)


# ----------------------------------------------------------------------------- judging rows


def params_of(row: dict) -> dict:
    params = row.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            params = {}
    return params if isinstance(params, dict) else {}


def _num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def stop_reason(row: dict):
    """The row's stop reason: its ``stop_reason`` column (declared by the decoder contract, ``decoder.STOP_COLUMNS``);
    rows made before that column fall back to ``params.stop_reason``."""
    if row.get("stop_reason") not in (None, ""):
        return row["stop_reason"]
    return params_of(row).get("stop_reason")


def converged(row: dict) -> bool | None:
    """The row's ``converged`` column (True, False, or None: not reported, or a row made before the column)."""
    c = row.get("converged")
    return c if isinstance(c, bool) else None


def iteration_cap_hits(row: dict) -> tuple[int, int]:
    """(samples that hit the iteration cap, samples counted). A row whose ``converged`` column is True hit no cap;
    otherwise the counts come from ``params.stop_reasons`` when the decoder gives them (how rows made before the
    column are read); a row reported ``converged = False`` on ``max_iter`` without counts is ``(1, 1)``."""
    if converged(row) is True:
        return 0, 0
    reasons = params_of(row).get("stop_reasons")
    if not isinstance(reasons, dict):
        if converged(row) is False and stop_reason(row) == "max_iter":
            return 1, 1
        return 0, 0
    counts = {k: int(v) for k, v in reasons.items() if _num(v) is not None}
    return counts.get("max_iter", 0), sum(counts.values())


def precision_missed(row: dict) -> bool | None:
    """True when the row missed its precision target; None when it cannot be told (no target)."""
    met = row.get("precision_met")
    if isinstance(met, bool):
        return not met
    # rows without the column (made by hand, or by a version before it): judged from the SE and the target
    loss, se, target = _num(row.get("loss")), _num(row.get("loss_se")), _num(row.get("target_rel_se"))
    if loss is None or se is None or target is None:
        return None
    floor = 1e-9 * float(row.get("p") or 0.0) / 3.0  # the sampler's absolute floor (exact recoveries)
    return se > target * loss and se > floor


def at_plateau(row: dict) -> bool | None:
    """Whether a row sits at its plateau: within ``PLATEAU_SE`` SE (or ``PLATEAU_REL``) of its own
    state-evolution prediction (``predicted``), else the decoder's own ``params.plateau`` (flat over its
    last iterations); None when neither is known."""
    loss, se, pred = _num(row.get("loss")), _num(row.get("loss_se")) or 0.0, _num(row.get("predicted"))
    if loss is not None and pred is not None:
        tol = max(PLATEAU_SE * se, PLATEAU_REL * max(loss, pred), EXACT_REL * float(row.get("p") or 0.0) / 3.0)
        return abs(loss - pred) <= tol
    flat = params_of(row).get("plateau")
    return flat if isinstance(flat, bool) else None


def capped_mark(row: dict) -> str:
    """The mark of a ranked iterative row that hit its cap (``capped ...``) or reports no stop reason."""
    hits, counted = iteration_cap_hits(row)
    if hits:
        state = at_plateau(row)
        return f"capped on {hits}/{counted} samples, " + ("at its plateau" if state else "plateau unknown")
    if row.get("kind") == "iterative" and not isinstance(params_of(row).get("stop_reasons"), dict) \
            and converged(row) is None and stop_reason(row) in (None, ""):
        return "stop not reported"
    return ""


def row_flags(row: dict) -> list[str]:
    """Why an ok row is ranked nowhere (empty: it is ranked). One short phrase per reason."""
    if row.get("status") != "ok" or row.get("loss") is None:
        return []
    params = params_of(row)
    out = []
    stop = stop_reason(row)
    if stop in CAP_STOPS:
        steps = params.get("steps")
        out.append(f"stopped on {stop}" + (f" after {steps} steps" if _num(steps) is not None else ""))
    hits, counted = iteration_cap_hits(row)
    if hits and at_plateau(row) is False:
        cap = params.get("max_iter")
        out.append(f"{hits} of {counted} samples hit the iteration cap" + (f" ({cap})" if cap is not None else "")
                   + ", not at its plateau")
    loss, p = _num(row.get("loss")), _num(row.get("p"))
    if loss is not None and p is not None and loss > trivial_loss(p):
        out.append(f"worse than trivial: loss {fmt(loss, 3)} > p/3 = {fmt(trivial_loss(p), 3)} (the loss of x_hat = 0)")
    if precision_missed(row):
        loss, se, target = row.get("loss"), row.get("loss_se"), row.get("target_rel_se")
        rel = f"SE {100 * se / loss:.2g}% of loss" if loss else "SE"
        tgt = f", target {100 * target:.2g}%" if _num(target) is not None else ""
        out.append(f"imprecise: {rel}{tgt}")
    return out


def plateau_note(row: dict) -> str:
    """Whether an iteration-capped row had reached its plateau: its loss against its own state evolution."""
    if not iteration_cap_hits(row)[0]:
        return ""
    loss, se, pred = _num(row.get("loss")), _num(row.get("loss_se")) or 0.0, _num(row.get("predicted"))
    state = at_plateau(row)
    what = {True: "at its plateau", False: "not at its plateau", None: "plateau unknown"}[state]
    if loss is None or pred is None:
        return what + (" (flat over its last iterations, as the decoder reports)" if state is not None
                       else " (no state-evolution prediction in the row)")
    diff = abs(loss - pred)
    n_se = f"{diff / se:.2g} SE" if se > 0 else "no SE"
    return f"{what}: loss / state evolution {fmt(loss / pred, 3) if pred > 0 else '-'} ({n_se} away)"


def stop_text(row: dict) -> str:
    """The row's stop reason(s) as a short text: ``time_cap``, ``max_iter 19, converged 8, ...``."""
    params = params_of(row)
    reasons = params.get("stop_reasons")
    if isinstance(reasons, dict) and reasons:
        return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-int(kv[1]), kv[0])))
    stop = stop_reason(row)
    return str(stop) if stop not in (None, "") else ""


def sampling_text(row: dict) -> str:
    stop = row.get("sampling_stop")
    return f"{row.get('n_eval')}" + (f" ({stop})" if stop else "")


def is_exact(loss, trivial) -> bool:
    return loss is not None and trivial is not None and trivial > 0 and loss <= EXACT_REL * trivial


def cell_regime(theory: dict) -> str:
    """``recovery`` where the VAMP state evolution predicts exact recovery, else ``other``."""
    se, triv = _num(theory.get("vamp_se")), _num(theory.get("trivial"))
    return "recovery" if se is not None and triv and se <= EXACT_REL * triv else "other"


# ----------------------------------------------------------------------------- aggregating


def aggregate(rows: list[dict]) -> dict:
    """{cell: {"theory", "regime", "scored": [entry...] ranked by loss, "unconverged": [...], "failed": [...]}}.

    An entry pools a decoder's ranked rows over seeds: loss is their mean; ``loss_se`` the error shown
    (between-seed standard error of the mean with two seeds or more, else the sampling error);
    ``sampling_se`` = sqrt(sum se^2) / n; ``seed_sd`` the standard deviation between seeds (None for one).
    """
    by_cell: dict = defaultdict(lambda: defaultdict(list))
    theory: dict = {}
    for row in rows:
        cell = tuple(row.get(k) for k in CELL)
        by_cell[cell][row["decoder"]].append(row)
        theory.setdefault(cell, {k: row.get(k) for k in ("r", "sigma", "trivial", "linear", "mmse_elementwise",
                                                          "e2_bound", "relu_theory", "vamp_se", "amp_se")})
    out = {}
    for cell in sorted(by_cell, key=_ident_sort):
        t = theory[cell]
        scored, unconverged, failed = [], [], []
        for name in sorted(by_cell[cell]):
            rs = sorted(by_cell[cell][name], key=lambda r: int(r.get("seed") or 0))
            ok = [r for r in rs if r.get("status") == "ok" and r.get("loss") is not None]
            kind = next((r.get("kind") for r in rs if r.get("kind")), None) or "?"
            clean = [r for r in ok if not row_flags(r)]
            for r in ok:
                if r not in clean:
                    unconverged.append({"decoder": name, "kind": kind, "seed": r.get("seed"), "loss": r["loss"],
                                        "loss_se": r.get("loss_se"), "n_eval": r.get("n_eval"),
                                        "samples": sampling_text(r), "target_rel_se": r.get("target_rel_se"),
                                        "stop": stop_text(r), "why": "; ".join(row_flags(r)),
                                        "plateau": plateau_note(r), "key": r.get("key"),
                                        "ratio_e2": r["loss"] / t["e2_bound"] if t.get("e2_bound") else None})
            if clean:
                scored.append(_pool(name, kind, clean, t))
            for r in rs:
                if r.get("status") != "ok":
                    failed.append({"decoder": name, "kind": kind, "seed": r.get("seed"), "status": r.get("status"),
                                   "error": (r.get("error") or "").splitlines()[0] if r.get("error") else ""})
        scored.sort(key=lambda e: (e["loss"], e["decoder"]))
        out[cell] = {"theory": t, "regime": cell_regime(t), "scored": scored, "unconverged": unconverged,
                     "failed": failed}
    return out


def _pool(name: str, kind: str, rows: list[dict], t: dict) -> dict:
    n = len(rows)
    losses = [r["loss"] for r in rows]
    loss = math.fsum(losses) / n
    sampling_se = math.sqrt(math.fsum((r.get("loss_se") or 0.0) ** 2 for r in rows)) / n
    seed_sd = statistics.stdev(losses) if n >= 2 else None
    err = seed_sd / math.sqrt(n) if seed_sd is not None else sampling_se
    e2, mm = t.get("e2_bound"), t.get("mmse_elementwise")
    exact = [r.get("mmse_elementwise_exact") for r in rows]
    mm_exact = math.fsum(exact) / n if all(_num(v) for v in exact) else None  # the rugs' own exact MMSE
    notes = sorted({str(params_of(r)["note"]) for r in rows if params_of(r).get("note")}
                   | {m for m in (capped_mark(r) for r in rows) if m})
    return {"decoder": name, "kind": kind, "loss": loss, "loss_se": err, "sampling_se": sampling_se,
            "seed_sd": seed_sd, "n_seeds": n, "seeds": [r.get("seed") for r in rows],
            "n_eval": sum(int(r.get("n_eval") or 0) for r in rows),
            "ratio_e2": loss / e2 if e2 else None, "ratio_mmse": loss / mm if mm else None,
            "mmse_exact": mm_exact, "ratio_mmse_exact": loss / mm_exact if mm_exact else None,
            "exact": is_exact(loss, t.get("trivial")), "version": _version_label(rows[0]),
            "stop": "; ".join(sorted({s for s in (stop_text(r) for r in rows) if s})), "note": "; ".join(notes),
            "keys": [r.get("key") for r in rows], "recovered": _recovered(kind, rows)}


def _recovered(kind: str, rows: list[dict]):
    """(fraction of samples recovered, its SE) pooled over ``rows`` (weighted by samples), for the decoders
    that see h (kinds iterative and learned); None for the others or rows without the column."""
    if kind not in RECOVERY_KINDS:
        return None
    pairs = [(_num(r.get("recovered_frac")), int(r.get("n_eval") or 0)) for r in rows]
    if not pairs or any(f is None or n <= 0 for f, n in pairs):
        return None
    n = sum(k for _, k in pairs)
    f = math.fsum(fr * k for fr, k in pairs) / n
    return f, math.sqrt(f * (1.0 - f) / n)


def _version_label(row: dict) -> str:
    return f"{row.get('decoder_version') or '?'} ({row.get('source') or '?'})"


# ----------------------------------------------------------------------------- formatting


def fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cell_title(cell: tuple, theory: dict) -> str:
    encoder, dtype, n_s, n_d, p = cell
    extra = "" if (encoder, dtype) == ("rug", "float32") else f", encoder {encoder}, {dtype}"
    return f"n_s = {n_s}, n_d = {n_d} (r = {fmt(nominal_r(n_s, n_d))}), p = {fmt(p)}, p n_s = {fmt(p * n_s, 3)}{extra}"


def cell_id(cell: tuple) -> str:
    """A stable anchor for a cell: ``cell-ns4096-nd1024-p0.045`` (+ encoder/dtype when not the default)."""
    encoder, dtype, n_s, n_d, p = cell
    extra = "" if (encoder, dtype) == ("rug", "float32") else f"-{encoder}-{dtype}"
    return f"cell-ns{n_s}-nd{n_d}-p{fmt(p)}{extra}"


def rows_digest(rows: list[dict]) -> str:
    """A short digest of the rows a board was made from (keys and numbers); tables and figures carry it."""
    items = sorted((str(r.get("key")), r.get("status"), r.get("loss"), r.get("loss_se"), r.get("n_eval"))
                   for r in rows)
    return hashlib.sha256(json.dumps(items, allow_nan=True).encode()).hexdigest()[:16]


def rows_json(rows: list[dict]) -> str:
    """The rows as JSON text, one row per line, sorted by key (tracebacks dropped): ``rows.json``."""
    clean = [{k: v for k, v in r.items() if k != "traceback"} for r in select_rows(rows)]
    clean.sort(key=lambda r: str(r.get("key")))
    lines = [json.dumps(r, sort_keys=True, allow_nan=False, default=str) for r in clean]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def header(title: str, command: str, rows: list[dict]) -> str:
    """The provenance header of a generated file: command, generator version, versions and digest of the rows."""
    dbv = sorted({str(r.get("decoderbench_version")) for r in rows if r.get("decoderbench_version")})
    torchv = sorted({str(r.get("torch_version")) for r in rows if r.get("torch_version")})
    devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
    decs = sorted({f"{r['decoder']} {_version_label(r)}" for r in rows if r.get("status") == "ok"})
    lines = [f"<!-- generated by `{command}` with decoderbench {__version__}; do not edit by hand -->",
             f"# {title}", "",
             f"Made by `{command}` (decoderbench {__version__}) from {len(rows)} result rows "
             f"({ROWS_FILE} beside this file, digest {rows_digest(rows)}) computed with "
             f"decoderbench {', '.join(dbv) or '?'}, torch {', '.join(torchv) or '?'} on {', '.join(devices) or '?'}.",
             f"Decoder versions (version (source)): {'; '.join(decs) or 'none'}."]
    return "\n".join(lines)


def error_text(e: dict) -> str:
    """``loss ± error``: the between-seed SE of the mean with two seeds or more, else the sampling SE."""
    return f"{fmt(e['loss'])} ± {fmt(e['loss_se'], 2)}"


def seeds_text(e: dict) -> str:
    if e["n_seeds"] >= 2:
        return f"{e['n_seeds']}: SD {fmt(e['seed_sd'], 2)}, sampling SE {fmt(e['sampling_se'], 2)}"
    return "1: sampling error only"


def unconverged_table(entries: list[dict], with_cell: bool) -> str:
    head = (["n_s", "r", "p"] if with_cell else []) + ["decoder", "kind", "seed", "loss ± SE", "/ E.2 bound",
                                                      "samples", "stop reason", "why ranked nowhere", "plateau"]
    body = []
    for e in entries:
        cell = [str(e["n_s"]), fmt(e["r"]), fmt(e["p"])] if with_cell else []
        body.append(cell + [e["decoder"], e["kind"], str(e["seed"]), f"{fmt(e['loss'])} ± {fmt(e['loss_se'], 2)}",
                            fmt(e["ratio_e2"], 3), e["samples"], e["stop"] or "-", e["why"], e["plateau"] or "-"])
    return md_table(head, body, ("rrr" if with_cell else "") + "llrrrrlll")


UNCONVERGED_TEXT = ("Rows that stopped on a time or step cap before their stopping rule judged them, whose iterative "
                    "decoder hit its iteration cap on some samples before reaching its plateau, or that missed their "
                    "precision target. They enter no ranking, median, \"best\" column or figure main series. "
                    f"Plateau: the row's loss within {PLATEAU_SE:g} SE (or {100 * PLATEAU_REL:g}%) of its own "
                    "state-evolution prediction (or, without one, flat over its last iterations as the decoder "
                    "reports); a capped row at its plateau is ranked, marked \"capped\".")


def failure_lines(failed: list[dict]) -> list[str]:
    """Failed or skipped rows grouped by status and message (a decoder's own name in its message read as "it"):
    ``skipped (9 rows: trained, trained-topk, ...): it is not trained ...``; one line per group."""
    groups: dict = defaultdict(list)
    for f in failed:
        msg = str(f.get("error") or "").replace(str(f["decoder"]), "it", 1) if f.get("error") else ""
        groups[(str(f["status"]), msg)].append(f)
    out = []
    for (status, msg), fs in sorted(groups.items()):
        names = sorted({str(f["decoder"]) for f in fs})
        seeds = sorted({f.get("seed") for f in fs}, key=str)
        who = (f"{names[0]} (seed {seeds[0]})" if len(fs) == 1 else
               f"{', '.join(names)} ({len(fs)} rows)")
        out.append(f"{who}: {status}" + (f": {msg}" if msg else ""))
    return out


def cells_markdown(agg: dict) -> str:
    parts = []
    for cell, a in agg.items():
        t = a["theory"]
        parts.append(f"## {cell_title(cell, t)}")
        parts.append("")
        parts.append(f"Theory (Gaussian interference, sigma = {fmt(t['sigma'])}): E.2 bound {fmt(t['e2_bound'])}, "
                     f"elementwise MMSE {fmt(t['mmse_elementwise'])}, ReLU theory {fmt(t['relu_theory'])}, "
                     f"VAMP SE {fmt(t['vamp_se'])}, best linear {fmt(t['linear'])}, trivial {fmt(t['trivial'])}. "
                     f"Regime: {REGIME_TEXT[a['regime']]}.")
        parts.append("")
        # (to 9 digits: rows computed by versions of the law's code that differ in the last bits are one value)
        exact_mm = sorted({float(f"{e['mmse_exact']:.9g}") for e in a["scored"] if e.get("mmse_exact")})
        if exact_mm:
            parts[-2] += (f" Exact elementwise MMSE of this rug (no Gaussian assumption; the mean over the seeds' rugs): "
                          f"{fmt(exact_mm[0])}" + (f" to {fmt(exact_mm[-1])}" if len(exact_mm) > 1 else "") +
                          f", {fmt(exact_mm[0] / t['mmse_elementwise'], 3)}x the Gaussian line."
                          if t.get("mmse_elementwise") else "")
        body = [[str(i + 1), e["decoder"], e["kind"], error_text(e), seeds_text(e),
                 fmt(e["ratio_e2"], 3) + (" (exact)" if e["exact"] else ""), fmt(e["ratio_mmse"], 3),
                 fmt(e.get("ratio_mmse_exact"), 3), str(e["n_eval"]),
                 "; ".join(x for x in (e["stop"], e["note"]) if x)]
                for i, e in enumerate(a["scored"])]
        if body:
            # one header for every row: "/ exact MMSE" always ("-" where a row lacks the exact reference),
            # "recovered" where any decoder that sees h was scored (each row its value or "-")
            with_rec = any(e.get("recovered") for e in a["scored"])
            if with_rec:
                for row_, e in zip(body, a["scored"]):
                    rec = e.get("recovered")
                    row_.insert(8, f"{rec[0]:.3f} ± {rec[1]:.2g}" if rec else "-")
            head = ["rank", "decoder", "kind", "loss ± SE", "seeds (error)", "/ E.2 bound", "/ elementwise MMSE",
                    "/ exact MMSE"] + (["recovered"] if with_rec else []) + ["samples", "stop"]
            parts.append(md_table(head, body, "rlllrrrr" + "r" * with_rec + "rl"))
        else:
            parts.append("No decoder ranked on this cell.")
        if a["unconverged"]:
            parts += ["", "Not converged or imprecise on this cell (ranked nowhere):", "",
                      unconverged_table(a["unconverged"], with_cell=False)]
        if a["failed"]:
            parts.append("")
            parts += [f"- {line}" for line in failure_lines(a["failed"])]
        parts.append("")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the summary


def decoder_summary(agg: dict) -> list[dict]:
    """Per decoder: ranked cells, per-regime median and worst ratio to the E.2 bound, exact counts."""
    per_dec: dict = defaultdict(list)
    kinds: dict = {}
    unconv: dict = defaultdict(int)
    for cell, a in agg.items():
        for e in a["scored"]:
            per_dec[e["decoder"]].append((a["regime"], e))
            kinds[e["decoder"]] = e["kind"]
        for u in a["unconverged"]:
            unconv[u["decoder"]] += 1
            kinds.setdefault(u["decoder"], u["kind"])
    n_regime = {g: sum(1 for a in agg.values() if a["regime"] == g) for g in REGIMES}
    out = []
    for name in sorted(kinds):
        d = {"decoder": name, "kind": kinds[name], "cells": len(per_dec[name]), "n_cells": len(agg),
             "unconverged": unconv.get(name, 0)}
        for g in REGIMES:
            es = [e for rg, e in per_dec[name] if rg == g]
            ratios = [e["ratio_e2"] for e in es if e["ratio_e2"] is not None]
            d[g] = {"n": len(es), "of": n_regime[g], "median": statistics.median(ratios) if ratios else None,
                    "worst": max(ratios) if ratios else None, "exact": sum(1 for e in es if e["exact"]),
                    "median_mmse": statistics.median([e["ratio_mmse"] for e in es if e["ratio_mmse"] is not None])
                    if es else None}
        out.append(d)

    def order(d):
        for g in ("other", "recovery"):
            if d[g]["median"] is not None:
                return (0 if g == "other" else 1, d[g]["median"], d["decoder"])
        return (2, math.inf, d["decoder"])

    out.sort(key=order)
    return out


def spread_rows(agg: dict) -> list[dict]:
    """Per cell: best and worst ranked z-decoder, their spread, best ranked iterative and learned decoders."""
    out = []
    for cell, a in agg.items():
        enc, dtype, n_s, n_d, p = cell
        z = [e for e in a["scored"] if e["kind"] in Z_KINDS]
        it = [e for e in a["scored"] if e["kind"] == "iterative"]
        le = [e for e in a["scored"] if e["kind"] == "learned"]
        spread = (z[-1]["loss"] / z[0]["loss"]) if len(z) >= 2 and z[0]["loss"] > 0 else None
        out.append({"cell": cell, "n_s": n_s, "r": nominal_r(n_s, n_d), "p": p, "regime": a["regime"],
                    "e2_bound": a["theory"]["e2_bound"], "best_z": z[0] if z else None, "worst_z": z[-1] if z else None,
                    "spread": spread, "best_iterative": it[0] if it else None, "best_learned": le[0] if le else None,
                    "n_unconverged": len(a["unconverged"])})
    return out


def spread_caption(spreads: list[dict]) -> str:
    """The claim above the per-cell table, with its numbers measured from the rows below it."""
    vals = [s["spread"] for s in spreads if s["spread"] is not None]
    if not vals:
        return "Fewer than two decoders that see only z are ranked on any cell: no spread to report."
    worst_names: dict = defaultdict(int)
    for s in spreads:
        if s["spread"] is not None:
            worst_names[s["worst_z"]["decoder"]] += 1
    top = max(sorted(worst_names), key=lambda k: worst_names[k])
    where = (f"the {len(vals)} cells below" if len(vals) == len(spreads) else
             f"the {len(vals)} of the {len(spreads)} cells below where two or more of them are ranked")
    text = (f"Decoders of kind elementwise, filtering and reference see only z = W_out h. Measured over "
            f"{where}, their spread (max loss / min loss among the ranked ones) is between "
            f"{fmt(min(vals), 3)} and {fmt(max(vals), 3)} (median {fmt(statistics.median(vals), 3)}); the worst of them "
            f"is {top} on {worst_names[top]} of {len(vals)} cells.")
    rec = [s for s in spreads if s["regime"] == "recovery"]
    if rec:
        exact = sum(1 for s in rec if s["best_iterative"] is not None and s["best_iterative"]["exact"])
        text += (f" Iterative decoders see h and are not bound by the E.2 bound: on {exact} of the {len(rec)} cells "
                 f"where the VAMP state evolution predicts exact recovery, the best ranked one recovers x exactly "
                 f"(loss below {EXACT_REL:g} of the trivial loss).")
    return text + " Each entry: decoder (loss / E.2 bound)."


EF_KINDS = ("elementwise", "filtering")  # the decoders the paper's constant-factor claim is about
HEADLINE_FIGURE = "headline.png"


def headline_rows(agg: dict) -> list[dict]:
    """Per cell: the ranked elementwise and filtering decoders' range of loss / E.2 bound and their spread
    (max/min), the best of them against the elementwise MMSE, and the best ranked iterative decoder."""
    out = []
    for cell, a in agg.items():
        enc, dtype, n_s, n_d, p = cell
        ef = [e for e in a["scored"] if e["kind"] in EF_KINDS and e["ratio_e2"] is not None]
        it = [e for e in a["scored"] if e["kind"] == "iterative"]
        out.append({"cell": cell, "n_s": n_s, "r": nominal_r(n_s, n_d), "p": p, "regime": a["regime"], "theory": a["theory"],
                    "n_ef": len(ef), "ef_min": ef[0] if ef else None, "ef_max": ef[-1] if ef else None,
                    "spread": ef[-1]["loss"] / ef[0]["loss"] if len(ef) >= 2 and ef[0]["loss"] > 0 else None,
                    "iterative": it, "coincide": coincident([e for e in a["scored"] if e["kind"] in EF_KINDS]),
                    "iterative_unranked": sorted({u["decoder"] for u in a["unconverged"] if u["kind"] == "iterative"})})
    return out


def coincident(entries: list[dict], rel: float = 1e-6) -> list[list[str]]:
    """Groups of two or more of ``entries`` whose losses agree to ``rel`` on a cell (e.g. JumpReLU whose
    fitted threshold is 0, or a gate equal to the magnitude path: they reduce to ReLU there)."""
    groups: list[list[dict]] = []
    for e in sorted(entries, key=lambda e: e["loss"]):
        if groups and abs(e["loss"] - groups[-1][0]["loss"]) <= rel * max(abs(groups[-1][0]["loss"]), 1e-300):
            groups[-1].append(e)
        else:
            groups.append([e])
    return [sorted(x["decoder"] for x in g) for g in groups if len(g) >= 2]


def _mp_text(h: dict) -> str:
    its = h["iterative"]
    if not its:
        un = h.get("iterative_unranked")
        return f"ranked nowhere ({', '.join(un)}: see below)" if un else "-"
    best = its[0]
    if best["exact"]:
        exact = [e["decoder"] for e in its if e["exact"]]
        return f"exact recovery ({', '.join(exact)})"
    ref = h["ef_min"]
    vs = f", {fmt(best['loss'] / ref['loss'], 2)}x the best elementwise" if ref and ref["loss"] > 0 else ""
    return f"{best['decoder']} {fmt(best['ratio_e2'], 3)}x E.2{vs}"


HEADLINE_COLUMNS = ["n_s", "r", "p", "elementwise & filtering / E.2 (min - max, n)", "their spread",
                    "best / elementwise MMSE", "VAMP state evolution", "message passing measured"]


def headline(agg: dict) -> dict:
    """The board's first screen as data: ``finding`` (one paragraph), ``rows`` (the per-cell table under
    :data:`HEADLINE_COLUMNS`) and ``same`` (a note on decoders with identical losses, or "")."""
    hs = headline_rows(agg)
    with_ef = [h for h in hs if h["n_ef"]]
    if with_ef:
        lo = min(h["ef_min"]["ratio_e2"] for h in with_ef)
        hi = max(h["ef_max"]["ratio_e2"] for h in with_ef)
        spreads = [h["spread"] for h in with_ef if h["spread"] is not None]
        text = (f"On {len(with_ef)} cell{'s' if len(with_ef) != 1 else ''}, every ranked elementwise and filtering "
                f"decoder lands between {fmt(lo, 3)} and {fmt(hi, 3)} times the appendix E.2 bound (the least loss "
                f"even for a decoder told which features are on)")
        text += (f"; on the worst cell their losses differ by a factor {max(spreads):.3f} (max / min)." if spreads
                 else ".")
        rec = [h for h in hs if h["regime"] == "recovery" and h["iterative"]]
        if rec:
            n_exact = sum(1 for h in rec if h["iterative"][0]["exact"])
            text += (f" Message passing, which sees h and is not elementwise, recovers x exactly on {n_exact} of the "
                     f"{len(rec)} cells where its state evolution predicts it")
            other = [h for h in hs if h["regime"] != "recovery" and h["iterative"] and h["ef_min"]]
            gains = [h["iterative"][0]["loss"] / h["ef_min"]["loss"] for h in other if h["ef_min"]["loss"] > 0]
            if gains:
                span = fmt(min(gains), 2) if fmt(min(gains), 2) == fmt(max(gains), 2) else \
                    f"{fmt(min(gains), 2)}-{fmt(max(gains), 2)}"
                text += (f", and on the other cells reaches {span} times the loss of the best elementwise or "
                         "filtering decoder")
            text += "."
    else:
        text = "No elementwise or filtering decoder is ranked on any cell of this board."
    body = []
    for h in hs:
        t = h["theory"]
        ef = (f"{fmt(h['ef_min']['ratio_e2'], 3)} - {fmt(h['ef_max']['ratio_e2'], 3)} ({h['n_ef']})"
              if h["n_ef"] else "-")
        best_mm = fmt(h["ef_min"]["ratio_mmse"], 3) if h["ef_min"] else "-"
        se = ("recovery" if h["regime"] == "recovery" else
              (f"{fmt(t.get('vamp_se') / t['e2_bound'], 3)}x E.2" if _num(t.get("vamp_se")) is not None
               and t.get("e2_bound") else "-"))
        body.append([str(h["n_s"]), fmt(h["r"], 3), fmt(h["p"]), ef,
                     "-" if h["spread"] is None else f"{h['spread']:.3f}", best_mm, se, _mp_text(h)])
    same: dict = defaultdict(int)
    for h in hs:
        for g in h["coincide"]:
            same[" = ".join(g)] += 1
    note = ""
    if same:
        groups = "; ".join(f"{g} on {n} of {len(hs)} cell{'s' if len(hs) != 1 else ''}" for g, n in sorted(same.items()))
        note = ("Identical losses (to 1e-6): " + groups + ". Not a bug: at these cells their fits reduce to the same "
                "function (a fitted JumpReLU or TRec threshold at 0, a gate equal to the magnitude path, a TopK whose "
                "k keeps every positive entry).")
    return {"finding": text, "rows": body, "same": note}


def headline_markdown(agg: dict, figure: str | None = None) -> str:
    """The board's first screen in Markdown: what the rows say, per cell, in numbers computed from them."""
    h = headline(agg)
    parts = ["## What this board found", "", h["finding"], ""]
    if figure:
        parts += [f"![Each decoder's loss per cell against the bounds]({figure})", ""]
    if h["rows"]:
        parts.append(md_table(HEADLINE_COLUMNS, h["rows"], "rrrrrrll"))
    if h["same"]:
        parts += ["", h["same"]]
    parts.append("")
    return "\n".join(parts)


def summary_markdown(agg: dict) -> str:
    decs = decoder_summary(agg)
    failures = failure_lines([f for a in agg.values() for f in a["failed"]])
    n_reg = {g: sum(1 for a in agg.values() if a["regime"] == g) for g in REGIMES}

    def reg_cells(d, g):
        x = d[g]
        if not x["of"]:
            return ["-", "-", "-"]
        ex = f" ({x['exact']} exact)" if x["exact"] else ""
        return [f"{x['n']}/{x['of']}" + ex, fmt(x["median"], 3), fmt(x["worst"], 3)]

    body = [[d["decoder"], d["kind"], *reg_cells(d, "other"), *reg_cells(d, "recovery"),
             str(d["unconverged"]) if d["unconverged"] else "-"] for d in decs]
    parts = ["## Decoders across cells", "",
             "Ratio of each decoder's loss to the cell's appendix E.2 bound (the least loss even for a decoder told "
             "which features are on, Gaussian interference): median and worst over the cells where it is ranked, "
             f"per regime, never across: {REGIME_TEXT['other']} ({n_reg['other']} cells) and "
             f"{REGIME_TEXT['recovery']} ({n_reg['recovery']} cells). \"exact\" counts losses below {EXACT_REL:g} of "
             "the trivial loss. Rows not converged or imprecise are not in these columns (last column: how many; "
             "see the section below).", ""]
    if body:
        parts.append(md_table(["decoder", "kind", "cells (no recovery predicted)", "median / E.2", "worst / E.2",
                               "cells (recovery predicted)", "median / E.2", "worst / E.2",
                               "rows ranked nowhere"], body, "llrrrrrrr"))
    else:
        parts.append("No decoder ranked.")
    spreads = spread_rows(agg)
    parts += ["", "## Per cell: decoders that see only z, against iterative and learned ones", "",
              spread_caption(spreads), ""]

    def ent(e):
        return f"{e['decoder']} ({fmt(e['ratio_e2'], 3)}{', exact' if e['exact'] else ''})" if e else "-"

    body = [[str(s["n_s"]), fmt(s["r"]), fmt(s["p"]), "recovery" if s["regime"] == "recovery" else "no recovery",
             fmt(s["e2_bound"]), ent(s["best_z"]), ent(s["worst_z"]), fmt(s["spread"], 3), ent(s["best_iterative"]),
             ent(s["best_learned"])] for s in spreads]
    parts.append(md_table(["n_s", "r", "p", "VAMP SE predicts", "E.2 bound", "best z-decoder", "worst z-decoder",
                           "spread (max/min)", "best iterative", "best learned"], body, "rrrlrllrll")
                 if body else "No cells.")
    unconv = unconverged_entries(agg)
    parts += ["", "## Not converged or imprecise (ranked nowhere)", "", UNCONVERGED_TEXT, ""]
    parts.append(unconverged_table(unconv, with_cell=True) if unconv else "None: every ok row is ranked.")
    if failures:
        parts += ["", "## Not scored everywhere (failed or skipped rows)", ""]
        parts += [f"- {line}" for line in failures]
    parts.append("")
    return "\n".join(parts)


def unconverged_entries(agg: dict) -> list[dict]:
    out = []
    for cell, a in agg.items():
        enc, dtype, n_s, n_d, p = cell
        for u in a["unconverged"]:
            out.append({**u, "n_s": n_s, "r": nominal_r(n_s, n_d), "p": p, "cell": cell})
    return out


def render(rows: list[dict], title: str, command: str, figure: bool = False, agg: dict | None = None) -> dict[str, str]:
    """{file name: Markdown text} for ``rows`` (already selected with :func:`select_rows`); with ``figure`` the
    summary shows :data:`HEADLINE_FIGURE` (drawn by ``plots.plot_headline``) under its first paragraph. ``agg``:
    the rows' :func:`aggregate`, when the caller already has it."""
    rows = select_rows(rows)  # idempotent; makes the output independent of the input order
    agg = agg if agg is not None else aggregate(rows)
    head = header(title, command, rows)
    top, versions = head.rsplit("\n", 1)  # the decoder versions go to the end: the first screen is the finding
    fig = HEADLINE_FIGURE if figure and any(a["scored"] for a in agg.values()) else None
    return {
        "summary.md": f"{top}\n\n{headline_markdown(agg, fig)}\n{summary_markdown(agg)}\n{versions}\n",
        "cells.md": f"{head}\n\n{cells_markdown(agg)}",
    }


def summary_text(rows: list[dict]) -> str:
    """What ``run`` prints at the end: the headline and the decoders' table, without the provenance header and
    the long per-cell sections (those are in the board)."""
    agg = aggregate(select_rows(rows))
    n_unranked = sum(len(a["unconverged"]) for a in agg.values())
    n_failed = sum(len(a["failed"]) for a in agg.values())
    full = summary_markdown(agg)
    decoders = full.split("\n## Per cell", 1)[0].rstrip()
    tail = []
    if n_unranked:
        tail.append(f"{n_unranked} row(s) ranked nowhere (capped before their plateau or imprecise): listed in the "
                    "board's summary.")
    if n_failed:
        tail.append(f"{n_failed} row(s) failed or skipped: listed in the board's summary.")
    return "\n".join([decoders, "", *tail, "", headline_markdown(agg)]).rstrip() + "\n"


def write_files(files: dict[str, str], out_dir) -> list:
    """Write ``{name: text}`` into ``out_dir`` (created if needed), each file replaced atomically."""
    from pathlib import Path

    from ..results.store import _atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sorted(files):
        _atomic_write_bytes(out / name, files[name].encode("utf-8"))
        paths.append(out / name)
    return paths
