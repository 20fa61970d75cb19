"""Elementwise activation decoders on ``z = W_out h``: relu, jumprelu, trec, prolu, gated.

Formulas (the paper's section 4 and the cited SAE papers), with ``y = a z + b``:

- relu (the paper's model): ``ReLU(a z + b)``.
- jumprelu (Rajamanoharan et al. 2024): ``y 1[y > theta]``, ``theta >= 0``.
- trec (Konda et al. 2014): the bias-free jumprelu, ``a z 1[a z > theta]``.
- prolu (Taggart 2024): ``a z 1[a z > 0] 1[a z + b > 0]``: the bias gates but does not shift.
- gated (Rajamanoharan et al. 2024): ``1[a_g z + b_g > 0] ReLU(a_m z + b_m)``, gate and magnitude
  sharing the rug's direction.

All are ``(a z + b) 1[z > t]`` for some ``(a, b, t)`` (see ``_fit``), and each is fitted by exact least
squares on pooled training pairs with a full scan of the threshold, so the fit is the global optimum of
the training loss, not a local one. In the scalar setting two pairs of these are the same family of
functions, and their fits therefore coincide: gated = jumprelu (the gate is a threshold ``t_g``; when
``t_g`` lies below the magnitude path's kink it is a relu, otherwise a jumprelu with threshold
``t_g``), and prolu = trec (``t = max(0, -b/a)``). They differ in how an SAE trains them, not in
what they can represent here. Gated is reported with ``a_g = a_m`` (its gate only depends on the sign
of ``a_g z + b_g``, so the scale is free: ``r_mag = 0`` in the paper's tying).

Option: ``fit_pairs`` (default ``2^21``), how many scalar pairs (z_i, x_i) the fit pools.

Fitted parameters are reported with the equivalent threshold ``t`` in z-space, the training loss, the
number of pairs used, and, for relu, the Gaussian theory's optimum (``a_theory``, ``b_theory``
shifted by the rug's interference mean ``mu``: ``relu_b - relu_a mu``) and its loss as ``predicted``
(the row's ``ratio_predicted - 1`` is then the departure from the Gaussian theory, as measured).
"""

from __future__ import annotations

import time

import torch

from decoderbench import Decoder, hookimpl

from . import _fit


class _ScalarFitted(Decoder):
    kind = "elementwise"
    Options = _fit.FitOptions

    def _solve(self, train, method: str) -> dict:
        return _fit.fit_pooled(self.ctx, train, method)

    @staticmethod
    def _report(res: dict, params: dict, t0: float) -> dict:
        return {**params, "train_loss": res["loss"], "fit_pairs": res["fit_pairs"], "scanned_pairs": res["scanned"],
                "fit_s": time.perf_counter() - t0}


class ReLU(_ScalarFitted):
    name = "relu"
    description = "ReLU(a z + b), the paper's model; (a, b) by exact least squares"

    def fit(self, train):
        t0 = time.perf_counter()
        r = self._solve(train, "relu")
        self.a, self.b = r["a"], r["b"]
        out = self._report(r, {"a": self.a, "b": self.b, "t": r["t"]}, t0)
        th = _fit.gaussian_predictions(self.ctx)
        out["a_theory"] = th["relu_a"]
        out["b_theory"] = th["relu_b"] - th["relu_a"] * self.ctx.mu
        out["predicted"], out["predicted_by"] = th["relu"], "relu_theory"
        return out

    def decode(self, z):
        return torch.relu(z * self.a + self.b)


class JumpReLU(_ScalarFitted):
    name = "jumprelu"
    description = "y 1[y > theta], y = a z + b, theta >= 0; exact least squares over the threshold"

    def fit(self, train):
        t0 = time.perf_counter()
        r = self._solve(train, "jump")
        self.a, self.b, self.theta = r["a"], r["b"], r["theta"]
        return self._report(r, {"a": self.a, "b": self.b, "theta": self.theta, "t": r["t"]}, t0)

    def decode(self, z):
        y = z * self.a + self.b
        return torch.where(y > self.theta, y, torch.zeros((), dtype=y.dtype, device=y.device))


class TReC(_ScalarFitted):
    name = "trec"
    description = "a z 1[a z > theta], theta >= 0 (bias-free JumpReLU)"

    def fit(self, train):
        t0 = time.perf_counter()
        r = self._solve(train, "scaled")
        self.a, self.theta = r["a"], r["a"] * r["t"]
        return self._report(r, {"a": self.a, "theta": self.theta, "t": r["t"]}, t0)

    def decode(self, z):
        y = z * self.a
        return torch.where(y > self.theta, y, torch.zeros((), dtype=y.dtype, device=y.device))


class ProLU(_ScalarFitted):
    name = "prolu"
    description = "a z 1[a z > 0] 1[a z + b > 0]: the bias gates, does not shift"

    def fit(self, train):
        t0 = time.perf_counter()
        r = self._solve(train, "scaled")
        self.a = r["a"]
        self.b = -self.a * r["t"]  # t = max(0, -b/a); at t = 0 any b >= 0 is the same function
        return self._report(r, {"a": self.a, "b": self.b, "t": r["t"]}, t0)

    def decode(self, z):
        y = z * self.a
        zero = torch.zeros((), dtype=y.dtype, device=y.device)
        return torch.where((y > 0) & (y + self.b > 0), y, zero)


class Gated(_ScalarFitted):
    name = "gated"
    description = "1[a_g z + b_g > 0] ReLU(a_m z + b_m), gate and magnitude sharing the direction"

    def fit(self, train):
        t0 = time.perf_counter()
        r = self._solve(train, "jump")
        self.a_m, self.b_m = r["a"], r["b"]
        self.a_g, self.b_g = r["a"], -r["a"] * r["t"]
        return self._report(r, {"a_g": self.a_g, "b_g": self.b_g, "a_m": self.a_m, "b_m": self.b_m, "t": r["t"]}, t0)

    def decode(self, z):
        gate = (z * self.a_g + self.b_g) > 0
        mag = torch.relu(z * self.a_m + self.b_m)
        return torch.where(gate, mag, torch.zeros((), dtype=mag.dtype, device=mag.device))


@hookimpl
def decoderbench_register_decoders(register):
    for cls in (ReLU, JumpReLU, TReC, ProLU, Gated):
        register(cls)
