"""Filtering decoders on ``z = W_out h``: topk and batchtopk (kind ``filtering``).

- topk (Makhzani & Frey 2013; Gao et al. 2024): per sample, keep the ``k`` largest entries of
  ``ReLU(a z + b)`` and zero the rest.
- batchtopk (Bussmann et al. 2024): keep the ``k * B`` largest entries of ``ReLU(a z + b)`` over the
  whole batch of ``B`` samples handed to ``decode`` (so its output depends on the batch, as the
  definition says; the harness scores in batches of ``ctx.eval_batch_size``).

Fitting (``k``, ``a``, ``b``): with ``a > 0`` the entries kept are the ``k`` largest ``z`` whatever
``(a, b)`` are, so for a given ``k`` the loss is that of a relu fitted on the kept pairs (the others
cost their ``x^2``), solved exactly by ``_fit.ThresholdFit.relu``. ``k`` is then searched coarse to
fine: a geometric grid (ratio about ``sqrt(2)``) from ``p n_s / 8`` to ``8 p n_s`` (widened while the
best ``k`` sits on its edge), then a golden-section search on the integers of the bracket around the
best point. Ties go to the smallest ``k``: past the point where ``k`` binds, the loss is the relu's
whatever ``k`` is, and the ``k`` reported is the smallest that does not bind on the training set.
``options``: ``k`` fixes ``k`` (no search); ``fit_pairs`` (default ``2^20``) the pooled pairs. Reported:
``k``, ``k / (p n_s)``, ``a``, ``b``, the training loss and how many ``k`` were tried.

batchtopk is fitted on batches of ``min(n_train, ctx.eval_batch_size)`` training samples.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from pydantic import Field, model_validator

from decoderbench import Decoder, hookimpl
from decoderbench.contract.options import PosInt, PosNumber

from . import _fit


#: Losses within this relative tolerance of the best are ties (a non-binding k gives the relu's loss).
TIE = 1e-9
#: Default pooled pairs for the topk fits (half the elementwise default: the k search costs more).
TOPK_PAIRS = 2**20


def search_k(loss_of, k0: int, k_max: int) -> tuple[int, dict, int]:
    """Minimise ``loss_of(k)["loss"]`` over integers ``1 <= k <= k_max``, coarse to fine.

    Ties (within ``TIE``) go to the smallest ``k``: once ``k`` no longer binds, every larger ``k`` gives
    the same loss, and the smallest such ``k`` is the one reported. Returns ``(k, result, n_tried)``.
    """
    cache: dict[int, dict] = {}

    def ev(k):
        if k not in cache:
            cache[k] = loss_of(k)
        return cache[k]["loss"]

    def best_of(ks):
        ls = [ev(k) for k in ks]
        m = min(ls)
        return next(i for i, v in enumerate(ls) if v <= m + TIE * abs(m))

    lo_f, hi_f = max(1.0, k0 / 8.0), min(float(k_max), 8.0 * k0)
    while True:  # coarse: a geometric grid, ratio about sqrt(2), widened while the best is on an edge
        n = max(2, int(math.ceil(2 * math.log2(max(hi_f / lo_f, 1.0 + 1e-9)))) + 1)
        grid = sorted({min(k_max, max(1, int(round(v)))) for v in np.geomspace(lo_f, hi_f, n)})
        i = best_of(grid)
        if i == 0 and grid[0] > 1:
            lo_f = max(1.0, lo_f / 8.0)
        elif i == len(grid) - 1 and grid[-1] < k_max:
            hi_f = min(float(k_max), hi_f * 8.0)
        else:
            break
    # fine: golden-section search on the integers of the bracket (ties keep the left point)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    while hi - lo > 3:
        m1 = hi - int(round(g * (hi - lo)))
        m2 = lo + int(round(g * (hi - lo)))
        if m1 >= m2:
            m1, m2 = (lo + hi) // 2, (lo + hi) // 2 + 1
        if best_of([m1, m2]) == 0:
            hi = m2
        else:
            lo = m1
    pts = sorted(set(range(lo, hi + 1)) | set(cache))
    best = pts[best_of(pts)]
    return best, cache[best], len(cache)


class TopKOptions(_fit.FitOptions):
    fit_pairs: PosNumber = Field(TOPK_PAIRS, description="scalar pairs (z_i, x_i) the fit pools")
    k: PosInt | None = Field(None, description="entries kept per sample (per unit of the batch for batchtopk), "
                                               "1..n_s; default: searched on the training pairs")

    @model_validator(mode="after")
    def _k_at_most_n_s(self, info):
        cell = (info.context or {}).get("cell")
        if self.k is not None and cell is not None and self.k > cell.n_s:
            raise ValueError(f"k must be an integer in [1, n_s={cell.n_s}], got {self.k}")
        return self


class _TopKBase(Decoder):
    kind = "filtering"
    Options = TopKOptions

    def _ranks(self, z: np.ndarray) -> tuple[np.ndarray, int, int]:
        """``(rank, unit, rows)``: each pair's rank (0 = largest z) within its group, how many ``k``
        a group keeps per unit of ``k``, and the training rows used."""
        raise NotImplementedError  # pragma: no cover

    def fit(self, train):
        t0 = time.perf_counter()
        n_s = self.ctx.n_s
        z, x = _fit.training_matrix(train, _fit.n_fit_samples(self.ctx, TOPK_PAIRS))
        rank, unit, rows = self._ranks(z)
        z, x, rank = z[:rows].ravel(), x[:rows].ravel(), rank[:rows].ravel()
        order = np.argsort(z)  # one sort; every k keeps a subsequence of it
        z, x, rank = z[order], x[order], rank[order]
        n_total = z.size
        xx_total = float(np.dot(x, x))
        keep0 = _fit.initial_keep(self.ctx.p)
        for keep in ((keep0, 1.0) if keep0 < 1 else (1.0,)):  # the top of z first; all of it if the kink lands low
            c = n_total - int(math.ceil(keep * n_total))
            zc, xc, rc = z[c:], x[c:], rank[c:]

            def loss_of(k, zc=zc, xc=xc, rc=rc):
                sel = rc < k * unit
                zk, xk = zc[sel], xc[sel]
                f = _fit.ThresholdFit(zk, xk, n_total=n_total, xx_rest=xx_total - float(np.dot(xk, xk)),
                                      presorted=True)
                return f.relu(t_min=z[c - 1] if c > 0 else -np.inf)

            if self.opts.k is not None:
                k = self.opts.k
                res, tried = loss_of(k), 1
            else:
                k, res, tried = search_k(loss_of, max(1, int(round(self.ctx.p * n_s))), n_s)
            if c == 0 or res["t"] > zc[int(0.1 * (zc.size - 1))]:
                break
        self.k, self.a, self.b = int(k), res["a"], res["b"]
        return {"k": self.k, "k_over_pns": self.k / (self.ctx.p * n_s), "a": self.a, "b": self.b, "t": res["t"],
                "train_loss": res["loss"], "k_tried": tried, "fit_pairs": n_total, "fit_s": time.perf_counter() - t0}


class TopK(_TopKBase):
    name = "topk"
    description = "keep the k largest of ReLU(a z + b) per sample; k, a, b fitted"

    def _ranks(self, z):
        rank = np.empty(z.shape, dtype=np.int64)
        np.put_along_axis(rank, np.argsort(-z, axis=1), np.arange(z.shape[1])[None, :], axis=1)
        return rank, 1, z.shape[0]

    def decode(self, z):
        y = torch.relu(z * self.a + self.b)
        k = min(self.k, y.shape[-1])
        vals, idx = torch.topk(y, k, dim=-1)
        return torch.zeros_like(y).scatter_(-1, idx, vals)


class BatchTopK(_TopKBase):
    name = "batchtopk"
    description = "keep the k*B largest of ReLU(a z + b) over a batch of B; k, a, b fitted"

    def _ranks(self, z):

        bsz = min(z.shape[0], self.ctx.eval_batch_size)
        rows = z.shape[0] - z.shape[0] % bsz  # whole batches only
        rank = np.zeros(z.shape, dtype=np.int64)
        for s in range(0, rows, bsz):
            chunk = z[s:s + bsz].ravel()
            r = np.empty(chunk.size, dtype=np.int64)
            r[np.argsort(-chunk)] = np.arange(chunk.size)
            rank[s:s + bsz] = r.reshape(bsz, -1)
        return rank, bsz, rows

    def decode(self, z):
        y = torch.relu(z * self.a + self.b)
        flat = y.reshape(-1)
        m = min(self.k * y.shape[0], flat.numel())
        if m >= flat.numel():
            return y
        thr = torch.topk(flat, m, sorted=False).values.min()  # the m-th largest value
        return torch.where(y >= thr, y, torch.zeros((), dtype=y.dtype, device=y.device))


@hookimpl
def decoderbench_register_decoders(register):
    for cls in (TopK, BatchTopK):
        register(cls)
