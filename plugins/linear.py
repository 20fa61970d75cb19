"""The linear decoder: ``x_hat = a z + b``, with ``(a, b)`` the least-squares fit on training pairs.

On the rug the optimum is ``a = r`` and ``b = p/2`` (when column 0 is not in ``S``), with loss exactly
``v (1 - r)``: the best linear map of rank ``n_d`` (on i.i.d. features: the top n_d of n_s equal eigenvalues kept), reported as ``predicted``. Option:
``fit_pairs`` (default ``2^21``), how many scalar pairs the fit pools.
"""

from __future__ import annotations

import time

import torch

from decoderbench import Decoder, hookimpl

from . import _fit


class Linear(Decoder):
    name = "linear"
    kind = "elementwise"
    description = "a z + b, least squares"
    Options = _fit.FitOptions

    def fit(self, train):
        t0 = time.perf_counter()
        z, x = _fit.training_matrix(train, _fit.n_fit_samples(self.ctx))
        res = _fit.affine_fit(z, x)
        self.a, self.b = res["a"], res["b"]
        return {"a": self.a, "b": self.b, "train_loss": res["loss"], "fit_pairs": z.size,
                "fit_s": time.perf_counter() - t0,
                "predicted": _fit.gaussian_predictions(self.ctx)["linear"], "predicted_by": "linear"}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.a + self.b


@hookimpl
def decoderbench_register_decoders(register):
    register(Linear)
