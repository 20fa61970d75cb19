"""An i.i.d. Gaussian encoder: the setting of AMP's state evolution (Donoho, Maleki & Montanari 2009).

``W_in`` (``n_d x n_s``) has i.i.d. ``N(0, 1/n_d)`` entries drawn from the run's seed (the same matrix in
every dtype: drawn in float64, then cast), ``W_out = W_in^T`` and ``R = W_in^T W_in``. Unlike the rug,
``R_ii`` is not exactly 1 (it is ``chi^2_{n_d} / n_d``) and the rows of ``W_in`` are not orthogonal, so
the encoder declares no capabilities: it is dense (``O(n_s n_d)`` per sample) and refuses
``n_s > 2**14``.

``interference(p)`` is computed for the drawn matrix, not for the ensemble. With
``nu_i = sum_{j != i} R_ij x_j``, ``s_i = sum_{j != i} R_ij`` and ``q_i = sum_{j != i} R_ij^2``, a
feature ``i`` has ``E nu_i = (p/2) s_i`` and ``Var nu_i = v q_i``. Averaging over a row drawn at
random (law of total variance):
``mu = (p/2) mean_i s_i``, ``sigma^2 = v mean_i q_i + (p/2)^2 var_i s_i``, with
``sum_i q_i = tr(R^2) - sum_i R_ii^2 = |W W^T|_F^2 - sum_i R_ii^2``: no ``n_s x n_s`` matrix, one
``n_d x n_d`` Gram matrix (``n_d^2 n_s`` operations, done once per encoder when first asked).
"""

from __future__ import annotations

import math

import torch

from decoderbench import Encoder, derive_seed, hookimpl
from decoderbench.validate import check_nd, check_ns, check_p, check_seed
from decoderbench.model.data import make_generator, variance

#: Largest n_s this dense encoder accepts (W_in alone is n_d * n_s entries).
GAUSSIAN_MAX_NS = 2**14


class Gaussian(Encoder):
    """i.i.d. Gaussian W_in with N(0, 1/n_d) entries (dense; AMP's setting)."""

    name = "gaussian"
    capabilities = frozenset()

    def __init__(self, n_s: int, n_d: int, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.n_s = check_ns(n_s)
        if self.n_s > GAUSSIAN_MAX_NS:
            raise ValueError(f"n_s must be at most 2**14 = {GAUSSIAN_MAX_NS} for the dense gaussian encoder, "
                             f"got {self.n_s}; use the rug encoder for larger n_s")
        self.n_d = check_nd(n_d, self.n_s)
        self.seed = check_seed(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        g = make_generator(derive_seed("gaussian-w-in", self.n_s, self.n_d, self.seed))
        w = torch.empty(self.n_d, self.n_s, dtype=dtype)
        chunk = max(1, 2**22 // self.n_s)
        for i in range(0, self.n_d, chunk):  # float64 draws, cast chunk by chunk
            k = min(chunk, self.n_d - i)
            w[i:i + k] = torch.randn(k, self.n_s, generator=g, dtype=torch.float64).div_(math.sqrt(self.n_d))
        self.W = w.to(self.device)
        self._interference: tuple[float, float, float] | None = None

    def _check(self, t: torch.Tensor, n: int, name: str) -> None:
        if t.shape[-1] != n:
            raise ValueError(f"{name} must have last dimension {n}, got shape {tuple(t.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.n_s, "x")
        return x @ self.W.to(x.dtype).T

    def adjoint(self, h: torch.Tensor) -> torch.Tensor:
        self._check(h, self.n_d, "h")
        return h @ self.W.to(h.dtype)

    def w_in(self) -> torch.Tensor:
        """The dense W_in (n_d x n_s)."""
        return self.W

    def _row_stats(self) -> tuple[float, float, float]:
        """(mean_i s_i, var_i s_i, mean_i q_i) in float64, computed once."""
        if self._interference is None:
            W = self.W.to(torch.float64)
            diag = (W * W).sum(0)  # R_ii = ||w_i||^2
            s = W.T @ W.sum(1) - diag  # sum_{j != i} R_ij
            G = W @ W.T  # n_d x n_d; tr(R^2) = tr(G^2) = |G|_F^2
            q_mean = (float(G.square().sum()) - float(diag.square().sum())) / self.n_s
            self._interference = (float(s.mean()), float(s.var(unbiased=False)), q_mean)
        return self._interference

    def interference(self, p: float) -> tuple[float, float]:
        p = check_p(p)
        s_mean, s_var, q_mean = self._row_stats()
        mu = 0.5 * p * s_mean
        sigma = math.sqrt(variance(p) * q_mean + 0.25 * p * p * s_var)
        return mu, sigma

    def describe(self) -> dict:
        return {"encoder": self.name}

    def __repr__(self) -> str:
        return f"Gaussian(n_s={self.n_s}, n_d={self.n_d}, seed={self.seed})"


@hookimpl
def decoderbench_register_encoders(register):
    register(Gaussian)
