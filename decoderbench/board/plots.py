"""Figures from result rows (matplotlib's Agg backend, seaborn's theme): a PNG and an SVG of each.

* ``loss_vs_r`` (the paper's Figure 2): one column of panels per p (a row of columns per n_s). Top:
  loss against the compression ratio r, log scale, with the theory curves of
  :mod:`decoderbench.model.theory` as grey lines (E.2 bound, elementwise MMSE, ReLU theory, VAMP state
  evolution, best linear, trivial); the decoders that see only z as one shaded band (their min-max
  per r, they overlap within a few percent) and the iterative and learned decoders as markers.
  Exact recoveries are drawn inside a marked band at the bottom, not pinned to the axis. Bottom:
  each z-decoder's loss over the elementwise MMSE of its cell, linear scale, which is where they
  differ.
* ``loss_vs_p2_over_r`` (Figure 15): the z-decoders' losses against p^2/r, log-log, one colour per p,
  the elementwise MMSE and E.2 bound of each p as lines, and a slope-1 guide for the claimed scaling.
* ``phase_diagram`` (when the rows hold vamp or amp with ``recovered_frac``): the fraction of samples
  recovered against r per p, with the state-evolution threshold r_c(p) (:mod:`decoderbench.board.phase`).
* ``ratio_e2_ns<n_s>``: per decoder, a heatmap of loss / E.2 bound over (r, p); cells whose row is
  ranked nowhere are hatched and marked "n/c", exact recoveries are marked "exact".

Every plotted point is a ranked entry of :func:`decoderbench.board.leaderboard.aggregate` (pooled over
seeds, +- the error the tables show): a row that stopped on a cap or missed its precision target is
in no series. Colours: one family per decoder kind (elementwise blues, filtering greens, reference
brown, iterative reds, learned oranges); theory curves are grey or black lines. Each file carries the
digest of the rows it was drawn from (PNG ``Description`` text, SVG ``dc:description``), the same one
the tables' header shows.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from .._validate import nominal_r
from .leaderboard import EXACT_REL, KIND_ORDER, Z_KINDS, aggregate, rows_digest, select_rows

R_FINE = tuple(round(0.02 * k, 2) for k in range(1, 49))  # 0.02, 0.04, ..., 0.96
R_RELU = tuple(round(0.06 * k - 0.04, 2) for k in range(1, 17))  # 0.02, 0.08, ..., 0.92: the ReLU optimum costs more
KIND_MARKERS = {"elementwise": "o", "filtering": "s", "reference": "D", "iterative": "^", "learned": "P"}
KIND_PALETTES = {"elementwise": "Blues", "filtering": "Greens", "reference": "copper", "iterative": "Reds",
                 "learned": "Oranges"}
# theory curves: grey and black lines, told apart by dash
CURVES = (("E.2 bound", "e2", "black", "-"), ("elementwise MMSE (Gaussian interference)", "mmse", "0.25", "--"),
          ("ReLU theory", "relu", "0.45", ":"), ("VAMP state evolution", "vamp", "0.1", "-."),
          ("best linear", "linear", "0.6", (0, (5, 1))), ("trivial (x_hat = E x)", "trivial", "0.7", (0, (1, 3))))
DPI = 100
MAX_PX = 1600  # the long side of a PNG at most


def theory_curves(p: float) -> dict:
    """Theory losses against r for sparsity ``p``: {"r": [...], "e2": [...], ..., "r_relu": [...], "relu": [...]}.

    Keys: e2 (E.2 bound), mmse (elementwise MMSE), vamp (VAMP state evolution), linear (best linear),
    trivial, on the r grid ``R_FINE``; relu (ReLU theory) on the coarser ``R_RELU``. Cached per p.
    """
    return {k: list(v) for k, v in _theory_curves(float(p))}


@functools.lru_cache(maxsize=64)
def _theory_curves(p: float) -> tuple:
    from ..model import theory as T

    v = T.feature_variance(p)
    out = defaultdict(list)
    for r in R_FINE:
        sigma = math.sqrt(v * (1.0 / r - 1.0))
        out["r"].append(r)
        out["e2"].append(T.e2_bound(p, sigma))
        out["mmse"].append(T.scalar_mmse(p, sigma))
        out["vamp"].append(T.vamp_se_mse(p, r))
        out["linear"].append(T.best_linear(p, r))
        out["trivial"].append(T.trivial(p))
    for r in R_RELU:
        out["r_relu"].append(r)
        out["relu"].append(T.relu_theory(p, math.sqrt(v * (1.0 / r - 1.0)))[0])
    return tuple((k, tuple(vals)) for k, vals in out.items())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.25)
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "decoderbench", "figure.dpi": DPI})
    return plt, sns


def _entries(rows: list[dict], agg: dict | None = None) -> list[dict]:
    """One pooled, ranked entry per (cell, decoder) with the cell's fields and theory attached.

    Only ranked entries: rows that stopped on a cap or missed their precision target are in none.
    """
    out = []
    for cell, a in (agg if agg is not None else aggregate(select_rows(rows))).items():
        enc, dtype, n_s, n_d, p = cell
        for e in a["scored"]:
            out.append({**e, "n_s": n_s, "n_d": n_d, "p": p, "r": n_d / n_s, "regime": a["regime"],
                        **{f"t_{k}": v for k, v in a["theory"].items()}})
    return out


def _n_unranked(rows: list[dict], agg: dict | None = None) -> int:
    return sum(len(a["unconverged"]) for a in (agg if agg is not None else aggregate(select_rows(rows))).values())


def decoder_styles(entries: list[dict], sns=None) -> dict:
    """{(kind, name): (colour, marker)}: one colour family per kind, shades within it."""
    if sns is None:
        import seaborn as sns
    by_kind = defaultdict(list)
    for kind, name in sorted({(e["kind"], e["decoder"]) for e in entries}):
        by_kind[kind].append(name)
    out = {}
    for kind, names in by_kind.items():
        pal = sns.color_palette(KIND_PALETTES.get(kind, "Greys"), len(names) + 2)[2:]  # skip the palest shades
        if kind == "reference":
            pal = sns.color_palette("copper", len(names) + 2)[1:-1]
        for name, colour in zip(names, pal[::-1]):
            out[(kind, name)] = (colour, KIND_MARKERS.get(kind, "o"))
    return out


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _sorted_names(entries):
    return sorted({(e["kind"], e["decoder"]) for e in entries}, key=lambda kn: (_kind_rank(kn[0]), kn[1]))


def _err_note(points: list[tuple[float, float]], decades: float, panel_pt: float, marker_pt: float) -> str:
    """Whether the +-1 SE bars of (loss, se) points show beyond their markers on a log axis."""
    if not points:
        return ""
    half_marker = marker_pt / 2.0 / panel_pt * decades
    hidden = sum(1 for y, se in points if y > 0 and math.log10(1.0 + se / y) < half_marker)
    if hidden == len(points):
        return "error bars (+-1 SE) are smaller than the markers"
    if hidden:
        return f"error bars +-1 SE; on {hidden} of {len(points)} points smaller than the marker"
    return "error bars: +-1 SE"


# ----------------------------------------------------------------------------- loss against r


def plot_loss_vs_r(rows: list[dict], path: Path, curves_for=theory_curves, agg: dict | None = None) -> Path | None:
    """``agg``: the rows' :func:`~decoderbench.board.leaderboard.aggregate`, when the caller has it (else computed)."""
    entries = _entries(rows, agg)
    if not entries:
        return None
    plt, sns = _pyplot()
    from matplotlib.patches import Patch

    ps = sorted({e["p"] for e in entries})
    nss = sorted({e["n_s"] for e in entries})
    ncol = len(ps)
    col_w = min(4.4, (MAX_PX / DPI - 1.0) / ncol)
    fig, axes = plt.subplots(2 * len(nss), ncol, figsize=(max(col_w * ncol, 9.0), 5.6 * len(nss) + 2.4), squeeze=False,
                             gridspec_kw={"height_ratios": [1.6, 1.0] * len(nss)}, layout="constrained")
    styles = decoder_styles(entries, sns)
    handles: dict = {}
    err_points = []
    z_names = [kn for kn in _sorted_names(entries) if kn[0] in Z_KINDS]
    for i, n_s in enumerate(nss):
        for j, p in enumerate(ps):
            ax, axr = axes[2 * i, j], axes[2 * i + 1, j]
            es = [e for e in entries if (e["n_s"], e["p"]) == (n_s, p)]
            c = curves_for(p)
            positive = [y for y in c["e2"] if y > 0] + [e["loss"] for e in es if not e["exact"]]
            y_top = p / 3.0 * 1.8
            y_low = min(positive) / 2.5 if positive else p / 3.0 * 1e-3
            band_top = y_low  # exact recoveries are drawn in [band_bottom, band_top], at band_mid
            band_bottom = y_low / 40.0
            band_mid = band_bottom * 40.0 ** 0.7
            ax.axhspan(band_bottom, band_top, color="0.9", zorder=0, lw=0)
            ax.text(0.985, band_bottom * 1.25, f"exact recovery: loss < {EXACT_REL:g} x trivial", ha="right",
                    va="bottom", fontsize=8, color="0.25", transform=ax.get_yaxis_transform(), zorder=1)
            for label, key, colour, ls in CURVES:
                xs = c["r_relu"] if key == "relu" else c["r"]
                ys = [y if y > EXACT_REL * p / 3.0 else band_mid for y in c[key]]
                (h,) = ax.plot(xs, ys, color=colour, ls=ls, lw=1.4, zorder=2)
                handles.setdefault(("theory", label), h)
            # the exact elementwise MMSE of each cell's own rug (no Gaussian assumption), where rows carry it:
            # a marker per r beside the Gaussian curve (they part where p n_s is small)
            ex = sorted({(e["r"], e["mmse_exact"]) for e in es if e.get("mmse_exact")})
            if ex:
                (h,) = ax.plot([r for r, _ in ex], [v for _, v in ex], ls="none", marker="_", ms=14, mew=2.2,
                               color="0.25", zorder=2)
                handles.setdefault(("theory", "exact elementwise MMSE of the rug (no Gaussian assumption)"), h)
            # the z-decoders: their min-max over r as one band
            zs = [e for e in es if e["kind"] in Z_KINDS]
            rs = sorted({e["r"] for e in zs})
            if rs:
                lo = [min(e["loss"] for e in zs if e["r"] == r) for r in rs]
                hi = [max(e["loss"] for e in zs if e["r"] == r) for r in rs]
                h = ax.fill_between(rs, lo, hi, color=sns.color_palette("Blues", 6)[3], alpha=0.45, lw=0, zorder=3)
                ax.plot(rs, lo, color=sns.color_palette("Blues", 6)[5], lw=1.0, zorder=3, marker="o", ms=3)
                ax.plot(rs, hi, color=sns.color_palette("Blues", 6)[5], lw=1.0, zorder=3, marker="o", ms=3)
                handles.setdefault(("z", "band"), h)
            for kind, name in _sorted_names(es):
                if kind in Z_KINDS:
                    continue
                d = sorted((e for e in es if e["decoder"] == name), key=lambda e: e["r"])
                colour, marker = styles[(kind, name)]
                ys = [band_mid if e["exact"] else e["loss"] for e in d]
                yerr = [0.0 if e["exact"] else e["loss_se"] for e in d]
                h = ax.errorbar([e["r"] for e in d], ys, yerr=yerr, color=colour, marker=marker, ms=7, lw=1.2,
                                capsize=3, zorder=4, mec="white", mew=0.6)
                handles.setdefault((kind, name), h)
                err_points += [(e["loss"], e["loss_se"]) for e in d if not e["exact"]]
            ax.set_yscale("log")
            ax.set_ylim(band_bottom, y_top)
            ax.set_xlim(0, 1)
            ax.set_title(f"p = {p:g}, n_s = {n_s}")
            ax.set_xlabel("")
            if j == 0:
                ax.set_ylabel("loss per feature (log)")
            # bottom: each z-decoder over the cell's elementwise MMSE
            for kind, name in z_names:
                d = sorted((e for e in zs if e["decoder"] == name), key=lambda e: e["r"])
                if not d:
                    continue
                colour, marker = styles[(kind, name)]
                mm = [e["t_mmse_elementwise"] for e in d]
                h = axr.errorbar([e["r"] for e in d], [e["loss"] / m for e, m in zip(d, mm)],
                                 yerr=[e["loss_se"] / m for e, m in zip(d, mm)], color=colour, marker=marker, ms=5,
                                 lw=1.0, capsize=2, zorder=3)
                handles.setdefault((kind, name), h)
            axr.axhline(1.0, color="0.25", ls="--", lw=1.2, zorder=2)
            ratios = [e["loss"] / e["t_mmse_elementwise"] for e in zs if e["t_mmse_elementwise"]]
            if ratios and max(ratios) / max(min(ratios), 1e-300) > 4:  # e.g. linear far above the others
                from matplotlib.ticker import FuncFormatter

                axr.set_yscale("log")
                for axis in (axr.yaxis,):
                    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
            axr.set_xlim(0, 1)
            axr.set_xlabel("compression ratio r = n_d / n_s")
            if j == 0:
                axr.set_ylabel("z-decoder loss /\nelementwise MMSE")
    n_out = _n_unranked(rows, agg)
    # legend below the panels, grouped: theory, the z band, then decoders by kind
    order = [k for k in handles if k[0] == "theory"] + [k for k in handles if k[0] == "z"]
    order += sorted((k for k in handles if k[0] not in ("theory", "z")), key=lambda k: (_kind_rank(k[0]), k[1]))
    labels = []
    for k in order:
        if k[0] == "theory":
            labels.append(f"theory: {k[1]}")
        elif k[0] == "z":
            labels.append(f"z-decoders ({len(z_names)}): min to max loss")
        else:
            labels.append(f"{k[1]} ({k[0]})")
    hs = [handles[k] for k in order]
    if "z" in {k[0] for k in order}:
        hs[labels.index(f"z-decoders ({len(z_names)}): min to max loss")] = Patch(
            color=sns.color_palette("Blues", 6)[3], alpha=0.6)
    ax0 = axes[0, 0]
    lo, hi = ax0.get_ylim()
    note = _err_note(err_points, math.log10(hi / lo), 3.0 * 72, 7)  # top panels are about 3 in tall
    extra = f"; {n_out} rows not converged or imprecise are not drawn (see the tables)" if n_out else ""
    leg = fig.legend(hs, labels, loc="outside lower center", ncol=3 if ncol <= 2 else 4, fontsize=9, frameon=False,
                     title=f"points: ranked rows, {note}{extra}", title_fontsize=9)
    leg.get_title().set_color("0.3")
    fig.suptitle("Loss against compression ratio r (paper Fig. 2). Blue band: decoders that see only z, on the "
                 "elementwise MMSE;\nred: message passing, which sees h and recovers x exactly where its state "
                 "evolution says", fontsize=11)
    return _save(fig, plt, path, rows)


# ----------------------------------------------------------------------------- loss against p^2/r


def plot_loss_vs_p2_over_r(rows: list[dict], path: Path, curves_for=theory_curves,
                           agg: dict | None = None) -> Path | None:
    entries = [e for e in _entries(rows, agg) if e["kind"] in Z_KINDS]
    if not entries:
        return None
    plt, sns = _pyplot()
    ps = sorted({e["p"] for e in entries})
    colours = dict(zip(ps, sns.color_palette("viridis", len(ps))))
    fig, ax = plt.subplots(figsize=(8.5, 6.0), layout="constrained")
    all_x, all_y = [], []
    for p in ps:
        c = curves_for(p)
        xs = [p * p / r for r in c["r"]]
        ax.plot(xs, c["mmse"], color=colours[p], lw=1.6, ls="--", zorder=2)
        ax.plot(xs, c["e2"], color=colours[p], lw=1.2, ls=":", zorder=2)
        es = [e for e in entries if e["p"] == p]
        x = [e["p"] ** 2 / e["r"] for e in es]
        y = [e["loss"] for e in es]
        ax.errorbar(x, y, yerr=[e["loss_se"] for e in es], color=colours[p], marker="o", ms=5, lw=0, elinewidth=1,
                    capsize=2, alpha=0.8, zorder=3, label=f"p = {p:g}: measured z-decoders")
        all_x += x
        all_y += y
    # the slope-1 guide: loss proportional to p^2 / r, through the geometric centre of the points
    gx = math.exp(sum(map(math.log, all_x)) / len(all_x))
    gy = math.exp(sum(map(math.log, all_y)) / len(all_y))
    xr = np.array([min(all_x) / 2, max(all_x) * 2])
    ax.plot(xr, gy * xr / gx, color="black", lw=1.2, ls="-", alpha=0.7, zorder=1, label="slope 1: loss proportional to p^2/r")
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="0.3", ls="--", lw=1.6, label="elementwise MMSE (theory, one line per p)"),
             Line2D([], [], color="0.3", ls=":", lw=1.2, label="E.2 bound (theory, one line per p)")]
    h, lab = ax.get_legend_handles_labels()
    ax.legend(h + extra, lab + [x.get_label() for x in extra], loc="lower right", fontsize=9, frameon=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo_x, hi_x = min(all_x) / 3, max(all_x) * 3
    ax.set_xlim(lo_x, hi_x)
    ys = [y for y in all_y if y > 0]
    ax.set_ylim(min(ys) / 10, max(ys) * 3)
    ax.set_xlabel("p^2 / r")
    ax.set_ylabel("loss per feature")
    n_out = sum(1 for a in (agg if agg is not None else aggregate(select_rows(rows))).values()
                for u in a["unconverged"] if u["kind"] in Z_KINDS)
    note = _err_note(list(zip(all_y, [e["loss_se"] for e in entries])), math.log10(ax.get_ylim()[1] / ax.get_ylim()[0]),
                     4.6 * 72, 5)
    ax.set_title("Decoders that see only z: loss against p^2/r (paper Fig. 15);\nsolid line: slope 1, the scaling "
                 "claimed for the elementwise optimum (up to log 1/p)", fontsize=11)
    ax.text(0.01, 0.99, f"{len(entries)} decoder-cells; {note}" + (f"; {n_out} unranked rows not drawn" if n_out else ""),
            transform=ax.transAxes, ha="left", va="top", fontsize=8.5, color="0.3")
    return _save(fig, plt, path, rows)


# ----------------------------------------------------------------------------- heatmaps of loss / E.2 bound


def plot_ratio_heatmaps(rows: list[dict], out_dir: Path, agg: dict | None = None) -> list[Path]:
    agg = agg if agg is not None else aggregate(select_rows(rows))
    entries = _entries(rows, agg)
    unranked = [(cell, u) for cell, a in agg.items() for u in a["unconverged"]]
    if not entries and not unranked:
        return []
    plt, sns = _pyplot()
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter

    paths = []
    for n_s in sorted({c[2] for c in agg}):
        es = [e for e in entries if e["n_s"] == n_s and e["ratio_e2"] is not None]
        un = [(c, u) for c, u in unranked if c[2] == n_s]
        names = sorted({(e["kind"], e["decoder"]) for e in es} | {(u["kind"], u["decoder"]) for _, u in un},
                       key=lambda kn: (_kind_rank(kn[0]), kn[1]))
        if not names:
            continue
        cells = [c for c in agg if c[2] == n_s]
        rs = sorted({c[3] / c[2] for c in cells})
        ps = sorted({c[4] for c in cells})
        ratios = [e["ratio_e2"] for e in es if e["ratio_e2"] > 0 and not e["exact"]]
        vmin = max(min(ratios) / 1.5, 1e-2) if ratios else 0.5
        vmax = max(max(ratios), vmin * 10) if ratios else 10.0
        ncol = min(4, len(names))
        nrow = math.ceil(len(names) / ncol)
        w = min(MAX_PX / DPI - 0.2, ncol * (0.75 * len(ps) + 1.3) + 1.2)
        h = min(MAX_PX / DPI - 0.2, nrow * (0.36 * len(rs) + 1.2) + 1.2)
        fig, axes = plt.subplots(nrow, ncol, figsize=(w, h), squeeze=False, layout="constrained")
        for ax, (kind, name) in zip(axes.flat, names):
            m = np.full((len(rs), len(ps)), np.nan)
            annot = np.full((len(rs), len(ps)), "", dtype=object)
            marks = []  # (i, j, text, face colour, hatch): exact recoveries and rows ranked nowhere
            for e in es:
                if e["decoder"] == name:
                    i, j = rs.index(e["r"]), ps.index(e["p"])
                    if e["exact"]:  # drawn apart, not as the colour scale's floor
                        marks.append((i, j, "exact", "#c7e9c0", None))
                    else:
                        m[i, j] = min(max(e["ratio_e2"], vmin), vmax)
                        annot[i, j] = f"{e['ratio_e2']:.2g}"
            for c, u in un:
                if u["decoder"] == name:
                    marks.append((rs.index(c[3] / c[2]), ps.index(c[4]), "n/c", "white", "///"))
            with warnings.catch_warnings():  # a decoder with no ranked cell is an all-NaN map, which is fine
                warnings.simplefilter("ignore", RuntimeWarning)
                sns.heatmap(m, ax=ax, norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", annot=annot, fmt="",
                            annot_kws={"fontsize": 8}, cbar=False, xticklabels=[f"{p:g}" for p in ps],
                            yticklabels=[f"{r:.2g}" for r in rs], linewidths=0.5, linecolor="white")
            for i, j, text, face, hatch in marks:
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=face, hatch=hatch, edgecolor="0.65", lw=0.5))
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8, color="0.15",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1} if hatch else None)
            ax.invert_yaxis()
            ax.set_title(f"{name} ({kind})", fontsize=10)
            ax.set_xlabel("p")
            ax.set_ylabel("r")
            ax.tick_params(labelsize=8)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        sm = plt.cm.ScalarMappable(norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis")
        fig.colorbar(sm, ax=axes, label="loss / E.2 bound (colour clipped; the label is the true ratio)", shrink=0.8,
                     format=FuncFormatter(lambda v, _: f"{v:g}"))
        fig.suptitle(f"Loss / E.2 bound over (r, p), n_s = {n_s}. Green \"exact\": exact recovery; hatched \"n/c\": "
                     "not converged or imprecise, ranked nowhere; blank: not run", fontsize=11)
        paths.append(_save(fig, plt, out_dir / f"ratio_e2_ns{n_s}.png", rows))
    return paths


# ----------------------------------------------------------------------------- saving


def _save(fig, plt, path: Path, rows: list[dict]) -> Path:
    """The PNG at ``path`` and an SVG beside it, both tagged with the rows' digest; the PNG at most MAX_PX."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    desc = f"decoderbench figure; rows digest {rows_digest(select_rows(rows))}"
    w, h = fig.get_size_inches()
    dpi = min(DPI, MAX_PX / max(w, h) * 0.98)
    fig.savefig(path, dpi=dpi, metadata={"Software": None, "Description": desc})
    fig.savefig(path.with_suffix(".svg"), metadata={"Date": None, "Creator": None, "Description": desc})
    plt.close(fig)
    return path


def figure_digest(path) -> str | None:
    """The rows digest a figure was drawn from (PNG text chunk or SVG description), or None."""
    import re

    path = Path(path)
    if path.suffix == ".svg":
        m = re.search(r"rows digest ([0-9a-f]+)", path.read_text(encoding="utf-8"))
        return m.group(1) if m else None
    from PIL import Image

    with Image.open(path) as im:
        m = re.search(r"rows digest ([0-9a-f]+)", str(im.info.get("Description", "")))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- the headline


def plot_headline(rows: list[dict], path: Path, agg: dict | None = None) -> Path | None:
    """The board in one look: per cell, each ranked decoder's loss / E.2 bound as a point (log scale); the
    decoders that see only z on the left of the cell, message passing (iterative) apart on the right, learned
    decoders beside it; the E.2 bound (1) as a black line, the cell's elementwise MMSE and VAMP state evolution
    as short grey segments over their groups; exact recoveries in a marked band at the bottom."""
    from .leaderboard import headline_rows

    entries = _entries(rows, agg)
    if not entries:
        return None
    plt, sns = _pyplot()
    agg = agg if agg is not None else aggregate(select_rows(rows))
    cells = list(agg)
    styles = decoder_styles(entries, sns)
    ratios = [e["ratio_e2"] for e in entries if e["ratio_e2"] and not e["exact"]]
    bounds = [a["theory"]["mmse_elementwise"] / a["theory"]["e2_bound"] for a in agg.values()
              if a["theory"].get("e2_bound") and a["theory"].get("mmse_elementwise")]
    hi = max(ratios + bounds + [1.0]) * 1.6
    lo = min(ratios + [1.0]) / 1.6
    exact_y = lo / 2.5
    fig, ax = plt.subplots(figsize=(max(6.5, 1.9 * len(cells) + 3.2), 5.2))
    offsets = {"z": -0.2, "iterative": 0.17, "learned": 0.34}
    seen = set()
    for i, cell in enumerate(cells):
        a = agg[cell]
        t = a["theory"]
        e2 = t.get("e2_bound")
        if e2 and t.get("mmse_elementwise"):
            ax.hlines(t["mmse_elementwise"] / e2, i - 0.38, i - 0.02, colors="0.25", linestyles="--", lw=1.4,
                      label="elementwise MMSE (Gaussian)" if i == 0 else None)
        if e2 and _num(t.get("vamp_se")) and t["vamp_se"] > EXACT_REL * (t.get("trivial") or 0):
            ax.hlines(t["vamp_se"] / e2, i + 0.04, i + 0.3, colors="0.1", linestyles="-.", lw=1.4,
                      label="VAMP state evolution" if "se" not in seen else None)
            seen.add("se")
        groups = defaultdict(list)
        for e in a["scored"]:
            g = "z" if e["kind"] in Z_KINDS else e["kind"]
            groups[g].append(e)
        for g, es in groups.items():
            es = sorted(es, key=lambda e: (_kind_rank(e["kind"]), e["decoder"]))
            n = len(es)
            for j, e in enumerate(es):
                x = i + offsets.get(g, 0.34) + (0.16 * (j - (n - 1) / 2) / max(n, 1) if g == "z" else 0.04 * j)
                y = exact_y if e["exact"] else e["ratio_e2"]
                colour, marker = styles[(e["kind"], e["decoder"])]
                lab = f"{e['decoder']} ({e['kind']})" if (e["kind"], e["decoder"]) not in seen else None
                seen.add((e["kind"], e["decoder"]))
                ax.plot([x], [y], marker=marker, color=colour, ms=7, ls="none", label=lab, mec="white", mew=0.5)
    ax.axhline(1.0, color="black", lw=1.6, label="E.2 bound")
    ax.axhspan(exact_y / 1.8, exact_y * 1.8, color="0.92", zorder=0)
    ax.text(-0.55, exact_y, " exact recovery", ha="left", va="center", fontsize=9, color="0.3")
    ax.set_yscale("log")
    ax.set_ylim(exact_y / 1.8, hi)
    ax.set_xlim(-0.6, len(cells) - 0.4)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"n_s={c[2]}\nr={nominal_r(c[2], c[3]):g}, p={c[4]:g}" for c in cells], fontsize=9)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("loss / E.2 bound (log)")
    hs = headline_rows(agg)
    spreads = [h["spread"] for h in hs if h["spread"] is not None]
    sub = ("left of each cell: decoders that see only z" + (f" (max/min {max(spreads):.3f})" if spreads else "")
           + "\nright: message passing and learned decoders, which see h")
    ax.set_title("Each decoder's loss over the cell's E.2 bound\n" + sub, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, plt, path, rows)


def _num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def make_figures(rows: list[dict], out_dir, agg: dict | None = None) -> list[Path]:
    """Every figure for ``rows`` into ``out_dir`` (PNG and SVG); returns the PNG paths written. ``agg``: the
    rows' aggregate when the caller already has it (``decoderbench.Board`` computes it once)."""
    out_dir = Path(out_dir)
    agg = agg if agg is not None else aggregate(select_rows(rows))
    paths = [plot_headline(rows, out_dir / "headline.png", agg=agg),
             plot_loss_vs_r(rows, out_dir / "loss_vs_r.png", agg=agg),
             plot_loss_vs_p2_over_r(rows, out_dir / "loss_vs_p2_over_r.png", agg=agg)]
    paths += plot_ratio_heatmaps(rows, out_dir, agg=agg)
    from .phase import plot_phase_diagram  # vamp/amp rows with recovered_frac: the recovery phase diagram

    paths.append(plot_phase_diagram(rows, out_dir / "phase_diagram.png"))
    return [p for p in paths if p is not None]


#: Public names of the figure helpers, for plugins that draw their own figures in the project's style:
#: ``pyplot()`` returns ``(matplotlib.pyplot, seaborn)`` set up headless; ``save_figure(fig, plt, path, rows)``
#: writes the PNG and an SVG beside it, both tagged with the rows' digest.
pyplot = _pyplot
save_figure = _save
