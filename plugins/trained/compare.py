"""The trained toy model against the Persian Rug (paper section 3.2, Figures 3-8): train (or reuse, or load)
the ``trained`` decoder, fit a ReLU on the rug, score both on the same fresh samples, and report the
symmetry diagnostics of ``W = W_out W_in`` (pure functions of ``(W, b)`` in :mod:`decoderbench.model.symmetry`, which
any learned decoder may call) with tables and figures. The ``decoderbench symmetry`` command is registered by
this plugin (:func:`command`), not by the harness: the harness knows no decoder by name.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from decoderbench.model.data import SparseSampler, variance
from decoderbench.model.symmetry import (as_bias, as_dense_W, diagnostics, interference_moments, spread,  # noqa: F401
                                   third_central_moment)
from decoderbench.validate import check_nd, check_ns, check_p, check_seed, nd_from_r  # noqa: F401

from .fileformat import MODEL_FORMAT, load_model, read_model_file, save_model  # noqa: F401
from .model import TrainedModel  # noqa: F401


# --------------------------------------------------------------------------------------- the rug as a model


@dataclass
class DenseModel:
    """``f(x) = ReLU(W x + b)`` with a dense ``W``; ``name`` labels it in tables and figures."""

    name: str
    W: torch.Tensor
    b: torch.Tensor
    n_d: int
    info: dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W = self.W.to(x.dtype)
        return torch.relu(x @ W.T + self.b.to(x.dtype))


def rug_model(n_s: int, n_d: int, p: float, seed: int = 0, a: float = 1.0, b: float = 0.0) -> DenseModel:
    """The Persian Rug as ``ReLU(a R x + b)`` with dense ``R`` (``n_s <= 2**13``); ``b`` is a scalar."""
    from decoderbench.model.encoders import PersianRug

    rug = PersianRug(n_s, n_d, seed=seed, dtype=torch.float64)
    R = rug.dense()
    return DenseModel("rug", float(a) * R, torch.full((rug.n_s,), float(b), dtype=torch.float64), rug.n_d,
                      {"a": float(a), "b": float(b), "col0": rug.col0})


def fit_relu_on_rug(n_s: int, n_d: int, p: float, seed: int = 0, n_samples: int | None = None,
                    max_iter: int = 100) -> dict:
    """Fit the scalar ReLU decoder ``ReLU(a z + b)`` on the rug's ``z = R x`` (fresh training samples).

    Least squares over ``(a, b)`` on about 2**20 pairs ``(z_i, x_i)`` of the seed's training stream, by the
    active-set iteration: with the set ``A = {a z + b > 0}`` fixed the loss is quadratic, so solve the 2x2
    normal equations on ``A``, update ``A``, and repeat while the loss falls (it stops at a stationary point
    of the piecewise-quadratic loss). Starts from the Gaussian theory optimum (``a``, ``b - a mu``). Returns
    ``{"a", "b", "a_theory", "b_theory", "train_loss", "n_pairs", "iterations"}``.
    """
    from decoderbench.model.encoders import PersianRug
    from decoderbench.model.theory import cell_theory

    rug = PersianRug(n_s, n_d, seed=seed)
    t = cell_theory(rug.n_s, rug.n_d, p)
    mu = rug.interference(p)[0]
    a0, b0 = t["relu_a"], t["relu_b"] - t["relu_a"] * mu
    n = int(n_samples or max(64, 2**20 // rug.n_s))
    x = SparseSampler(rug.n_s, p, seed, "symmetry-relu-fit").sample(n)
    z = rug.apply(x)
    xf, zf = x.reshape(-1).double(), z.reshape(-1).double()
    N = xf.numel()

    def loss_of(a: float, b: float) -> float:
        return float(((xf - torch.relu(a * zf + b)) ** 2).sum()) / N

    a, b = a0, b0
    best = loss_of(a, b)
    it = 0
    for it in range(1, max_iter + 1):
        on = (a * zf + b) > 0
        za, xa = zf[on], xf[on]
        m = za.numel()
        if m < 2:
            break
        szz, sz, sx, szx = float((za * za).sum()), float(za.sum()), float(xa.sum()), float((za * xa).sum())
        det = szz * m - sz * sz
        if det <= 0:
            break
        a_new, b_new = (szx * m - sz * sx) / det, (szz * sx - sz * szx) / det
        new = loss_of(a_new, b_new)
        if not new < best:
            break
        a, b, best = a_new, b_new, new
    return {"a": a, "b": b, "a_theory": a0, "b_theory": b0, "train_loss": best, "n_pairs": N, "iterations": it}


def evaluate_loss(forward, n_s: int, p: float, seed: int = 0, n_samples: int = 65536, batch: int = 4096,
                  purpose: str = "symmetry-eval") -> tuple[float, float]:
    """Monte Carlo loss ``n_s^{-1} E ||x - f(x)||^2`` on fresh samples: (mean, standard error)."""
    n_s = check_ns(n_s)
    seed = check_seed(seed)
    sampler = SparseSampler(n_s, p, seed, purpose)
    s = ss = 0.0
    n = 0
    with torch.no_grad():
        for x in sampler.stream(int(n_samples), batch):
            l = ((x - forward(x).to(x.dtype)) ** 2).sum(-1).double() / n_s
            s += float(l.sum())
            ss += float((l * l).sum())
            n += l.numel()
    m = s / n
    return m, math.sqrt(max(ss / n - m * m, 0.0) / max(n - 1, 1))


def paired_losses(forwards: dict, n_s: int, p: float, seed: int = 0, n_samples: int = 65536, batch: int = 4096,
                  purpose: str = "eval") -> dict:
    """Loss of several models on the same fresh samples (common random numbers).

    Returns ``{name: (mean, se)}`` and, under ``"diff"``, the mean and standard error of the per-sample
    difference first minus second model (more precise than the two SEs suggest: the noise is shared).
    """
    n_s = check_ns(n_s)
    names = list(forwards)
    sampler = SparseSampler(n_s, p, check_seed(seed), purpose)
    per = {k: [] for k in names}
    with torch.no_grad():
        for x in sampler.stream(int(n_samples), batch):
            for k in names:
                per[k].append(((x - forwards[k](x).to(x.dtype)) ** 2).sum(-1).double() / n_s)
    out = {}
    for k in names:
        l = torch.cat(per[k])
        out[k] = (float(l.mean()), float(l.std() / math.sqrt(l.numel())))
    if len(names) >= 2:
        d = torch.cat(per[names[0]]) - torch.cat(per[names[1]])
        out["diff"] = (float(d.mean()), float(d.std() / math.sqrt(d.numel())))
    return out


def compare_cell(n_s: int, n_d: int, p: float, seed: int = 0, options: dict | None = None,
                 model_path=None, eval_samples: int = 65536) -> dict:
    """The trained model against the rug with a fitted ReLU at one cell.

    The trained model comes from ``model_path`` (a file of :func:`save_model`) or from the ``trained``
    decoder run through the harness (``run_unit``) with ``options`` and its model cache switched on, so a
    re-run reuses it. Both models are scored on the same ``eval_samples`` fresh samples of the cell's
    evaluation stream; their diagnostics are exact. Returns a dict (the models under ``"models"``).
    """
    from decoderbench.model.theory import cell_theory

    n_s = check_ns(n_s)
    n_d = check_nd(n_d, n_s)
    p = check_p(p)
    seed = check_seed(seed)
    train_info: dict = {}

    if model_path is not None:
        model = load_model(model_path)
        if (model.n_s, model.n_d) != (n_s, n_d):
            raise ValueError(f"model path {str(model_path)!r} holds n_s={model.n_s}, n_d={model.n_d}, "
                             f"not the cell's n_s={n_s}, n_d={n_d}")
        train_info = {k: model.meta.get(k) for k in ("steps", "stop_reason", "total_train_time_s", "settings")}
        train_info["train_time_s"] = model.meta.get("total_train_time_s")
        train_info["reused"] = True
    else:
        from decoderbench.run.runner import WorkUnit, run_unit

        opts = {**(options or {}), "cache": True}
        unit = WorkUnit(n_s, n_d, p, "trained", seed=seed, options=json.dumps(opts, sort_keys=True))
        row = run_unit(unit)
        if row["status"] != "ok":
            raise RuntimeError(f"training the trained model at n_s={n_s} failed: {row['error']}")
        params = row["params"]
        if not params.get("model_path"):
            why = params.get("cache_error") or ("the cache holds a longer run of this model than max_steps "
                                                "allows; raise --max-steps or use another --cache-dir")
            raise RuntimeError(f"the trained model at n_s={n_s} was not saved: {why}")
        model = load_model(params["model_path"])
        train_info = {k: params.get(k) for k in ("steps", "stop_reason", "train_time_s", "total_train_time_s",
                                                 "reused", "resumed_from_step", "model_path", "lr",
                                                 "warm_lr_mult", "warm_steps", "autocast", "threads",
                                                 "loss_train_last")}
        train_info.update(harness_loss=row["loss"], harness_loss_se=row["loss_se"], harness_n_eval=row["n_eval"])
    fit = fit_relu_on_rug(n_s, n_d, p, seed)
    rug = rug_model(n_s, n_d, p, seed, fit["a"], fit["b"])
    losses = paired_losses({"trained": model.forward, "rug": rug.forward}, n_s, p, seed, eval_samples)
    t = cell_theory(n_s, n_d, p)
    return {
        "n_s": n_s, "n_d": n_d, "p": p, "seed": seed,
        "loss_trained": losses["trained"][0], "loss_trained_se": losses["trained"][1],
        "loss_rug": losses["rug"][0], "loss_rug_se": losses["rug"][1],
        "diff": losses["diff"][0], "diff_se": losses["diff"][1],
        "gap": losses["trained"][0] / losses["rug"][0], "eval_samples": int(eval_samples),
        "mmse_elementwise": t["mmse_elementwise"], "relu_theory": t["relu_theory"], "e2_bound": t["e2_bound"],
        "trained": diagnostics(model.W(), model.b, p, n_d=n_d),
        "rug": diagnostics(rug.W, rug.b, p, n_d=n_d),
        "rug_fit": fit, "train": train_info,
        "models": {"trained": model, "rug": rug},
    }


def table_rows(results: list[dict]) -> list[dict]:
    """Flatten :func:`compare_cell` results for :func:`gap_markdown` and the CLI."""
    rows = []
    for res in results:
        t, r, tr = res["trained"], res["rug"], res["train"]
        rows.append({
            "n_s": res["n_s"], "n_d": res["n_d"], "loss_trained": res["loss_trained"],
            "loss_trained_se": res["loss_trained_se"], "loss_rug": res["loss_rug"], "loss_rug_se": res["loss_rug_se"],
            "gap": res["gap"], "diff_se": res["diff_se"], "mmse_elementwise": res["mmse_elementwise"],
            "relu_theory": res["relu_theory"],
            "t_diag": (t["diag_mean"], t["diag_std"]), "r_diag": r["diag_mean"],
            "t_bias": (t["bias_mean"], t["bias_std"]), "t_bias_eff": (t["bias_eff_mean"], t["bias_eff_std"]),
            "r_bias_eff": (r["bias_eff_mean"], r["bias_eff_std"]),
            "t_sigma_rel_over_welch": t.get("sigma_rel_over_welch"),
            "t_interference_skew": t["interference_skew"], "r_interference_skew": r["interference_skew"],
            "t_lambda_be": t["lambda_be"], "r_lambda_be": r["lambda_be"], "t_dead_features": t["dead_features"],
            "steps": tr.get("steps"), "stop_reason": tr.get("stop_reason"),
            "train_time_s": tr.get("total_train_time_s", tr.get("train_time_s")),
        })
    return rows


def write_report(results: list[dict], out_dir, header: list[str], stem: str = "trained_vs_rug",
                 figures: bool = True) -> list[Path]:
    """Write the table (``<stem>.md``), the loss figure (``<stem>.png``), the spreads-vs-n_s figure
    (``<stem>_symmetry.png``) and one Figure-3 analogue per n_s (``<stem>_W_b_ns<n_s>.png``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / f"{stem}.md"
    md.write_text(gap_markdown(table_rows(results), header))
    written.append(md)
    if not figures:
        return written
    title = f"p = {results[0]['p']:g}, r = {results[0]['n_d'] / results[0]['n_s']:g}, seed {results[0]['seed']}"
    plot_losses(table_rows(results), out / f"{stem}.png", title=title)
    written.append(out / f"{stem}.png")
    trend = [{"model": name, **res[name]} for res in results for name in ("trained", "rug")]
    plot_trends(trend, out / f"{stem}_symmetry.png", title="statistical permutation symmetry, " + title)
    written.append(out / f"{stem}_symmetry.png")
    for res in results:
        m = res["models"]
        path = out / f"{stem}_W_b_ns{res['n_s']}.png"
        plot_w_and_b([("trained", m["trained"].W(), m["trained"].b), ("rug, a R and fitted b", m["rug"].W, m["rug"].b)],
                     path, title=f"n_s = {res['n_s']}, " + title)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------- figures and tables


SPREADS = (("diag_std", "RMS dev. of diag(W)  (Fig. 4)"),
           ("bias_std", "RMS dev. of b  (Fig. 5)"),
           ("nu_mean_std", "RMS dev. of E nu_i  (Fig. 6)"),
           ("nu_var_std", "RMS dev. of Var nu_i  (Fig. 7)"),
           ("lambda_be", "Berry-Esseen Lambda  (Fig. 8, eq. 3)"),
           ("bias_eff_std", "RMS dev. of b_i + E nu_i"))


def plot_w_and_b(models: list[tuple[str, object, object]], path, title: str = "", block: int = 30) -> None:
    """The paper's Figure 3 for each ``(label, W, b)``: the top-left ``block x block`` of W beside the first
    ``block`` entries of b, one row of panels per model, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    blocks = []
    for label, W, b in models:
        W = as_dense_W(W)
        blocks.append((label, W[:block, :block].numpy(), as_bias(b, W.shape[0])[:block].numpy().reshape(-1, 1)))
    lim = float(max(max(np.abs(w).max(), np.abs(v).max()) for _, w, v in blocks))
    fig, axes = plt.subplots(len(blocks), 2, figsize=(8.4, 6.4 * len(blocks)), squeeze=False,
                             gridspec_kw={"width_ratios": [block, 4]})
    for (label, w, v), (ax_w, ax_b) in zip(blocks, axes):
        sns.heatmap(w, ax=ax_w, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar=False, square=True,
                    xticklabels=5, yticklabels=5)
        ax_w.set_title(f"{label}: W (top-left {block}x{block})", fontsize=10)
        sns.heatmap(v, ax=ax_b, cmap="RdBu_r", center=0, vmin=-lim, vmax=lim, cbar=True, xticklabels=False,
                    yticklabels=5)
        ax_b.set_title("b", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_trends(rows: list[dict], path, title: str = "") -> None:
    """Each spread and Lambda against n_s (analogues of the paper's Figures 4-8), one panel each.

    ``rows`` are diagnostics dicts with a ``model`` key; zeros (the rug's exact symmetry) are drawn on the
    bottom axis as open markers since the y axis is logarithmic.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    models = sorted({r["model"] for r in rows})
    for ax, (key, label) in zip(axes.flat, SPREADS):
        any_pos = False
        notes = []
        for k, m in enumerate(models):
            pts = sorted((r["n_s"], r[key]) for r in rows if r["model"] == m and r.get(key) is not None)
            pos = [(x, y) for x, y in pts if y > 1e-13]
            if pos:
                any_pos = True
                ax.plot([q[0] for q in pos], [q[1] for q in pos], "o-", color=f"C{k}", label=m)
            if len(pos) < len(pts):
                notes.append((k, f"{m}: 0 (exact) at n_s = " + ", ".join(str(x) for x, y in pts if y <= 1e-13)))
        for j, (k, text) in enumerate(notes):
            ax.annotate(text, xy=(0.02, 0.04 + 0.07 * j), xycoords="axes fraction", color=f"C{k}", fontsize=8)
        ax.set_xscale("log", base=2)
        if any_pos:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("n_s")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_losses(rows: list[dict], path, title: str = "") -> None:
    """Loss against n_s: trained model, rug with a fitted ReLU, and the Gaussian-theory lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["n_s"])
    ns = [r["n_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.errorbar(ns, [r["loss_trained"] for r in rows], yerr=[2 * r["loss_trained_se"] for r in rows],
                fmt="o-", label="trained ReLU(W_out W_in x + b)")
    ax.errorbar(ns, [r["loss_rug"] for r in rows], yerr=[2 * r["loss_rug_se"] for r in rows], fmt="s-",
                label="rug + fitted ReLU(a z + b)")
    ax.plot(ns, [r["relu_theory"] for r in rows], "--", label="ReLU theory (Gaussian nu)")
    ax.plot(ns, [r["mmse_elementwise"] for r in rows], ":", label="elementwise MMSE (Gaussian nu)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_s")
    ax.set_ylabel("loss per feature (error bars: 2 SE)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    below = [r["n_s"] for r in rows if r["loss_trained"] < r["mmse_elementwise"]]
    caption = ("The Gaussian lines assume Gaussian interference; they bound the rug's elementwise decoders only "
               "approximately and are no bound for a trained W.")
    if below:
        caption += (f" The trained model lies below the Gaussian elementwise MMSE at n_s = "
                    f"{', '.join(map(str, below))}: its off-diagonal weights are one-sided, so its interference is "
                    "negatively skewed and the ReLU discards much of it (the symmetry table's skew column).")
    import textwrap

    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(caption, 110)), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.1 if below else 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, fmt: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, fmt)
    return str(v)


def gap_markdown(rows: list[dict], header: list[str]) -> str:
    """The trained-vs-rug table as markdown; ``header`` lines (command, versions) go first."""
    lines = [*header, ""]
    cols = [("n_s", "n_s"), ("n_d", "n_d"), ("loss_trained", "trained loss"), ("loss_trained_se", "SE"),
            ("loss_rug", "rug+ReLU loss"), ("loss_rug_se", "SE"), ("gap", "trained/rug"),
            ("diff_se", "SE of diff."),
            ("mmse_elementwise", "Gauss. MMSE"), ("relu_theory", "ReLU theory"),
            ("t_diag", "diag(W) trained"), ("r_diag", "a rug"), ("t_bias", "b trained"),
            ("t_bias_eff", "b+E nu trained"), ("r_bias_eff", "b+E nu rug"),
            ("t_sigma_rel_over_welch", "sigma/W_ii over Welch"), ("t_interference_skew", "skew nu trained"),
            ("r_interference_skew", "skew nu rug"), ("t_lambda_be", "Lambda trained"),
            ("r_lambda_be", "Lambda rug"), ("t_dead_features", "dead"), ("steps", "steps"),
            ("stop_reason", "stop"), ("train_time_s", "train s (total)")]
    lines.append("| " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in sorted(rows, key=lambda r: r["n_s"]):
        cells = []
        for key, _ in cols:
            v = r.get(key)
            if key in ("t_diag", "t_bias", "t_bias_eff", "r_bias_eff") and v is not None:
                cells.append(f"{v[0]:.4g} ± " + ("0" if abs(v[1]) < 1e-12 else f"{v[1]:.2g}"))  # 0: rounding
            elif key in ("loss_trained", "loss_rug", "mmse_elementwise", "relu_theory"):
                cells.append(_f(v, ".5f"))
            elif key.endswith("_se"):
                cells.append(_f(v, ".1e"))
            elif key == "train_time_s":
                cells.append(_f(v, ".0f"))
            else:
                cells.append(_f(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def command():
    """The ``decoderbench symmetry`` click command (registered by the plugin's ``decoderbench_register_commands``)."""
    import click

    @click.command("symmetry")
    @click.option("--ns", default="128,256,512", show_default=True, help="n_s list (powers of two, at most 8192).")
    @click.option("--r", "r", default="0.25", show_default=True, help="r = n_d/n_s in (0, 1).")
    @click.option("--p", "p", default="0.045", show_default=True, help="Sparsity p in (0, 1].")
    @click.option("--seed", default=0, show_default=True, type=int, help="Seed (data, rug columns, initialisation).")
    @click.option("--load", default=None,
                  help="Comma-separated model files (safetensors from the trained plugin's cache or save_model) to "
                       "diagnose instead of training; their n_s and n_d set the cells.")
    @click.option("--max-steps", default=None, type=int, help="Cap on Adam steps per model [plugin default].")
    @click.option("--max-time-s", default=900.0, show_default=True, type=float,
                  help="Cap on training seconds per model (0: none).")
    @click.option("--threads", default=None, type=int, help="CPU threads while training [torch's setting].")
    @click.option("--cache-dir", default=None, help="Model cache [$DECODERBENCH_CACHE or ~/.cache/decoderbench/trained].")
    @click.option("--eval-samples", default=65536, show_default=True, type=int,
                  help="Fresh samples scoring both models (the same samples for both).")
    @click.option("--out", default=None,
                  help="Folder for the table and figures [default: results/board/symmetry; nothing is "
                       "written into the checkout unless --out names a folder there, as for the committed "
                       "leaderboards/trained_vs_rug.md].")
    @click.option("--no-figures", is_flag=True, help="Write the table only.")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
    @click.pass_context
    def symmetry_cmd(ctx, ns, r, p, seed, load, max_steps, max_time_s, threads, cache_dir, eval_samples, out, no_figures,
                     as_json):
        """Trained model vs the Persian Rug: loss gap and statistical permutation symmetry (paper 3.2, Figs. 3-8).

        Trains (or reuses from the cache, or reads the --load files) the `trained` decoder per n_s, fits a
        ReLU on the rug, scores both on the same samples, prints the diagnostics and writes
        <out>/trained_vs_rug.md, .png, _symmetry.png and one W/b heatmap per n_s.
        """
        import platform

        import torch

        from decoderbench import __version__
        from decoderbench.api import DEFAULT_RESULTS, default_board_dir
        from decoderbench.cli import command_line, parse_floats, table
        from decoderbench.errors import BadInput

        seed = check_seed(seed)
        (p,) = parse_floats("--p", p)[:1]
        try:
            p = check_p(p)
        except BadInput as exc:
            raise BadInput(f"--p: {exc}") from None
        if eval_samples < 2:
            raise BadInput(f"--eval-samples must be an integer >= 2, got {eval_samples}")
        cells: list[tuple[int, int, object]] = []
        if load:
            for path in [s.strip() for s in load.split(",") if s.strip()]:
                try:
                    m = load_model(path)
                except ValueError as exc:  # symmetry's own check of the file: bad input here
                    raise BadInput(f"--load: {str(exc).splitlines()[0]}") from None
                cells.append((m.n_s, m.n_d, path))
        else:
            from decoderbench.model.encoders import DENSE_MAX_NS

            for v in parse_floats("--ns", ns):
                n_s = check_ns(v)
                if n_s > DENSE_MAX_NS:
                    raise BadInput(f"--ns must be at most {DENSE_MAX_NS} (the diagnostics form W densely), got {n_s}")
                cells.append((n_s, nd_from_r(n_s, parse_floats("--r", r)[0]), None))
        options = {"max_time_s": max_time_s}
        for key, val in (("max_steps", max_steps), ("threads", threads), ("cache_dir", cache_dir)):
            if val is not None:
                options[key] = val
        results = []
        for n_s, n_d, path in cells:
            click.echo(f"n_s={n_s} n_d={n_d}: " + (f"loading {path}" if path else "training (or reusing) the trained model"),
                       err=True)
            results.append(compare_cell(n_s, n_d, p, seed, options=options, model_path=path,
                                                 eval_samples=eval_samples))
        header = [f"# Trained toy model vs Persian Rug (p = {p:g}, seed {seed})", "",
                  f"Command: `{command_line(ctx)}`", "",
                  f"Versions: decoderbench {__version__}, torch {torch.__version__}, python {platform.python_version()}.",
                  "", "Losses: both models on the same fresh samples of the cell's eval stream (SE per model, and of "
                  "their per-sample difference). rug+ReLU: the Persian Rug with ReLU(a z + b), (a, b) fitted on "
                  "the rug's own training samples. Diagnostics are exact functions of W = W_out W_in and b "
                  "(decoderbench.model.symmetry): mean ± RMS deviation across rows; E nu_i = (p/2) sum_{j!=i} W_ij; "
                  "sigma/W_ii over Welch: RMS_i sqrt(Var nu_i)/W_ii over sqrt(v (n_s/n_d - 1)), >= 1 at rank n_d; Lambda: paper eq. 3. "
                  "Paper Figure 3 (n_s = 512, r = 0.25, p = 0.045): diag 1.29 ± 0.01, b -0.18 ± 0.01. "
                  "Training times depend on the machine's load."]
        out = out if out is not None else default_board_dir(DEFAULT_RESULTS, "symmetry")
        written = write_report(results, out, header, figures=not no_figures)
        if as_json:
            click.echo(json.dumps([{k: v for k, v in res.items() if k != "models"} for res in results]))
        else:
            rows = []
            for res in results:
                for name in ("trained", "rug"):
                    d = res[name]
                    rows.append({"n_s": res["n_s"], "model": name, "loss": res[f"loss_{name}"],
                                 **{k: d[k] for k in ("diag_mean", "diag_std", "bias_mean", "bias_std", "bias_eff_mean",
                                                      "bias_eff_std", "nu_var_std", "interference_skew", "lambda_be",
                                                      "dead_features")}})
            click.echo(table(rows, ["n_s", "model", "loss", "diag_mean", "diag_std", "bias_mean", "bias_std",
                                     "bias_eff_mean", "bias_eff_std", "nu_var_std", "interference_skew", "lambda_be",
                                     "dead_features"]))
        click.echo(f"wrote {', '.join(str(w) for w in written)}", err=True)
        return 0

    return symmetry_cmd
