"""Soft shrinkage, ``x_hat = a * softshrink(z - c, lam)``, as a decoderbench plugin.

``c`` is the median of the training ``z`` (the interference mean, mostly), ``lam`` is picked from a
grid of quantiles of ``|z - c|`` and ``a`` by least squares for each ``lam``. An example of a
third-party decoder: it registers through the entry-point group ``decoderbench`` (pyproject.toml).
"""

import torch

from decoderbench import Decoder, hookimpl


class SoftShrink(Decoder):
    name = "softshrink"
    kind = "elementwise"
    description = "a * softshrink(z - c, lam), c = median, (a, lam) fitted"

    def fit(self, train):
        z, x = train.pairs(max(16, 2**16 // self.ctx.n_s))
        z, x = z.reshape(-1).double(), x.reshape(-1).double()
        self.c = float(z.median())
        dev = torch.sort((z - self.c).abs()).values
        best = None
        for q in torch.linspace(0.5, 0.995, 45).tolist():
            lam = float(dev[int(q * (dev.numel() - 1))])
            s = torch.nn.functional.softshrink(z - self.c, lam)
            a = float((s * x).sum() / (s * s).sum().clamp_min(1e-30))
            loss = float(((x - a * s) ** 2).mean())
            if best is None or loss < best[0]:
                best = (loss, a, lam)
        _, self.a, self.lam = best
        return {"a": self.a, "lam": self.lam, "c": self.c, "train_loss": best[0]}

    def decode(self, z):
        return self.a * torch.nn.functional.softshrink(z - self.c, self.lam)


@hookimpl
def decoderbench_register_decoders(register):
    register(SoftShrink)
