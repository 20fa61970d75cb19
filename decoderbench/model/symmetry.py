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
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .._validate import check_nd, check_ns, check_p, check_seed
from .data import SparseSampler, interference_sigma, variance

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
        out["welch_sigma"] = interference_sigma(n_s, n_d, p)
        if out["sigma_rel_rms"] is not None:
            out["sigma_rel_over_welch"] = out["sigma_rel_rms"] / out["welch_sigma"]
    return out


def as_dense_W(W) -> torch.Tensor:
    """``W`` (a tensor, array or nested list) as a float64 CPU tensor, checked square (public, for plugins)."""
    return _as_W(W)


def as_bias(b, n_s: int) -> torch.Tensor:
    """``b`` (None, a scalar or a vector) as a float64 vector of length ``n_s`` (public, for plugins)."""
    return _as_b(b, n_s)
