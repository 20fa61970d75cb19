"""The linear decoder: x_hat = a z + b, with (a, b) the least-squares fit on training samples."""

from __future__ import annotations

import torch

from decoderbench import Decoder, hookimpl


class Linear(Decoder):
    name = "linear"
    kind = "elementwise"
    description = "a z + b, least squares"

    def fit(self, train):
        z, x = train.pairs(max(64, 2**21 // self.ctx.n_s) * 1)
        zf, xf = z.reshape(-1).double(), x.reshape(-1).double()
        zm, xm = zf.mean(), xf.mean()
        cov = ((zf - zm) * (xf - xm)).mean()
        a = cov / ((zf - zm) ** 2).mean()
        b = xm - a * zm
        self.a, self.b = float(a), float(b)
        return {"a": self.a, "b": self.b}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.a + self.b


@hookimpl
def decoderbench_register_decoders(register):
    register(Linear)
