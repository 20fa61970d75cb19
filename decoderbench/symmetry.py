"""Statistical permutation symmetry of a model ``f(x) = ReLU(W x + b)`` (paper section 3.2, appendix A).

Notation (the paper's section 2 and appendix A): ``W = W_out W_in`` (``n_s x n_s``, rank at most ``n_d``), ``b`` in R^{n_s}; the data
``x_j = c_j u_j`` are i.i.d. with mean ``p/2``, variance ``v = p/3 - p^2/4`` and third central moment
``kappa3 = p/4 - p^2/2 + p^3/4``. Feature ``i``'s pre-activation is ``W_ii x_i + nu_i + b_i`` with the
interference ``nu_i = sum_{j != i} W_ij x_j``, so, exactly (no sampling):

* ``E nu_i = (p/2) sum_{j != i} W_ij`` (paper Fig. 6), ``Var nu_i = v sum_{j != i} W_ij^2`` (Fig. 7),
  ``skew nu_i = kappa3 sum_{j != i} W_ij^3 / (Var nu_i)^{3/2}``;
* the effective bias ``b_i + E nu_i`` (the stable quantity while ``b`` itself drifts during training, measured);
* the Berry-Esseen ratio (paper eq. 3)
  ``Lambda = max_i sum_{j != i} |W_ij|^3 / (sum_{j != i} W_ij^2)^{3/2}``: up to a constant set by the first
  three moments of ``x``, how far the worst row's ``nu_i`` is from Gaussian. It is invariant to scaling a
  row, so the paper's ``nu_i / W_ii`` (item c of 3.2) gives the same value.

The spread of a per-row quantity ``q`` is reported three ways: ``q_mean``; ``q_std``, the root mean square
deviation ``sqrt(n_s^{-1} sum_i (q_i - mean q)^2)`` (the paper's Delta of appendix A is written without the
square root although it is named "root mean square"; we report the root, so ``q_std**2`` is the paper's
Delta); and ``q_range = max_i q_i - min_i q_i`` (the paper's Delta_2). Everything is computed in float64.

The Persian Rug counterpart (:func:`rug_model`) is the dense ``R`` (``n_s <= 2**13``), optionally scaled by
the ReLU gain ``a`` with bias ``b``: for it every row is identical up to signs, so the diagonal is exactly
``a``, the spreads of the diagonal, bias and interference variance are exactly 0, and ``Var nu_i`` equals
``a^2 sigma^2`` with the rug's ``sigma^2 = v (n_s/n_d - 1)``.

Plotting and table helpers at the end of the module do only I/O; ``decoderbench symmetry`` calls them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._validate import check_nd, check_ns, check_p, check_seed
from .data import SparseSampler, variance

#: A feature whose diagonal W_ii is below this is counted as dead (it never reconstructs its input).
DEAD_DIAG = 0.1


def third_central_moment(p: float) -> float:
    """kappa3 = E[(x - p/2)^3] for x = c u: p/4 - p^2/2 + p^3/4."""
    p = check_p(p)
    return p / 4.0 - p * p / 2.0 + p**3 / 4.0


def _as_W(W) -> torch.Tensor:
    """W checked (square, finite) on the CPU in its own floating dtype; sums are formed in float64."""
    W = torch.as_tensor(W).detach().to("cpu")
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square n_s x n_s matrix, got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        W = W.double()
    if not bool(torch.isfinite(W).all()):
        raise ValueError("W must be finite")
    return W


def _as_b(b, n_s: int) -> torch.Tensor:
    if b is None:
        return torch.zeros(n_s, dtype=torch.float64)
    b = torch.as_tensor(b).detach().to("cpu", torch.float64)
    if b.ndim == 0:
        b = b.expand(n_s).clone()
    if tuple(b.shape) != (n_s,):
        raise ValueError(f"b must be a scalar or have shape ({n_s},), got {tuple(b.shape)}")
    return b


def off_diagonal_sums(W, rows: int = 512) -> dict[str, torch.Tensor]:
    """Per-row sums over j != i of W_ij, W_ij^2, W_ij^3 and |W_ij|^3, and the diagonal (float64).

    Formed ``rows`` rows at a time in float64 with the diagonal entry zeroed (never subtracted), so memory
    stays O(rows n_s) and a row whose off-diagonal part is zero gives exactly 0.
    """
    W = _as_W(W)
    n = W.shape[0]
    out = {k: torch.empty(n, dtype=torch.float64) for k in ("s1", "s2", "s3", "a3")}
    for i0 in range(0, n, rows):
        blk = W[i0:i0 + rows].to(torch.float64, copy=True)  # never modify W itself
        idx = torch.arange(blk.shape[0])
        blk[idx, idx + i0] = 0.0
        sq = blk * blk
        out["s1"][i0:i0 + rows] = blk.sum(1)
        out["s2"][i0:i0 + rows] = sq.sum(1)
        out["s3"][i0:i0 + rows] = (sq * blk).sum(1)
        out["a3"][i0:i0 + rows] = (sq * blk.abs()).sum(1)
    out["diag"] = torch.diagonal(W).to(torch.float64).clone()
    return out


def _moments(s: dict, p: float) -> dict[str, torch.Tensor]:
    v = variance(p)
    var = v * s["s2"]
    skew = torch.where(var > 0, third_central_moment(p) * s["s3"] / var.clamp_min(1e-300) ** 1.5,
                       torch.zeros_like(var))
    return {"mean": 0.5 * p * s["s1"], "var": var, "skew": skew}


def interference_moments(W, p: float) -> dict[str, torch.Tensor]:
    """Exact per-row mean, variance and skewness of nu_i = sum_{j != i} W_ij x_j (float64 tensors)."""
    return _moments(off_diagonal_sums(W), check_p(p))


def _be_rows(s: dict) -> torch.Tensor:
    return torch.where(s["s2"] > 0, s["a3"] / s["s2"].clamp_min(1e-300) ** 1.5, torch.zeros_like(s["s2"]))


def berry_esseen_rows(W) -> torch.Tensor:
    """Per-row ratio sum_{j != i} |W_ij|^3 / (sum_{j != i} W_ij^2)^{3/2} (0 for a row with no off-diagonal)."""
    return _be_rows(off_diagonal_sums(W))


def berry_esseen_ratio(W) -> float:
    """Lambda of paper eq. 3: the largest per-row Berry-Esseen ratio."""
    return float(berry_esseen_rows(W).max())


def spread(q: torch.Tensor) -> tuple[float, float, float]:
    """(mean, root mean square deviation, max - min) of a per-row quantity."""
    q = q.to(torch.float64)
    m = q.mean()
    return float(m), float(((q - m) ** 2).mean().sqrt()), float(q.max() - q.min())


def diagnostics(W, b=None, p: float = 0.045, n_d: int | None = None, dead_threshold: float = DEAD_DIAG) -> dict:
    """Symmetry diagnostics of ``ReLU(W x + b)`` on the cell's data (plain floats, exact, no sampling).

    Keys (``*_mean``, ``*_std`` = RMS deviation, ``*_range`` = max - min across rows): ``diag``, ``bias``,
    ``bias_eff`` (``b_i + E nu_i``), ``nu_mean`` (``E nu_i``), ``nu_var`` (``Var nu_i``), ``sigma``
    (``sqrt(Var nu_i)``), ``sigma_rel`` (``sqrt(Var nu_i) / W_ii``, the noise in units of the signal gain, over
    live rows; ``sigma_rel_rms`` its root mean square); ``interference_skew`` (mean skewness of ``nu_i``,
    with ``_min``/``_max``); ``lambda_be`` (paper eq. 3) and ``lambda_be_median``; ``dead_features`` (``W_ii < dead_threshold``). With ``n_d``
    also ``welch_sigma = sqrt(v (n_s/n_d - 1))`` and ``sigma_rel_over_welch = sigma_rel_rms / welch_sigma``,
    which is >= 1 for any W of rank <= n_d without dead rows (paper eq. 6, appendix D: the rows of
    ``diag(W)^{-1} W`` have unit diagonal, so their squares sum to at least ``n_s^2 / n_d``); the rug attains 1.
    """
    p = check_p(p)
    s = off_diagonal_sums(W)
    diag = s["diag"]
    n_s = diag.shape[0]
    b = _as_b(b, n_s)
    mom = _moments(s, p)
    be = _be_rows(s)
    sigma = mom["var"].sqrt()
    live = diag >= dead_threshold
    out: dict = {"n_s": n_s, "p": p}
    for name, q in (("diag", diag), ("bias", b), ("bias_eff", b + mom["mean"]), ("nu_mean", mom["mean"]),
                    ("nu_var", mom["var"]), ("sigma", sigma)):
        out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_range"] = spread(q)
    if bool(live.any()):
        rel = sigma[live] / diag[live]
        out["sigma_rel_mean"], out["sigma_rel_std"], out["sigma_rel_range"] = spread(rel)
        out["sigma_rel_rms"] = float((rel * rel).mean().sqrt())
    else:
        out["sigma_rel_mean"] = out["sigma_rel_std"] = out["sigma_rel_range"] = out["sigma_rel_rms"] = None
    out["interference_skew"], out["interference_skew_std"], _ = spread(mom["skew"])
    out["interference_skew_min"] = float(mom["skew"].min())
    out["interference_skew_max"] = float(mom["skew"].max())
    out["lambda_be"] = float(be.max())
    out["lambda_be_median"] = float(be.median())
    out["dead_features"] = int((~live).sum())
    if n_d is not None:
        n_d = check_nd(n_d, n_s)
        out["welch_sigma"] = math.sqrt(variance(p) * (n_s / n_d - 1.0))
        if out["sigma_rel_rms"] is not None:
            out["sigma_rel_over_welch"] = out["sigma_rel_rms"] / out["welch_sigma"]
    return out


# The trained model and its file format live in the trained plugin (decoderbench_plugins.trained: model.py,
# fileformat.py); these names are re-exported here, lazily, for the diagnostics and the `symmetry` command.
_FROM_TRAINED = ("MODEL_FORMAT", "TrainedModel", "save_model", "read_model_file", "load_model")


def __getattr__(name):
    if name in _FROM_TRAINED:
        from decoderbench_plugins import trained

        return getattr(trained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    from .encoders import PersianRug

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
    from .encoders import PersianRug
    from .theory import cell_theory

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
    from .theory import cell_theory

    n_s = check_ns(n_s)
    n_d = check_nd(n_d, n_s)
    p = check_p(p)
    seed = check_seed(seed)
    train_info: dict = {}
    from decoderbench_plugins.trained import load_model

    if model_path is not None:
        model = load_model(model_path)
        if (model.n_s, model.n_d) != (n_s, n_d):
            raise ValueError(f"model path {str(model_path)!r} holds n_s={model.n_s}, n_d={model.n_d}, "
                             f"not the cell's n_s={n_s}, n_d={n_d}")
        train_info = {k: model.meta.get(k) for k in ("steps", "stop_reason", "total_train_time_s", "settings")}
        train_info["train_time_s"] = model.meta.get("total_train_time_s")
        train_info["reused"] = True
    else:
        from .runner import WorkUnit, run_unit

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
        W = _as_W(W)
        blocks.append((label, W[:block, :block].numpy(), _as_b(b, W.shape[0])[:block].numpy().reshape(-1, 1)))
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
