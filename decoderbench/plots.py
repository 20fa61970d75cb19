"""Figures from result rows (seaborn on matplotlib's Agg backend), PNGs beside the leaderboard tables.

* ``loss_vs_r.png`` (the paper's Figure 2): loss against the compression ratio r, one panel per
  (n_s, p); every decoder's rows (+- one standard error) with the theory curves computed by
  :mod:`decoderbench.theory` on a fine r grid: E.2 bound, elementwise MMSE, ReLU theory, VAMP state
  evolution, best linear map and the trivial decoder.
* ``loss_vs_p2_over_r.png`` (Figure 15): loss against p^2/r, log-log, every decoder, with the E.2
  bound and the elementwise MMSE of the same cells.
* ``ratio_e2_ns<n_s>.png``: per decoder, a heatmap of loss / E.2 bound over (r, p).

Every plotted point is a row of the store (pooled over seeds as in :mod:`decoderbench.leaderboard`);
the curves are pure functions of (p, r) (Gaussian interference, sigma^2 = v (1/r - 1)).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .leaderboard import aggregate, select_rows

R_FINE = tuple(round(0.02 * k, 2) for k in range(1, 49))  # 0.02, 0.04, ..., 0.96
R_RELU = tuple(round(0.06 * k - 0.04, 2) for k in range(1, 17))  # 0.02, 0.08, ..., 0.92: the ReLU optimum costs more
KIND_MARKERS = {"elementwise": "o", "filtering": "s", "reference": "D", "iterative": "^", "learned": "P"}
CURVES = (("E.2 bound", "e2", "black", "-"), ("elementwise MMSE", "mmse", "0.35", "--"),
          ("ReLU theory", "relu", "tab:red", ":"), ("VAMP SE", "vamp", "tab:purple", "-."),
          ("best linear", "linear", "0.6", (0, (5, 1))), ("trivial", "trivial", "0.75", (0, (1, 1))))


def theory_curves(p: float) -> dict:
    """Theory losses against r for sparsity ``p``: {"r": [...], "e2": [...], ..., "r_relu": [...], "relu": [...]}.

    Keys: e2 (E.2 bound), mmse (elementwise MMSE), vamp (VAMP state evolution), linear (best linear),
    trivial, on the r grid ``R_FINE``; relu (ReLU theory) on the coarser ``R_RELU``. Cached per p.
    """
    return {k: list(v) for k, v in _theory_curves(float(p))}


@functools.lru_cache(maxsize=64)
def _theory_curves(p: float) -> tuple:
    from . import theory as T

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

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _entries(rows: list[dict]) -> list[dict]:
    """One pooled entry per (cell, decoder) with the cell's fields and theory attached."""
    out = []
    for cell, a in aggregate(select_rows(rows)).items():
        enc, dtype, n_s, n_d, p = cell
        for e in a["scored"]:
            out.append({**e, "n_s": n_s, "n_d": n_d, "p": p, "r": n_d / n_s, **{f"t_{k}": v for k, v in a["theory"].items()}})
    return out


def _styles(entries: list[dict], sns) -> dict:
    names = sorted({(e["kind"], e["decoder"]) for e in entries})
    pal = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    return {(kind, name): (pal[i], KIND_MARKERS.get(kind, "o")) for i, (kind, name) in enumerate(names)}


def _floor(ys) -> float:
    pos = [y for y in ys if y is not None and y > 0]
    return min(pos) if pos else 1e-6


def plot_loss_vs_r(rows: list[dict], path: Path, curves_for=theory_curves) -> Path | None:
    entries = _entries(rows)
    if not entries:
        return None
    plt, sns = _pyplot()
    panels = sorted({(e["n_s"], e["p"]) for e in entries})
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.6 * nrow), squeeze=False)
    styles = _styles(entries, sns)
    for ax, (n_s, p) in zip(axes.flat, panels):
        es = [e for e in entries if (e["n_s"], e["p"]) == (n_s, p)]
        c = curves_for(p)
        bottom = 1e-3 * p / 3.0  # three decades below the trivial loss; lower values sit on the axis
        for label, key, color, ls in CURVES:
            xs = c["r_relu"] if key == "relu" else c["r"]
            ys = [max(y, bottom) for y in c[key]]
            ax.plot(xs, ys, color=color, ls=ls, lw=1.3, label=label, zorder=2)
        for name in sorted({e["decoder"] for e in es}):
            d = sorted((e for e in es if e["decoder"] == name), key=lambda e: e["r"])
            color, marker = styles[(d[0]["kind"], name)]
            ys = [max(e["loss"], bottom) for e in d]
            ax.errorbar([e["r"] for e in d], ys, yerr=[e["loss_se"] for e in d], color=color, marker=marker, ms=5,
                        lw=0.9, capsize=2, label=f"{name} ({d[0]['kind']})", zorder=3, clip_on=False)
        ax.set_yscale("log")
        ax.set_ylim(bottom * 0.8, p / 3.0 * 2.0)
        ax.set_xlim(0, 1)
        ax.set_title(f"n_s = {n_s}, p = {p:g}")
        ax.set_xlabel("compression ratio r = n_d / n_s")
        ax.set_ylabel("loss per feature")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = _legend_items(axes)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle("Loss against compression ratio (points: measured, +- 1 SE; lines: Gaussian theory);\n"
                 "losses below the axis (exact recovery) are drawn on it")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_loss_vs_p2_over_r(rows: list[dict], path: Path) -> Path | None:
    entries = _entries(rows)
    if not entries:
        return None
    plt, sns = _pyplot()
    styles = _styles(entries, sns)
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    cells = sorted({(e["n_s"], e["n_d"], e["p"]): e for e in entries}.values(), key=lambda e: e["p"] ** 2 / e["r"])
    xs = [e["p"] ** 2 / e["r"] for e in cells]
    ax.plot(xs, [e["t_e2_bound"] for e in cells], "x", color="black", ms=7, label="E.2 bound (theory)", zorder=4)
    ax.plot(xs, [e["t_mmse_elementwise"] for e in cells], "+", color="0.35", ms=8, label="elementwise MMSE (theory)",
            zorder=4)
    floor = 0.03 * _floor([e["t_e2_bound"] for e in cells])  # lower losses (exact recovery) sit on the axis
    for name in sorted({e["decoder"] for e in entries}):
        d = sorted((e for e in entries if e["decoder"] == name), key=lambda e: e["p"] ** 2 / e["r"])
        color, marker = styles[(d[0]["kind"], name)]
        ax.errorbar([e["p"] ** 2 / e["r"] for e in d], [max(e["loss"], floor) for e in d],
                    yerr=[e["loss_se"] for e in d], color=color, marker=marker, ms=5, lw=0, elinewidth=0.8,
                    capsize=2, label=f"{name} ({d[0]['kind']})", zorder=3, clip_on=False)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor * 0.8)
    ax.set_xlabel("p^2 / r")
    ax.set_ylabel("loss per feature")
    ax.set_title("Loss against p^2/r (the elementwise optimum scales as p^2/r up to log(1/p));\n"
                 "losses below the axis (exact recovery) are drawn on it", fontsize=9)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_ratio_heatmaps(rows: list[dict], out_dir: Path) -> list[Path]:
    entries = _entries(rows)
    if not entries:
        return []
    plt, sns = _pyplot()
    from matplotlib.colors import LogNorm

    paths = []
    for n_s in sorted({e["n_s"] for e in entries}):
        es = [e for e in entries if e["n_s"] == n_s and e["ratio_e2"] is not None]
        names = sorted({(e["kind"], e["decoder"]) for e in es})
        if not names:
            continue
        rs = sorted({e["r"] for e in es})
        ps = sorted({e["p"] for e in es})
        ratios = [e["ratio_e2"] for e in es if e["ratio_e2"] > 0]
        vmin = max(min(ratios), 1e-2) if ratios else 1e-2
        vmax = max(max(ratios), vmin * 10) if ratios else 10.0
        ncol = min(4, len(names))
        nrow = math.ceil(len(names) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(0.9 * len(ps) * ncol + 2.5, 0.5 * len(rs) * nrow + 1.2 * nrow + 0.6),
                                 squeeze=False, layout="constrained")
        for ax, (kind, name) in zip(axes.flat, names):
            m = np.full((len(rs), len(ps)), np.nan)
            annot = np.full((len(rs), len(ps)), "", dtype=object)
            for e in es:
                if e["decoder"] == name:
                    i, j = rs.index(e["r"]), ps.index(e["p"])
                    m[i, j] = max(e["ratio_e2"], vmin)  # the colour saturates; the label is the true ratio
                    annot[i, j] = f"{e['ratio_e2']:.2g}"
            sns.heatmap(m, ax=ax, norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", annot=annot, fmt="",
                        annot_kws={"fontsize": 7}, cbar=False, xticklabels=[f"{p:g}" for p in ps],
                        yticklabels=[f"{r:.3g}" for r in rs], linewidths=0.5, linecolor="white")
            ax.invert_yaxis()
            ax.set_title(f"{name} ({kind})", fontsize=9)
            ax.set_xlabel("p")
            ax.set_ylabel("r")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        sm = plt.cm.ScalarMappable(norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis")
        fig.colorbar(sm, ax=axes, label="loss / E.2 bound", shrink=0.8)
        fig.suptitle(f"Loss / E.2 bound over (r, p), n_s = {n_s}")
        paths.append(_save(fig, plt, out_dir / f"ratio_e2_ns{n_s}.png"))
    return paths


def _legend_items(axes):
    seen = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen.keys())


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def make_figures(rows: list[dict], out_dir) -> list[Path]:
    """Every figure for ``rows`` into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    paths = [plot_loss_vs_r(rows, out_dir / "loss_vs_r.png"), plot_loss_vs_p2_over_r(rows, out_dir / "loss_vs_p2_over_r.png")]
    paths += plot_ratio_heatmaps(rows, out_dir)
    return [p for p in paths if p is not None]
