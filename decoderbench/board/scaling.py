"""The scaling board: each decoder's loss over its Gaussian theory against n_s, at fixed (r, p).

The paper's theory (sections 3-4, appendix E) holds as ``n_s -> infinity`` with ``r`` and ``p`` fixed, where
the interference ``nu_i = sum_(j != i) R_ij x_j`` (about ``p n_s`` nonzero terms) is Gaussian. This board
makes that limit visible: for every series ``(r, p)`` of the rows, per decoder, the ratio

    loss / Gaussian theory  +- loss_se / Gaussian theory

against ``n_s`` (log axis), where the Gaussian theory of a decoder is its own prediction column
(``predicted``: the ReLU theory for relu, the elementwise MMSE for the oracle, the best linear ``v (1 - r)``
for linear) and, for a decoder without one (topk, a filtering decoder), the elementwise MMSE. VAMP's state
evolution predicts exact recovery (0) at some cells, where a ratio means nothing: VAMP gets its own panel,
the fraction of samples it recovered (the row's ``recovered_frac`` column where rows carry it) or else its
loss over the trivial loss ``p/3``.

:func:`render` returns the markdown (``scaling.md``); :func:`plot` draws ``scaling.png`` (and ``.svg``);
:func:`write_board` writes both beside the rows they were made from. Rows ranked nowhere by the board
(stopped on a cap, missed their precision target) are drawn hollow and marked ``*`` in the table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .leaderboard import EXACT_REL, header, precision_missed, row_flags, select_rows

GRID = "scaling"
FILE_MD = "scaling.md"
FILE_PNG = "scaling.png"
ORDER = ("relu", "linear", "topk", "oracle", "vamp")
THEORY_NAME = {"relu": "ReLU theory", "linear": "best linear", "oracle": "elementwise MMSE",
               "vamp": "VAMP state evolution"}
WITHIN_SE = 2.0  # "within its theory": |ratio - 1| <= WITHIN_SE standard errors


def _f(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def series_of(row: dict) -> tuple[float, float]:
    """(r, p) of a row, r the grid's nominal ratio (n_d = round(r n_s)) to 2 significant digits."""
    r = _f(row.get("r"))
    if not math.isfinite(r):
        r = int(row["n_d"]) / int(row["n_s"])
    return float(f"{r:.2g}"), float(row["p"])


def theory_of(row: dict) -> tuple[float, str]:
    """(Gaussian theory loss, its name) a row is divided by."""
    pred = _f(row.get("predicted"))
    if math.isfinite(pred):
        return pred, THEORY_NAME.get(row["decoder"], "its prediction")
    return _f(row.get("mmse_elementwise")), "elementwise MMSE"


def entries(rows: list[dict]) -> dict:
    """{(r, p): {decoder: [entry per n_s, ascending]}}, entries pooled over seeds (mean, SE of the mean)."""
    groups = defaultdict(list)
    for row in select_rows(rows):
        if row.get("status") != "ok" or not math.isfinite(_f(row.get("loss"))):
            continue
        groups[(series_of(row), row["decoder"], int(row["n_s"]))].append(row)
    out: dict = defaultdict(lambda: defaultdict(list))
    for (series, dec, n_s), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        k = len(rs)
        loss = sum(_f(r["loss"]) for r in rs) / k
        se = math.sqrt(sum(_f(r.get("loss_se")) ** 2 for r in rs)) / k
        theory, tname = theory_of(rs[0])
        trivial = _f(rs[0].get("trivial"))
        rec = [_f(r.get("recovered_frac")) for r in rs if "recovered_frac" in r]
        rec = [v for v in rec if math.isfinite(v)]
        ranked = not any(precision_missed(r) or row_flags(r) for r in rs)
        ratio = loss / theory if theory > 0 else math.nan
        out[series][dec].append({
            "n_s": n_s, "p_ns": series[1] * n_s, "loss": loss, "se": se, "theory": theory, "theory_name": tname,
            "ratio": ratio, "ratio_se": se / theory if theory > 0 else math.nan, "trivial": trivial,
            "exact": loss <= EXACT_REL * trivial, "recovered_frac": (sum(rec) / len(rec)) if rec else None,
            "ranked": ranked, "seeds": k, "n_eval": sum(int(r.get("n_eval") or 0) for r in rs)})
    return out


def within_from(points: list[dict], k: float = WITHIN_SE) -> int | None:
    """The least n_s from which every ranked point lies within k SE of its theory (None: not at the largest)."""
    ok = [p for p in points if p["ranked"] and math.isfinite(p["ratio"])]
    first = None
    for p in reversed(ok):
        if abs(p["ratio"] - 1) <= k * p["ratio_se"]:
            first = p["n_s"]
        else:
            break
    return first


def _decoders(series_entries: dict) -> list[str]:
    return sorted(series_entries, key=lambda d: (ORDER.index(d) if d in ORDER else len(ORDER), d))


def _pow2(n: int) -> str:
    e = int(round(math.log2(n)))
    return f"2^{e}" if 2**e == n else str(n)


def render(rows: list[dict], command: str, grid_ns: list[int] | None = None) -> str:
    """The scaling board's markdown: per series, a table of loss / theory (+- SE) per decoder against n_s."""
    data = entries(rows)
    ns_present = sorted({p["n_s"] for s in data.values() for pts in s.values() for p in pts})
    lines = [header("decoderbench scaling board: loss / Gaussian theory against n_s", command, select_rows(rows)), ""]
    if grid_ns:
        missing = sorted(set(grid_ns) - set(ns_present))
        if missing:
            lines += [f"**Restricted run**: the rows cover n_s = {', '.join(_pow2(n) for n in ns_present)}; the grid's "
                      f"n_s = {', '.join(_pow2(n) for n in missing)} are not in the store yet (the grid is resumable: "
                      "`decoderbench run --grid scaling` computes only the rows it lacks).", ""]
    lines += [
        "Each entry is a decoder's loss divided by its Gaussian theory (ReLU theory for relu, best linear for "
        "linear, elementwise MMSE for the oracle and for topk, which has no theory of its own), +- its standard "
        f"error over the same theory. `*`: ranked nowhere on the main board (a cap or a missed precision target). "
        f"The last row of each table: the least n_s from which every larger n_s lies within {WITHIN_SE:g} SE of "
        "the theory. VAMP: its loss and, where its state evolution predicts exact recovery, whether it recovered "
        "(`exact`: loss below 1e-6 of the trivial loss p/3; `recovered`: the fraction of samples recovered, where "
        "rows carry it).", ""]
    for (r, p), sdata in sorted(data.items(), key=lambda kv: (-kv[0][1], -kv[0][0])):
        decs = _decoders(sdata)
        lines += [f"## r = {r:g}, p = {p:g}", ""]
        head = ["n_s", "p n_s"] + [d for d in decs if d != "vamp"] + (["vamp loss (SE prediction)"] if "vamp" in decs
                                                                         else [])
        by_ns = {d: {e["n_s"]: e for e in sdata[d]} for d in decs}
        ns_all = sorted({e["n_s"] for d in decs for e in sdata[d]})
        body = []
        for n_s in ns_all:
            cells = [_pow2(n_s), f"{p * n_s:.3g}"]
            for d in decs:
                e = by_ns[d].get(n_s)
                if d == "vamp":
                    if e is None:
                        cells.append("-")
                        continue
                    txt = "exact" if e["exact"] else f"{e['loss']:.3g} ± {e['se']:.1g}"
                    txt += f" ({e['theory']:.3g})"
                    if e["recovered_frac"] is not None:
                        txt += f", recovered {e['recovered_frac']:.0%}"
                    cells.append(txt + ("" if e["ranked"] else " *"))
                    continue
                if e is None or not math.isfinite(e["ratio"]):
                    cells.append("-")
                else:
                    cells.append(f"{e['ratio']:.3f} ± {e['ratio_se']:.3f}" + ("" if e["ranked"] else " *"))
            body.append(cells)
        within = ["within {:g} SE from".format(WITHIN_SE), ""]
        for d in decs:
            if d == "vamp":
                continue
            if d not in THEORY_NAME:  # divided by the elementwise MMSE, which it need not reach
                within.append("- (no theory of its own)")
                continue
            w = within_from(sdata[d])
            within.append(_pow2(w) if w is not None else "not yet")
        if "vamp" in decs and any(e["theory"] > 0 for e in sdata["vamp"]):  # a stall: its state evolution
            w = within_from(sdata["vamp"])
            within.append(f"state evolution from {_pow2(w)}" if w is not None else "not yet")
        elif "vamp" in decs:
            ex = [e["n_s"] for e in sdata["vamp"] if e["exact"]]
            within.append(f"exact from {_pow2(min(ex))}" if ex and all(
                e["exact"] for e in sdata["vamp"] if e["n_s"] >= min(ex)) else ("exact at some n_s" if ex else "-"))
        body.append(within)
        lines.append("| " + " | ".join(head) + " |")
        lines.append("| " + " | ".join(["---:"] * len(head)) + " |")
        lines += ["| " + " | ".join(c) + " |" for c in body]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path, command: str = "") -> Path | None:
    """One panel per series (loss / theory against n_s, log2 axis, +-1 SE bars, a line at 1) and one for VAMP."""
    from .plots import _pyplot, _save

    data = entries(rows)
    if not data:
        return None
    plt, sns = _pyplot()
    series = sorted(data, key=lambda s: (-s[1], -s[0]))
    has_rec = any(e["recovered_frac"] is not None for s in data.values() for e in s.get("vamp", []))
    n_panels = len(series) + 1
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 4.2), squeeze=False)
    axes = axes[0]
    ns_all = sorted({e["n_s"] for s in data.values() for pts in s.values() for e in pts})
    names = sorted({d for s in data.values() for d in s if d != "vamp"},
                   key=lambda d: ORDER.index(d) if d in ORDER else len(ORDER))
    colours = dict(zip(names, sns.color_palette("colorblind", len(names))))
    markers = dict(zip(names, "osD^vP"))
    for ax, s in zip(axes, series):
        for j, d in enumerate(names):
            pts = [e for e in data[s].get(d, []) if math.isfinite(e["ratio"])]
            if not pts:
                continue
            shift = 2 ** ((j - (len(names) - 1) / 2) * 0.08)  # dodge the markers a little along x
            x = [e["n_s"] * shift for e in pts]
            y = [e["ratio"] for e in pts]
            err = [e["ratio_se"] for e in pts]
            ax.errorbar(x, y, yerr=err, color=colours[d], lw=1.2, capsize=2, label=d, marker=markers[d], ms=5,
                        mfc=colours[d], zorder=2)
            hollow = [(xi, e["ratio"]) for xi, e in zip(x, pts) if not e["ranked"]]
            if hollow:
                ax.plot(*zip(*hollow), ls="none", marker=markers[d], ms=6, mfc="white", mec=colours[d], zorder=3)
        ax.axhline(1.0, color="0.3", lw=1, ls="--", zorder=1)
        _ns_axis(ax, ns_all)
        ns_s = [e["n_s"] for pts in data[s].values() for e in pts]
        lo, hi = min(ns_s) * s[1], max(ns_s) * s[1]
        ax.set_title(f"r = {s[0]:g}, p = {s[1]:g}  (p n_s {lo:.3g} to {hi:.3g})", fontsize=10)
    axes[0].set_ylabel("loss / Gaussian theory (±1 SE)")
    axes[0].legend(fontsize=8, loc="best")
    ax = axes[-1]
    for s in series:
        pts = data[s].get("vamp", [])
        if not pts:
            continue
        if has_rec:
            y = [e["recovered_frac"] if e["recovered_frac"] is not None else math.nan for e in pts]
        else:
            y = [max(e["loss"] / e["trivial"], 1e-12) for e in pts]
        line, = ax.plot([e["n_s"] for e in pts], y, marker="^", label=f"r = {s[0]:g}, p = {s[1]:g}")
        hollow = [(e["n_s"], yi) for e, yi in zip(pts, y) if not e["ranked"]]
        if hollow:
            ax.plot(*zip(*hollow), ls="none", marker="^", ms=7, mfc="white", mec=line.get_color(), zorder=3)
    _ns_axis(ax, ns_all)
    if has_rec:
        ax.set_ylabel("VAMP: fraction of samples recovered")
        ax.set_ylim(-0.05, 1.05)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("VAMP: loss / trivial loss p/3 (floor 1e-12)")
    ax.set_title("VAMP", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("Thermodynamic limit: loss / Gaussian theory against n_s (hollow: ranked nowhere)", fontsize=11)
    fig.tight_layout()
    return _save(fig, plt, Path(path), rows)


def _ns_axis(ax, ns_all: list[int]) -> None:
    """A log2 n_s axis over the grid's range, ticks at powers of two labelled 2^k (every other one past 6)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    lo, hi = math.log2(min(ns_all)), math.log2(max(ns_all))
    ax.set_xlim(2 ** (lo - 0.5), 2 ** (hi + 0.5))
    ks = list(range(int(lo), int(hi) + 1))
    if len(ks) > 6:
        ks = ks[::2]
    ax.xaxis.set_major_locator(FixedLocator([2.0**k for k in ks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"$2^{{{k}}}$" for k in ks])
    ax.set_xlabel("n_s")


def write_board(rows: list[dict], out_dir, command: str, grid=None, figures: bool = True) -> list[Path]:
    """Write ``scaling.md`` (and ``scaling.png``/``.svg`` unless ``figures`` is False) into ``out_dir``;
    ``grid`` (a :class:`~decoderbench.run.grids.Grid`, or its list of n_s) names the n_s a restricted run lacks."""
    from .leaderboard import write_files

    out_dir = Path(out_dir)
    if grid is not None and not isinstance(grid, (list, tuple)):
        if grid.name == GRID:  # the built-in grid's n_s, whatever --ns restricted this board to
            from ..run.grids import load_grid

            grid = load_grid(GRID)
        grid = sorted({c[0] for c in grid.cells()})
    grid_ns = grid
    written = list(write_files({FILE_MD: render(rows, command, grid_ns) + "\n"}, out_dir))
    if figures:
        png = plot(rows, out_dir / FILE_PNG, command)
        if png is not None:
            written.append(png)
    return written
