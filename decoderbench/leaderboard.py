"""Leaderboards: Markdown tables made from result rows (pure functions; the CLI does the I/O).

Two files, each with a header naming the command and the versions that made it:

* ``cells.md``: per cell, the decoders ranked by loss (mean over seeds, +- one standard error),
  their ratio to the cell's appendix E.2 bound and to the elementwise MMSE, and the rows that failed.
* ``summary.md``: across cells, each decoder's median and worst ratio to the E.2 bound; and per cell
  the spread (max loss / min loss) among the decoders that see only ``z = W_out h`` (kinds
  elementwise, filtering, reference) against the best iterative and learned decoders. That is the
  paper's claim made visible: every decoder of the first group lands within a constant factor of the
  others and of the E.2 bound, while message passing, which sees ``h``, can go far below.

Given the same rows the output is byte-identical: rows are deduplicated and sorted deterministically,
and nothing machine- or time-dependent is printed.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict

from . import __version__

Z_KINDS = ("elementwise", "filtering", "reference")  # decoders that see only z = W_out h
IDENTITY = ("encoder", "dtype", "n_s", "n_d", "p", "seed", "decoder")
CELL = ("encoder", "dtype", "n_s", "n_d", "p")
FILES = ("summary.md", "cells.md")


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


# ----------------------------------------------------------------------------- aggregating


def aggregate(rows: list[dict]) -> dict:
    """{cell: {"theory": {...}, "scored": [entry...] ranked by loss, "failed": [entry...]}}.

    An entry pools a decoder's ok rows over seeds: loss is their mean, loss_se the standard error of
    that mean (sqrt(sum se^2) / n), ratios are taken of the pooled loss.
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
        scored, failed = [], []
        for name in sorted(by_cell[cell]):
            rs = by_cell[cell][name]
            ok = [r for r in rs if r.get("status") == "ok" and r.get("loss") is not None]
            kind = next((r.get("kind") for r in rs if r.get("kind")), None) or "?"
            if ok:
                n = len(ok)
                loss = math.fsum(r["loss"] for r in ok) / n
                se = math.sqrt(math.fsum((r.get("loss_se") or 0.0) ** 2 for r in ok)) / n
                e2, mm = theory[cell]["e2_bound"], theory[cell]["mmse_elementwise"]
                scored.append({"decoder": name, "kind": kind, "loss": loss, "loss_se": se, "n_seeds": n,
                               "n_eval": sum(int(r.get("n_eval") or 0) for r in ok),
                               "ratio_e2": loss / e2 if e2 else None, "ratio_mmse": loss / mm if mm else None,
                               "version": _version_label(ok[0]), "note": _stop_note(ok)})
            for r in rs:
                if r.get("status") != "ok":
                    failed.append({"decoder": name, "kind": kind, "seed": r.get("seed"), "status": r.get("status"),
                                   "error": (r.get("error") or "").splitlines()[0] if r.get("error") else ""})
        scored.sort(key=lambda e: (e["loss"], e["decoder"]))
        out[cell] = {"theory": theory[cell], "scored": scored, "failed": failed}
    return out


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
    return f"n_s = {n_s}, n_d = {n_d} (r = {fmt(n_d / n_s)}), p = {fmt(p)}, p n_s = {fmt(p * n_s, 3)}{extra}"


def header(title: str, command: str, rows: list[dict]) -> str:
    """The provenance header of a generated file: command, generator version, versions in the rows."""
    dbv = sorted({str(r.get("decoderbench_version")) for r in rows if r.get("decoderbench_version")})
    torchv = sorted({str(r.get("torch_version")) for r in rows if r.get("torch_version")})
    devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
    decs = sorted({f"{r['decoder']} {_version_label(r)}" for r in rows if r.get("status") == "ok"})
    lines = [f"<!-- generated by `{command}` with decoderbench {__version__}; do not edit by hand -->",
             f"# {title}", "",
             f"Made by `{command}` (decoderbench {__version__}) from {len(rows)} result rows computed with "
             f"decoderbench {', '.join(dbv) or '?'}, torch {', '.join(torchv) or '?'} on {', '.join(devices) or '?'}.",
             f"Decoder versions (version (source)): {'; '.join(decs) or 'none'}."]
    return "\n".join(lines)


_CLEAN_STOPS = {None, "", "converged", "variance_collapse"}


def _stop_note(rows: list[dict]) -> str:
    """The stop reasons of rows that did not finish cleanly (a time or step cap, a breakdown), e.g.
    ``stop: time_cap``, so a capped model is never read as a converged one."""
    reasons = set()
    for r in rows:
        params = r.get("params")
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                params = {}
        reason = (params or {}).get("stop_reason")
        if reason not in _CLEAN_STOPS:
            reasons.add(str(reason))
    return "stop: " + ", ".join(sorted(reasons)) if reasons else ""


def cells_markdown(agg: dict) -> str:
    parts = []
    for cell, a in agg.items():
        t = a["theory"]
        parts.append(f"## {cell_title(cell, t)}")
        parts.append("")
        parts.append(f"Theory (Gaussian interference, sigma = {fmt(t['sigma'])}): E.2 bound {fmt(t['e2_bound'])}, "
                     f"elementwise MMSE {fmt(t['mmse_elementwise'])}, ReLU theory {fmt(t['relu_theory'])}, "
                     f"VAMP SE {fmt(t['vamp_se'])}, best linear {fmt(t['linear'])}, trivial {fmt(t['trivial'])}.")
        parts.append("")
        body = [[str(i + 1), e["decoder"], e["kind"], f"{fmt(e['loss'])} ± {fmt(e['loss_se'], 2)}",
                 fmt(e["ratio_e2"], 3), fmt(e["ratio_mmse"], 3), str(e["n_seeds"]), str(e["n_eval"]),
                 e.get("note", "")]
                for i, e in enumerate(a["scored"])]
        if body:
            parts.append(md_table(["rank", "decoder", "kind", "loss ± SE", "/ E.2 bound", "/ elementwise MMSE",
                                   "seeds", "samples", "note"], body, "rllrrrrrl"))
        else:
            parts.append("No decoder scored on this cell.")
        if a["failed"]:
            parts.append("")
            for f in a["failed"]:
                parts.append(f"- {f['decoder']} (seed {f['seed']}): {f['status']}: {f['error']}")
        parts.append("")
    return "\n".join(parts)


def summary_markdown(agg: dict) -> str:
    per_dec: dict = defaultdict(list)
    kinds: dict = {}
    failures: dict = defaultdict(set)
    for cell, a in agg.items():
        for e in a["scored"]:
            per_dec[e["decoder"]].append(e)
            kinds[e["decoder"]] = e["kind"]
        for f in a["failed"]:
            failures[f["decoder"]].add(f"{f['status']}: {f['error']}")
            kinds.setdefault(f["decoder"], f["kind"])
    n_cells = len(agg)

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    dec_rows = []
    for name, es in per_dec.items():
        r_e2 = [e["ratio_e2"] for e in es]
        dec_rows.append((med(r_e2), name, [name, kinds[name], f"{len(es)}/{n_cells}", fmt(med(r_e2), 3),
                                           fmt(max((x for x in r_e2 if x is not None), default=None), 3),
                                           fmt(med([e["ratio_mmse"] for e in es]), 3)]))
    dec_rows.sort(key=lambda t: (math.inf if t[0] is None else t[0], t[1]))
    parts = ["## Decoders across cells", "",
             "Ratio of each decoder's loss to the cell's appendix E.2 bound (the least loss even for a decoder "
             "told which features are on, Gaussian interference): median and worst over the cells it scored on.",
             ""]
    parts.append(md_table(["decoder", "kind", "cells", "median / E.2", "worst / E.2", "median / elementwise MMSE"],
                          [t[2] for t in dec_rows], "llrrrr") if dec_rows else "No decoder scored.")
    parts += ["", "## Per cell: decoders that see only z, against iterative and learned ones", "",
              "Decoders of kind elementwise, filtering and reference see only z = W_out h. Their spread (max loss / "
              "min loss) stays a constant factor on every cell, while iterative decoders, which see h, are not bound "
              "by the E.2 bound. Each entry: decoder (loss / E.2 bound).", ""]
    body = []
    for cell, a in agg.items():
        enc, dtype, n_s, n_d, p = cell
        z = [e for e in a["scored"] if e["kind"] in Z_KINDS]
        it = [e for e in a["scored"] if e["kind"] == "iterative"]
        le = [e for e in a["scored"] if e["kind"] == "learned"]

        def ent(e):
            return f"{e['decoder']} ({fmt(e['ratio_e2'], 3)})" if e else "-"

        spread = (z[-1]["loss"] / z[0]["loss"]) if len(z) >= 2 and z[0]["loss"] > 0 else None
        body.append([str(n_s), fmt(n_d / n_s), fmt(p), fmt(a["theory"]["e2_bound"]),
                     ent(z[0] if z else None), ent(z[-1] if z else None), fmt(spread, 3), ent(it[0] if it else None),
                     ent(le[0] if le else None)])
    parts.append(md_table(["n_s", "r", "p", "E.2 bound", "best z-decoder", "worst z-decoder", "spread (max/min)",
                           "best iterative", "best learned"], body, "rrrrllrll") if body else "No cells.")
    if failures:
        parts += ["", "## Not scored everywhere", ""]
        for name in sorted(failures):
            for msg in sorted(failures[name]):
                parts.append(f"- {name}: {msg}")
    parts.append("")
    return "\n".join(parts)


def render(rows: list[dict], title: str, command: str) -> dict[str, str]:
    """{file name: Markdown text} for ``rows`` (already selected with :func:`select_rows`)."""
    rows = select_rows(rows)  # idempotent; makes the output independent of the input order
    agg = aggregate(rows)
    head = header(title, command, rows)
    return {
        "summary.md": f"{head}\n\n{summary_markdown(agg)}",
        "cells.md": f"{head}\n\n{cells_markdown(agg)}",
    }


def summary_text(rows: list[dict]) -> str:
    """The summary alone, without the provenance header (what ``run`` prints at the end)."""
    return summary_markdown(aggregate(select_rows(rows)))


def write_files(files: dict[str, str], out_dir) -> list:
    """Write ``{name: text}`` into ``out_dir`` (created if needed), each file replaced atomically."""
    from pathlib import Path

    from .store import _atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sorted(files):
        _atomic_write_bytes(out / name, files[name].encode("utf-8"))
        paths.append(out / name)
    return paths
