"""The exact oracle: ``x_hat_i = E[x_i | z_i]`` under the exact law of the rug's interference (no Gaussian
assumption), kind ``reference``.

On the rug every feature sees the same interference law (``R_ij`` depends only on ``i XOR j``), computed once
per cell by :func:`decoderbench.model.exact.interference_law` from the encoder's column mask: the characteristic
function ``prod_{j != i} (1 - p + p (exp(i R_ij t) - 1)/(i R_ij t))`` inverted by FFT. ``fit`` tabulates
``E[x | z] = p m1(z) / ((1 - p) f0(z) + p f1(z))`` on that law's grid (spacing ``1/1024``) and ``decode``
interpolates linearly. Its expected loss is the exact elementwise MMSE of the cell's rug
(``mmse_elementwise_exact``, reported as ``predicted``): no elementwise or filtering decoder can beat it in
expectation, so it is the reference the Gaussian ``oracle`` only approximates where ``p n_s`` is small.

Needs the rug's column mask (``encoder.mask``); on another encoder the unit is skipped with that reason.
"""

from __future__ import annotations

import numpy as np
import torch

from decoderbench import Decoder, Skip, hookimpl
from decoderbench.contract.options import Options


class OracleExact(Decoder):
    name = "oracle-exact"
    kind = "reference"
    description = "E[x | z] under the exact interference law of the cell's rug (characteristic function + FFT)"

    class Options(Options):  # no options: any option given is refused before a sweep starts
        pass

    def fit(self, train):
        from decoderbench.model import exact

        enc = self.ctx.encoder
        mask = getattr(enc, "mask", None)
        if mask is None:
            raise Skip(f"oracle-exact needs the Persian Rug's column mask; encoder {type(enc).__name__} has none")
        from decoderbench.model.hadamard import fwht

        n_d = int(self.ctx.cell.n_d)
        g = fwht(mask.detach().to("cpu", torch.float64).reshape(1, -1)).reshape(-1).numpy() / n_d
        g = np.rint(g * n_d) / n_d
        g[0] = 0.0
        law = exact.interference_law(g, self.ctx.p, integer_scale=n_d)
        z, mean = exact.conditional_mean_table(law)
        self.lo, self.h = float(z[0]), float(law.h)
        self.vals = torch.as_tensor(mean, dtype=torch.float64)
        mmse = exact.mmse_elementwise_exact(law)
        return {"predicted": mmse, "predicted_by": "mmse_elementwise_exact", "table_points": int(z.size),
                "grid_h": self.h, "interference_atom": law.a0}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        vals = self.vals.to(z.device)
        n = vals.numel()
        u = ((z.to(torch.float64) - self.lo) / self.h).clamp(0, n - 1)
        i = u.clamp(max=n - 2).floor()
        il = i.long()
        return torch.lerp(vals[il], vals[il + 1], u - i).to(z.dtype)


@hookimpl
def decoderbench_register_decoders(register):
    register(OracleExact)
