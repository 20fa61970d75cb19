"""Unrolled message passing: loss against the number of iterations, beside state evolution.

``vamp`` and ``amp`` run with ``max_iter = t`` and ``tol = 0`` are a family of decoders indexed by their
compute: ``t`` applications of the encoder's operators (two fast transforms each on the rug) and ``t``
denoiser calls. At ``t = 0`` nothing beats the best elementwise decoder (the elementwise MMSE, paper
section 4); as ``t`` grows the loss falls to the message-passing fixed point, exact recovery where state
evolution predicts it. State evolution (Rangan, Schniter & Fletcher 2019, for VAMP; Bayati & Montanari 2011,
for AMP) predicts the loss after every ``t``: each row stores it as ``predicted_t``. The figure is the
compute-accuracy frontier between an elementwise decoder and full message passing, on which a decoder with
a few learned iterations (LISTA-like) can be placed by its own row.

``unrolled(...)`` scores the rows through :func:`decoderbench.evaluate` (one call per ``t``: the options
differ, so do the keys; with ``store`` they are reused like any run's), and ``plot_unrolled`` draws them.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import BadInput

DEFAULT_ITERATIONS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
DECODERS = ("vamp", "amp")
REFERENCES = ("oracle", "relu")  # the best elementwise decoder (the MMSE) and the common SAE activation


def check_iterations(iterations) -> tuple[int, ...]:
    """The iteration counts, sorted and unique; BadInput unless each is an integer in 1..1000."""
    vals = list(iterations) if not isinstance(iterations, (str, bytes)) else [iterations]
    for t in vals:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t != int(t) \
                or not 1 <= t <= 1000:
            raise BadInput(f"--iters must be integers in 1..1000, got {t!r}")
    if not vals:
        raise BadInput("--iters must name at least one iteration count")
    return tuple(sorted({int(t) for t in vals}))


def unrolled(decoders=DECODERS, *, n_s: int = 1024, r: float = 0.25, p: float = 0.045, iterations=DEFAULT_ITERATIONS,
             seed: int = 0, store=None, progress: bool = False, references=REFERENCES, **sampling):
    """Rows of ``decoders`` (vamp, amp) at ``max_iter = t, tol = 0`` for each ``t`` in ``iterations`` on one cell,
    with an ``iterations`` column, plus one row of each of ``references`` (``iterations`` 0). A DataFrame."""
    import pandas as pd

    from .. import api

    its = check_iterations(iterations)
    bad = [d for d in decoders if d not in DECODERS]
    if bad:
        raise BadInput(f"decoders must be among {', '.join(DECODERS)} (the ones with iterations), got {bad[0]!r}")
    frames = []
    for t in its:
        df = api.evaluate(list(decoders), n_s=n_s, r=r, p=p, seeds=seed, store=store, progress=progress,
                          options={d: {"max_iter": t, "tol": 0} for d in decoders}, **sampling)
        df["iterations"] = t
        frames.append(df)
    if references:
        df = api.evaluate(list(references), n_s=n_s, r=r, p=p, seeds=seed, store=store, progress=progress, **sampling)
        df["iterations"] = 0
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _predicted(decoder: str, p: float, r: float, t: int) -> float:
    from ..model import theory

    return theory.vamp_se_t(p, r, t) if decoder == "vamp" else theory.amp_se_t(p, r, t)


def table(df) -> str:
    """A Markdown table: per ``t``, each decoder's loss +- SE, its state-evolution loss after ``t`` iterations,
    and measured / predicted; the references below."""
    rows = [r for r in df.to_dict("records") if r.get("status") == "ok"]
    its = sorted({int(r["iterations"]) for r in rows if r["decoder"] in DECODERS})
    decs = [d for d in DECODERS if any(r["decoder"] == d for r in rows)]
    head = "| t |" + "".join(f" {d} loss | {d} SE prediction | {d} / prediction |" for d in decs)
    lines = [head, "| ---: |" + " ---: | ---: | ---: |" * len(decs)]
    for t in its:
        cells = [f"| {t} |"]
        for d in decs:
            row = next((r for r in rows if r["decoder"] == d and int(r["iterations"]) == t), None)
            if row is None:
                cells.append(" - | - | - |")
                continue
            pred = (row.get("params") or {}).get("predicted_t")
            has = isinstance(pred, (int, float)) and not isinstance(pred, bool)
            ratio = f"{row['loss'] / pred:.3f}" if has and pred > 0 else "-"
            cells.append(f" {row['loss']:.4g} +- {row['loss_se']:.2g} | {f'{pred:.4g}' if has else '-'} | {ratio} |")
        lines.append("".join(cells))
    refs = [r for r in rows if int(r["iterations"]) == 0]
    if refs:
        lines += ["", "References (no iterations): " + "; ".join(
            f"{r['decoder']} {r['loss']:.4g} +- {r['loss_se']:.2g}" for r in refs)
            + (f"; appendix E.2 bound {refs[0]['e2_bound']:.4g}" if refs[0].get("e2_bound") else "")]
    return "\n".join(lines)


def plot_unrolled(df, path) -> Path | None:
    """Loss against iterations (log-log), each decoder's rows +- SE with its state-evolution curve after every
    t (a line), the references as horizontal lines (the best elementwise decoder, relu, the E.2 bound)."""
    from .plots import _pyplot, _save

    rows = [r for r in df.to_dict("records") if r.get("status") == "ok"]
    mp = [r for r in rows if r["decoder"] in DECODERS]
    if not mp:
        return None
    plt, sns = _pyplot()
    cell = mp[0]
    p, r = float(cell["p"]), float(cell["n_d"]) / float(cell["n_s"])
    floor = min([x["loss"] for x in rows if x["loss"] > 0] + [x.get("e2_bound") or 1.0 for x in rows]) / 30.0
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = dict(zip(DECODERS, sns.color_palette("deep", 4)[:2]))
    t_max = max(int(x["iterations"]) for x in mp)
    for d in DECODERS:
        pts = sorted((int(x["iterations"]), x["loss"], x["loss_se"]) for x in mp if x["decoder"] == d)
        if not pts:
            continue
        ts = list(range(1, t_max + 1))
        pred = [max(_predicted(d, p, r, t), floor) for t in ts]
        ax.plot(ts, pred, color=colours[d], lw=1.2, alpha=0.8, label=f"{d} state evolution after t")
        ax.errorbar([t for t, _, _ in pts], [max(v, floor) for _, v, _ in pts], yerr=[s for _, _, s in pts],
                    fmt="o", color=colours[d], ms=5, capsize=2, label=f"{d} measured (max_iter = t, tol = 0)")
    styles = {"oracle": ("k", "--", "best elementwise (oracle: the MMSE)"), "relu": ("0.45", ":", "relu")}
    for x in rows:
        if int(x["iterations"]) == 0 and x["decoder"] in styles:
            c, ls, lab = styles[x["decoder"]]
            ax.axhline(max(x["loss"], floor), color=c, ls=ls, lw=1, label=lab)
    if rows and rows[0].get("e2_bound"):
        ax.axhline(rows[0]["e2_bound"], color="firebrick", ls="-.", lw=1, label="appendix E.2 bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor * 0.8)
    ax.set_xlabel("iterations t (each: the encoder's operators once, the denoiser once)")
    ax.set_ylabel("loss (mean squared error per feature)")
    ax.set_title(f"Unrolled message passing, n_s = {cell['n_s']}, r = {r:.3g}, p = {p:g}: loss against t\n"
                 f"(points at the bottom edge: losses below it, exact recovery)", fontsize=11)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, plt, Path(path), rows)

