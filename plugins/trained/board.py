"""The trained-architectures board (``decoderbench trained-board``): every trained architecture beside its fixed-rug
counterpart, per cell, from a results store of ``decoderbench run --grid trained``.

Per cell: each architecture's trained loss (``trained-<act>``) and its fixed-rug loss (``<act>``: the Persian Rug
encoder, the activation's scalars fitted by exact least squares), their ratio, the ratio of each to the E.2
bound (paper appendix E.2) and to the Gaussian elementwise MMSE, how the trained model stopped, and the
symmetry diagnostics of the trained ``W = W_out W_in`` and ``b`` (paper section 3.2, appendix A: diagonal mean and
RMS spread, bias, ``b + E nu``, the interference's skewness, ``sigma / W_ii`` over the Welch bound of eq. 6, the
Berry-Esseen ratio ``Lambda`` of eq. 3, dead features). Then the spread among the trained architectures (max / min
of their losses: the paper's "constant factor", measured) beside the same spread on the fixed rug, the best of
each, the oracle and VAMP. One figure: trained loss against ``n_s`` per architecture with the rug counterparts
(dashed) and the bounds. Ratios below 1 are reported as measured, never clipped.
"""

from __future__ import annotations

import math
from pathlib import Path

from .arch import ARCHS, PRACTITIONER_ARCHS as PRACTITIONER

#: Architectures whose spread is "the constant factor" (the nonlinear ones; linear is the affine baseline).
NONLINEAR = tuple(a for a in ARCHS if a != "linear")
#: ... and without the two k-sparse ones (trained with k = round(p n_s), they lose many features).
NOT_K = tuple(a for a in NONLINEAR if a not in ("topk", "batchtopk"))
BOARD_FILE = "README.md"
FIGURE = "trained_loss_vs_ns.png"


def _rows_by(rows: list[dict]) -> dict:
    """{cell: {decoder: row}} of rows already selected (one per identity: :func:`render` selects them)."""
    out: dict = {}
    for r in rows:
        out.setdefault((int(r["n_s"]), int(r["n_d"]), float(r["p"])), {})[r["decoder"]] = r
    return out


def _ok(row) -> bool:
    return bool(row) and row.get("status") == "ok" and isinstance(row.get("loss"), (int, float))


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def _entry(arch: str, t, r, theory: dict) -> dict:
    """One architecture's numbers at a cell: trained row ``t``, fixed-rug row ``r``, their ratios."""
    from decoderbench.board.leaderboard import params_of

    tp = params_of(t) if t else {}
    e = {"arch": arch, "trained": t, "rug": r, "params": tp,
         "t_loss": t["loss"] if _ok(t) else None, "t_se": t.get("loss_se") if _ok(t) else None,
         "r_loss": r["loss"] if _ok(r) else None, "r_se": r.get("loss_se") if _ok(r) else None}
    e["converged"] = tp.get("stop_reason") == "converged"
    e["ratio"] = _ratio(e["t_loss"], e["r_loss"])
    if e["ratio"] is not None and e["t_se"] is not None and e["r_se"] is not None:
        e["ratio_se"] = e["ratio"] * math.hypot(e["t_se"] / e["t_loss"], e["r_se"] / e["r_loss"])
    else:
        e["ratio_se"] = None
    for who in ("t", "r"):
        e[f"{who}_e2"] = _ratio(e[f"{who}_loss"], theory["e2_bound"])
        e[f"{who}_mmse"] = _ratio(e[f"{who}_loss"], theory["mmse_elementwise"])
    if e["t_loss"] is not None and e["t_se"]:
        e["z_mmse"] = (e["t_loss"] - theory["mmse_elementwise"]) / e["t_se"]
        e["z_e2"] = (e["t_loss"] - theory["e2_bound"]) / e["t_se"]
    own = tp.get("own_mmse_elementwise_exact")
    e["t_own"] = _ratio(e["t_loss"], own)  # trained loss / the exact elementwise MMSE of its own W
    if e["t_own"] is not None and e["t_se"]:
        e["z_own"] = (e["t_loss"] - own) / math.hypot(e["t_se"], tp.get("own_exact_se") or 0.0)
    return e


def cell_summary(cell: tuple, by: dict) -> dict:
    """The numbers of one cell: per architecture (trained, rug, ratios, diagnostics) and the spreads."""
    any_row = next(iter(by.values()))
    theory = {k: any_row.get(k) for k in ("e2_bound", "mmse_elementwise", "linear", "relu_theory", "vamp_se",
                                          "trivial", "sigma")}
    archs = [_entry(a, by.get(f"trained-{a}"), by.get(a), theory) for a in ARCHS]
    # TopK trained with the practitioners' recipe, beside the same fixed-rug counterpart (not in the spreads,
    # which measure the paper's protocol)
    archs += [_entry(f"{a} (practitioner)", by[f"trained-{a}-practitioner"], by.get(a), theory)
              for a in PRACTITIONER if f"trained-{a}-practitioner" in by]

    def spread(key, names):
        vals = [(e[key], e["arch"]) for e in archs if e["arch"] in names and e[key] is not None
                and (key != "t_loss" or e["converged"])]
        if len(vals) < 2:
            return None
        lo, hi = min(vals), max(vals)
        return {"factor": hi[0] / lo[0], "best": lo[1], "worst": hi[1], "n": len(vals), "best_loss": lo[0]}

    out = {"cell": cell, "theory": theory, "archs": archs,
           "spread_trained": spread("t_loss", NONLINEAR), "spread_rug": spread("r_loss", NONLINEAR),
           "spread_trained_live": spread("t_loss", NOT_K), "spread_rug_live": spread("r_loss", NOT_K),
           "best_trained": spread("t_loss", tuple(ARCHS)), "best_rug": spread("r_loss", tuple(ARCHS))}
    for name in ("oracle", "oracle-exact", "vamp"):
        row = by.get(name)
        out[name] = row if _ok(row) else None
    return out


def _f(x, d=4):
    from decoderbench.board.leaderboard import fmt

    return fmt(x, d)


def _pm(m, s, d=4):
    return "-" if m is None else f"{_f(m, d)} ± {_f(s, 2)}"


def _stop(e) -> str:
    t = e["trained"]
    if not t:
        return "not run"
    if t.get("status") != "ok":
        return t.get("status") or "?"
    p = e["params"]
    return f"{p.get('stop_reason')} ({p.get('steps')})"


def _extras(e) -> str:
    p, a = e["params"], e["arch"]
    parts = []
    if "k_sweep" in p:  # the practitioner recipe: the k kept and every k's training loss
        sweep = ", ".join(f"{k}: {_f(v.get('loss_train_last'), 4)}" for k, v in p["k_sweep"].items())
        parts.append(f"k={p.get('k_best')} (training loss by k: {sweep})")
    elif "k" in p and a in ("topk", "batchtopk"):
        parts.append(f"k={p['k']}")
    if a in ("jumprelu", "trec"):
        parts.append(f"theta={_f(p.get('theta_mean'), 3)}±{_f(p.get('theta_std'), 2)}")
    if a == "gated":
        parts.append(f"r_mag={_f(p.get('r_mag_mean'), 3)}, b_mag={_f(p.get('b_mag_mean'), 3)}")
    return ", ".join(parts)


def cell_markdown(s: dict) -> str:
    from decoderbench.board.leaderboard import md_table

    n_s, n_d, p = s["cell"]
    th = s["theory"]
    lines = [f"## n_s = {n_s}, n_d = {n_d} (r = {_f(n_d / n_s)}), p = {_f(p)}, p n_s = {_f(p * n_s, 3)}", "",
             f"Bounds (Gaussian theory at the rug's sigma = {_f(th['sigma'])}): E.2 {_f(th['e2_bound'])}, elementwise MMSE "
             f"{_f(th['mmse_elementwise'])}, ReLU theory {_f(th['relu_theory'])}, best linear v(1-r) {_f(th['linear'])}, "
             f"trivial {_f(th['trivial'])}.", ""]
    head = ["architecture", "trained loss", "stop (steps)", "fixed-rug loss", "trained/rug", "trained/E.2", "rug/E.2",
            "trained/MMSE", "rug/MMSE", "(trained-MMSE)/SE", "trained/own exact MMSE", "(trained-own)/SE"]
    body = []
    for e in s["archs"]:
        body.append([e["arch"], _pm(e["t_loss"], e["t_se"]), _stop(e), _pm(e["r_loss"], e["r_se"]),
                     _pm(e["ratio"], e["ratio_se"]), _f(e["t_e2"], 3), _f(e["r_e2"], 3), _f(e["t_mmse"], 3),
                     _f(e["r_mmse"], 3), _f(e.get("z_mmse"), 3), _f(e.get("t_own"), 3), _f(e.get("z_own"), 3)])
    for name in ("oracle", "oracle-exact", "vamp"):
        row = s.get(name)
        if row is not None:
            body.append([f"({name})", "", "", _pm(row["loss"], row.get("loss_se")), "", "",
                         _f(_ratio(row["loss"], th["e2_bound"]), 3), "", _f(_ratio(row["loss"], th["mmse_elementwise"]), 3),
                         "", "", ""])
    lines += [md_table(head, body, "lrlrrrrrrrrr"), "",
              "MMSE: the Gaussian elementwise MMSE at the rug's sigma. Own exact MMSE: the exact elementwise MMSE of "
              "the trained W itself (its interference law from the characteristic function, no Gaussian assumption, "
              "mean over 16 evenly spaced rows), the least loss any elementwise decoder of that W x can reach; "
              "(trained-own)/SE below -2 would be a bug (topk and batchtopk are not elementwise and may go below).", ""]
    st, sr, bt, br = s["spread_trained"], s["spread_rug"], s["best_trained"], s["best_rug"]

    def sp(x):
        return "-" if x is None else f"{_f(x['factor'], 3)}x ({x['best']} best, {x['worst']} worst, {x['n']} architectures)"

    lines += [f"Spread among the nonlinear architectures (max/min loss, converged trained models only): trained {sp(st)}; "
              f"on the fixed rug {sp(sr)}. Without topk and batchtopk: trained {sp(s['spread_trained_live'])}; "
              f"on the fixed rug {sp(s['spread_rug_live'])}.",
              f"Best trained: {bt['best'] if bt else '-'} ({_f(bt['best_loss']) if bt else '-'}); best on the fixed rug: "
              f"{br['best'] if br else '-'} ({_f(br['best_loss']) if br else '-'})"
              + (f"; best trained / best rug = {_f(bt['best_loss'] / br['best_loss'], 4)}." if bt and br else "."), ""]
    head = ["architecture", "dead", "diag(W) mean ± RMS", "b mean ± RMS", "b + E nu mean ± RMS", "skew nu",
            "sigma/W_ii over Welch", "Lambda", "activation's own"]
    body = []
    for e in s["archs"]:
        p_ = e["params"]
        if not p_ or "diag_mean" not in p_:
            body.append([e["arch"]] + ["-"] * 8)
            continue
        body.append([e["arch"], "n/a" if e["arch"] == "linear" else str(p_.get("dead_features")), _pm(p_.get("diag_mean"), p_.get("diag_std")),
                     _pm(p_.get("bias_mean"), p_.get("bias_std")), _pm(p_.get("bias_eff_mean"), p_.get("bias_eff_std")),
                     _f(p_.get("interference_skew"), 3), _f(p_.get("sigma_rel_over_welch"), 4), _f(p_.get("lambda_be"), 3),
                     _extras(e)])
    lines += ["Symmetry diagnostics of the trained models (exact functions of W = W_out W_in and b; for gated, the "
              "gate path's W and b; trec has no bias; dead: diag < 0.1, not meaningful for linear, whose diagonal is about r):", "", md_table(head, body, "lrllrrrrl"), ""]
    return "\n".join(lines)


def summary_markdown(sums: list[dict]) -> str:
    from decoderbench.board.leaderboard import md_table

    head = ["cell (n_s, r, p)", "trained spread", "rug spread", "trained spread w/o topk, batchtopk",
            "rug spread w/o topk, batchtopk", "best trained", "best rug", "best trained / best rug",
            "lowest trained/MMSE", "lowest trained/E.2"]
    body = []
    for s in sums:
        n_s, n_d, p = s["cell"]
        st, sr, bt, br = s["spread_trained"], s["spread_rug"], s["best_trained"], s["best_rug"]
        lows = [(e["t_mmse"], e["arch"]) for e in s["archs"] if e["t_mmse"] is not None and e["converged"]]
        lowe = [(e["t_e2"], e["arch"]) for e in s["archs"] if e["t_e2"] is not None and e["converged"]]
        body.append([f"{n_s}, {_f(n_d / n_s, 3)}, {_f(p)}",
                     "-" if st is None else f"{_f(st['factor'], 3)}x ({st['n']})",
                     "-" if sr is None else f"{_f(sr['factor'], 3)}x ({sr['n']})",
                     *("-" if x is None else f"{_f(x['factor'], 3)}x ({x['n']})"
                       for x in (s["spread_trained_live"], s["spread_rug_live"])),
                     "-" if bt is None else f"{bt['best']} {_f(bt['best_loss'])}",
                     "-" if br is None else f"{br['best']} {_f(br['best_loss'])}",
                     "-" if not (bt and br) else _f(bt["best_loss"] / br["best_loss"], 4),
                     "-" if not lows else f"{_f(min(lows)[0], 4)} ({min(lows)[1]})",
                     "-" if not lowe else f"{_f(min(lowe)[0], 4)} ({min(lowe)[1]})"])
    return "\n".join(["## Summary", "", "Spread: max/min loss over the nonlinear architectures (relu, topk, batchtopk, "
                      "jumprelu, trec, prolu, gated; converged trained models only; the number of architectures in "
                      "brackets), and the same without topk and batchtopk, which trained with k = round(p n_s) lose many "
                      "features (a feature never among the k kept gets no gradient; see the dead column). "
                      "Ratios to the bounds as measured (below 1: below the Gaussian theory's bound; the "
                      "theory assumes Gaussian interference, which a trained W does not have). trained/rug SE: from "
                      "the two SEs as if independent (an overestimate: both are scored on the same samples).", "",
                      md_table(head, body, "lrrrrllrll"), ""])


def plot(sums: list[dict], path: Path, rows: list[dict]) -> Path | None:
    """Trained loss against n_s per architecture (solid, o), fixed-rug counterparts (dashed, x, same colour), the
    bounds as short horizontal bars at each n_s. Points of one n_s are spread sideways a little (architectures
    that coincide, e.g. relu, jumprelu and gated, would hide each other); a hollow marker is a trained model
    that did not converge."""
    from matplotlib.lines import Line2D

    from decoderbench.board.plots import pyplot as _pyplot, save_figure as _save

    groups: dict = {}
    for s in sums:
        n_s, n_d, p = s["cell"]
        groups.setdefault((round(n_d / n_s, 2), p), []).append(s)
    if not groups:
        return None
    plt, sns = _pyplot()
    prac = [f"{a} (practitioner)" for a in PRACTITIONER
            if any(e["arch"] == f"{a} (practitioner)" and e["t_loss"] is not None for s in sums for e in s["archs"])]
    series = list(ARCHS) + prac  # (the practitioner recipes: trained points only; their rug line is topk's)
    colours = dict(zip(series, sns.color_palette("tab10", len(ARCHS)) + [sns.color_palette("dark", 10)[list(ARCHS).index(a.split()[0])] for a in prac]))
    shift = {a: 2 ** (0.045 * (i - (len(series) - 1) / 2)) for i, a in enumerate(series)}
    bounds = (("e2_bound", "E.2 bound", "black", "-"), ("mmse_elementwise", "elementwise MMSE", "0.35", "--"),
              ("linear", "best linear v(1-r)", "0.6", ":"))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups) + 2.6, 6.2), squeeze=False, layout="constrained")
    for ax, ((r, p), ss) in zip(axes[0], sorted(groups.items(), reverse=True)):
        ss = sorted(ss, key=lambda s: s["cell"][0])
        ns = [s["cell"][0] for s in ss]
        for key, _, colour, style in bounds:
            for s in ss:
                n = s["cell"][0]
                ax.plot([n / 1.3, n * 1.3], [s["theory"][key]] * 2, color=colour, ls=style, lw=1.8, zorder=1)
        for a in series:
            for who, ls, mk in (("t", "-", "o"), ("r", "--", "x"))[: 1 if a in prac else 2]:
                pts = [(s["cell"][0] * shift[a], e[f"{who}_loss"], e[f"{who}_se"], e["converged"] or who == "r")
                       for s in ss for e in s["archs"] if e["arch"] == a and e[f"{who}_loss"] is not None]
                if not pts:
                    continue
                x, y, se, conv = zip(*pts)
                ax.plot(x, y, color=colours[a], ls=ls, lw=1.8 if who == "t" else 1.1, zorder=2)
                for xi, yi, si, ci in pts:
                    ax.errorbar([xi], [yi], yerr=[2 * si], color=colours[a], marker=mk, ms=7 if who == "t" else 8,
                                mfc=colours[a] if ci else "white", mew=1.6, capsize=2, zorder=3)
        orc = [(s["cell"][0], s["oracle"]["loss"]) for s in ss if s["oracle"] is not None]
        if orc:
            ax.plot(*zip(*orc), color="black", ls="none", marker="D", ms=7, mfc="none", mew=1.4, zorder=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(set(ns)), [str(n) for n in sorted(set(ns))])
        ax.minorticks_off()
        ax.set_xlim(min(ns) / 1.6, max(ns) * 1.6)
        ax.set_xlabel("n_s  (n_d = round(r n_s))")
        ax.set_ylabel("loss  n_s^-1 E ||x - x_hat||^2")
        ax.set_title(f"r = {r:g}, p = {p:g}")
    handles = [Line2D([], [], color=colours[a], lw=2.2, label=a) for a in series]
    handles += [Line2D([], [], color="0.2", ls="-", marker="o", label="trained (all of W_in, W_out, b learned)"),
                Line2D([], [], color="0.2", ls="--", marker="x", ms=8, label="same activation on the fixed rug"),
                Line2D([], [], color="0.2", ls="none", marker="o", mfc="white", label="trained, not converged"),
                Line2D([], [], color="black", ls="none", marker="D", mfc="none", label="oracle E[x|z] on the rug")]
    handles += [Line2D([], [], color=c, ls=st, lw=1.8, label=lab) for _, lab, c, st in bounds]
    fig.legend(handles=handles, loc="outside right center", fontsize=9.5, frameon=False)
    fig.suptitle("Trained SAE architectures vs the same activation on the Persian Rug (error bars 2 SE; "
                 "bounds: Gaussian theory at the rug's sigma)", fontsize=11)
    return _save(fig, plt, path, rows)


def render(rows: list[dict], command: str, cells=None) -> tuple[dict[str, str], list[dict]]:
    """(files {name: text}, per-cell summaries) for the rows of a trained grid."""
    from decoderbench.board.leaderboard import ROWS_FILE, header, rows_json, select_rows

    rows = select_rows(rows)  # one row per identity (the latest), so the header counts the rows the board uses
    by = _rows_by(rows)
    keys = [c for c in (cells or sorted(by)) if c in by]
    sums = [cell_summary(c, by[c]) for c in keys]
    text = [header("Trained SAE architectures vs the same activation on the fixed Persian Rug", command, rows), "",
            __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
            "Trained models: `act(W_out W_in x + b)`, every parameter learned by Adam with the paper's appendix G "
            "protocol (batch 1024, lr 3e-3/sqrt(n_s), the 200/200 stopping rule checked every 30 batches, b = 0 at "
            "start; all architectures start from the same W). TopK and BatchTopK use k = round(p n_s); the rug's "
            "topk/batchtopk fit their k. \"topk (practitioner)\" and \"batchtopk (practitioner)\": the same architectures "
            "trained as sparse-autoencoder practitioners train them (tied unit-norm initialisation, unit-norm feature "
            "directions W_in, the AuxK loss on dead features, k annealed from 4k; k swept over 1, 1.5, 2 x p n_s and "
            "the least training loss kept; not in the spreads, which measure the paper's protocol). JumpReLU and TRec train their threshold with a straight-through "
            "pseudo-derivative (Rajamanoharan et al. 2024, rectangle kernel, bandwidth 0.01); gated is the tied form "
            "with its auxiliary gate loss and no sparsity term. A dead feature has diag(W_ii) < 0.1.", "",
            summary_markdown(sums)]
    text += [cell_markdown(s) for s in sums]
    return {BOARD_FILE: "\n".join(text).rstrip() + "\n", ROWS_FILE: rows_json(rows)}, sums


def command():
    """The ``decoderbench trained-board`` click command (registered by the plugin's
    ``decoderbench_register_commands``)."""
    import click

    @click.command("trained-board")
    @click.option("--results", default="results", show_default=True, help="The results store to read.")
    @click.option("--grid", "grid_spec", default="trained", show_default=True, help="The grid whose cells to show.")
    @click.option("--ns", default=None, help="Only these n_s (comma-separated).")
    @click.option("--out", default=None,
                  help="Where to write the board [default: <results>/board/trained, inside the store; the committed "
                       "board is written with --out leaderboards/trained].")
    @click.option("--no-figures", is_flag=True, help="Write the tables only.")
    @click.pass_context
    def trained_board(ctx, results, grid_spec, ns, out, no_figures):
        """Board of the trained architectures against their fixed-rug counterparts: per cell the
        trained and rug losses, their ratios to each other and to the E.2 bound and elementwise MMSE, the spread
        among the architectures, and the trained models' symmetry diagnostics; a figure of loss against n_s."""
        from decoderbench.api import default_board_dir
        from decoderbench.cli import command_line as _command_line, parse_floats as _floats
        from decoderbench.errors import BadInput
        from decoderbench.run.grids import load_grid
        from decoderbench.results.store import ResultsStore

        grid = load_grid(grid_spec)
        cells = grid.cells()
        if ns is not None:
            keep = {int(v) for v in _floats("--ns", ns)}
            cells = [c for c in cells if c[0] in keep]
        store = ResultsStore(results, create=False)
        cellset = set(cells)
        rows = [r for r in store.rows() if (int(r["n_s"]), int(r["n_d"]), float(r["p"])) in cellset
                and int(r.get("seed", 0)) in set(grid.seeds)]
        if not rows:
            raise BadInput(f"--results {results}: the store holds no rows of grid {grid.name}'s cells")
        files, sums = render(rows, _command_line(ctx), cells)
        out_dir = Path(out) if out is not None else default_board_dir(results, "trained")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in files.items():
            (out_dir / name).write_text(text, encoding="utf-8")
            written.append(out_dir / name)
        if not no_figures:
            fig = plot(sums, out_dir / FIGURE, rows)
            if fig is not None:
                written += [fig, fig.with_suffix(".svg")]
        click.echo(files[BOARD_FILE])
        click.echo(f"wrote {', '.join(str(w) for w in written)}", err=True)
        return 0

    return trained_board
