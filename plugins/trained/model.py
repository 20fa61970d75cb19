"""A trained toy model ``f(x) = act(W_out W_in x + b)`` (paper section 2): its tensors, its encoder, its decoder.

``encode(x) = x W_in^T`` is the code ``h`` (``n_d`` per sample): the harness applies it (``decoder.input_encoder``)
and hands ``decode`` only ``h``. ``decode(h) = act(h W_out^T + b)`` with the activation of :mod:`.arch`;
``forward(x) = decode(encode(x))`` (the same floating-point operations, in the same order, as the harness).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .arch import ARCHS


@dataclass
class TrainedModel:
    """``f(x) = act(W_out W_in x + b)`` with its training record in ``meta``.

    ``arch`` names the activation (``relu`` by default, the paper's model), ``extras`` holds its extra
    per-feature tensors (``theta``; ``r_mag``, ``b_mag``), ``arch_options`` its options (``k``, ``bandwidth``).
    """

    W_in: torch.Tensor
    W_out: torch.Tensor
    b: torch.Tensor
    meta: dict = field(default_factory=dict)
    arch: str = "relu"
    extras: dict = field(default_factory=dict)
    arch_options: dict = field(default_factory=dict)
    #: For a model read from a file: whether its tensors matched the file's content hash (None: not from a file).
    content_verified: bool | None = None

    @property
    def n_s(self) -> int:
        return self.W_in.shape[1]

    @property
    def n_d(self) -> int:
        return self.W_in.shape[0]

    def W(self) -> torch.Tensor:
        """W = W_out W_in (n_s x n_s), float64 on the CPU."""
        return self.W_out.detach().cpu().double() @ self.W_in.detach().cpu().double()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_in.to(x.device, x.dtype).T

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        m = h @ self.W_out.to(h.device, h.dtype).T
        extras = {k: v.to(h.device, h.dtype) for k, v in self.extras.items()}
        return ARCHS[self.arch].act(m, self.b.to(h.device, h.dtype), extras, self.arch_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
