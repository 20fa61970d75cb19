"""The recovery phase diagram of message passing: the fraction of samples recovered against r, per p.

Noiseless VAMP (and AMP) either recover ``x`` exactly or stall at a loss of the order of the elementwise
MMSE; state evolution puts the switch at a sharp compression ratio ``r_c(p)``
(:func:`decoderbench.model.theory.recovery_threshold`). At a finite ``n_s`` the switch is smoothed: near
``r_c`` some samples recover and others do not, so the mean loss of a row there is an average of two
populations and says little. Each row records ``recovered_frac`` (samples with loss below ``1e-3 p/3``,
:mod:`decoderbench.run.scoring`); this figure draws it against ``r``, one colour per ``p``, one panel per
decoder, one marker and line style per ``n_s`` (the transition should sharpen as ``n_s`` grows), with
``r_c(p)`` as a dotted vertical line in the colour of its ``p``.

Every ok row of ``vamp`` or ``amp`` that has the column enters (pooled over seeds, weighted by samples,
+- the binomial standard error); a row ranked nowhere on its loss (e.g. imprecise near the threshold,
where losses are bimodal) still counts samples honestly here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

DECODERS = ("vamp", "amp")
NS_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))))


def phase_points(rows: list[dict]) -> dict:
    """{decoder: {(n_s, p): [(r, frac, se), ...] sorted by r}} from the ok vamp/amp rows with ``recovered_frac``."""
    pooled: dict = defaultdict(lambda: [0.0, 0])
    for row in rows:
        if row.get("status") != "ok" or row.get("decoder") not in DECODERS:
            continue
        f, n = row.get("recovered_frac"), row.get("n_eval")
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not math.isfinite(f) or not n:
            continue
        key = (row["decoder"], int(row["n_s"]), float(row["p"]), float(row["n_d"]) / float(row["n_s"]))
        pooled[key][0] += f * int(n)
        pooled[key][1] += int(n)
    out: dict = defaultdict(lambda: defaultdict(list))
    for (dec, n_s, p, r), (k, n) in sorted(pooled.items()):
        frac = k / n
        out[dec][(n_s, p)].append((r, frac, math.sqrt(frac * (1.0 - frac) / n)))
    return {d: dict(v) for d, v in out.items()}


def plot_phase_diagram(rows: list[dict], path, threshold=None) -> Path | None:
    """Draw the phase diagram into ``path`` (PNG, and an SVG beside it); None when no row has the data.

    ``threshold(p)`` gives ``r_c(p)`` (default :func:`decoderbench.model.theory.recovery_threshold`)."""
    from .plots import _pyplot, _save

    pts = phase_points(rows)
    decs = [d for d in DECODERS if d in pts]
    if not decs:
        return None
    if threshold is None:
        from ..model.theory import recovery_threshold as threshold
    plt, sns = _pyplot()
    ps = sorted({p for d in decs for (_, p) in pts[d]})
    ns = sorted({n for d in decs for (n, _) in pts[d]})
    colours = dict(zip(ps, sns.color_palette("viridis", len(ps)) if len(ps) > 1 else ["C0"]))
    styles = {n: NS_STYLES[i % len(NS_STYLES)] for i, n in enumerate(ns)}
    fig, axes = plt.subplots(1, len(decs), figsize=(5.2 * len(decs) + 2.2, 4.6), squeeze=False, sharey=True)
    rc = {p: threshold(p) for p in ps}
    for ax, dec in zip(axes[0], decs):
        for p in ps:
            ax.axvline(rc[p], color=colours[p], linestyle=(0, (1, 2)), linewidth=1.2)
        for (n_s, p), series in sorted(pts[dec].items()):
            r, f, se = zip(*series)
            marker, line = styles[n_s]
            ax.errorbar(r, f, yerr=se, color=colours[p], marker=marker, linestyle=line, markersize=5, capsize=2,
                        label=f"p = {p:g}, n_s = {n_s}")
        ax.set_xlim(0.0, 1.04 * max(r for ser in pts[dec].values() for r, _, _ in ser))
        ax.set_xlabel("compression ratio r = n_d / n_s")
        ax.set_title(f"{dec}: samples recovered (loss < 1e-3 p/3)")
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].set_ylabel("fraction of samples recovered")
    from matplotlib.lines import Line2D

    # the legend says colour = p and marker / line = n_s separately (every panel shares them)
    handles = [Line2D([], [], color=colours[p], linewidth=2) for p in ps]
    labels = [f"p = {p:g}" for p in ps]
    handles += [Line2D([], [], color="0.35", marker=styles[n][0], linestyle=styles[n][1]) for n in ns]
    labels += [f"n_s = {n}" for n in ns]
    handles.append(Line2D([], [], color="0.3", linestyle=(0, (1, 2))))
    labels.append("r_c(p), state evolution")
    axes[0][-1].legend(handles, labels, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       borderaxespad=0.0)
    # (two lines over a single panel: one line is wider than the figure and its ends were cut off)
    fig.suptitle("Recovery phase diagram: fraction of samples recovered against r;"
                 + ("\n" if len(decs) == 1 else " ") + "dotted: VAMP state-evolution threshold r_c(p)", fontsize="small")
    fig.tight_layout()
    return _save(fig, plt, Path(path), rows)
