"""The activations of the trained toy model ``f(x) = act(W_out W_in x + b)``: one :class:`Arch` each.

With ``h = W_in x`` (the code, ``n_d`` per sample) and ``y = W_out h + b`` (the pre-activation, ``n_s``):

============  ==========================================================  =========================================
activation    output                                                      trained besides W_in, W_out
============  ==========================================================  =========================================
relu          ``ReLU(y)`` (the paper's model, section 2)                   ``b``
linear        ``y`` (the affine baseline; optimum ``v (1 - r)``)           ``b``
topk          the ``k`` largest entries of ``ReLU(y)`` per sample, the     ``b``
              rest 0 (Makhzani & Frey 2013; Gao et al. 2024)
batchtopk     the ``k B`` largest entries of ``ReLU(y)`` over a batch of   ``b``
              ``B`` samples (Bussmann et al. 2024)
jumprelu      ``y 1[y > theta]`` (Rajamanoharan et al. 2024b)             ``b``, ``theta`` (per feature, >= 0)
trec          ``m 1[m > theta]``, ``m = W_out h`` (Konda et al. 2014:       ``theta`` (per feature, >= 0); no bias
              the bias-free JumpReLU)
prolu         ``m 1[m > 0] 1[m + b > 0]``, ``m = W_out h`` (Taggart 2024:   ``b`` (it gates, does not shift)
              the bias gates but does not shift)
gated         ``1[m + b > 0] ReLU(exp(r_mag) m + b_mag)``, ``m = W_out h``  ``b`` (= b_gate), ``r_mag``, ``b_mag``
              (Rajamanoharan et al. 2024a, the tied form of their 3.2:
              W_mag = exp(r_mag) W_gate)
============  ==========================================================  =========================================

Gradients through the steps (the Heaviside ``1[.]`` has derivative 0 almost everywhere):

* jumprelu and trec: ``theta`` is trained with the straight-through pseudo-derivative of Rajamanoharan et al.
  2024b ("Jumping ahead", eq. 11): ``d/dtheta [y 1[y > theta]] := -(theta / eps) K((y - theta) / eps)`` with the
  rectangle kernel ``K(u) = 1[|u| < 1/2]`` and bandwidth ``eps`` (option ``bandwidth``, default
  :data:`BANDWIDTH` = 0.01, in units of ``y``; ``y`` is O(1) here: the diagonal is about 1.3 and
  ``x`` lies in [0, 1]); ``d/dy = 1[y > theta]``. ``theta`` starts at :data:`THETA_INIT` = 0.001 (their
  initialisation) and is projected onto ``theta >= 0`` after every Adam step. The toy model's loss has no
  sparsity term, so only the reconstruction moves ``theta``.
* prolu: Taggart's ``ProLU_ReLU`` gradient, ``d/dm = d/db = 1[m > 0] 1[m + b > 0]`` (the bias gets the gradient
  it would get in ``ReLU(m + b)`` on the active set).
* gated: the gate gets its gradient from the auxiliary loss of Rajamanoharan et al. 2024a (eq. 8), the
  reconstruction from ``ReLU(m + b_gate)`` through the decoder, which is the identity in the toy model; their
  L1 sparsity term is absent because the toy model's loss has none. The training loss is the sum of the two
  reconstructions; the stopping rule and every reported loss use the first, ``f``'s own.
* topk, batchtopk: the kept entries carry the gradient of ReLU; ``k`` is fixed (option ``k``, default
  ``round(p n_s)``, the expected number of active features, at least 1). BatchTopK keeps the ``k B`` largest
  over the batch it is given: the training batch (``B = batch``, 1024) and, at evaluation, the harness's
  batch (``ctx.eval_batch_size``), as the fixed-rug ``batchtopk`` does.

Two recipes for topk and batchtopk (option ``recipe``):

* ``paper`` (the default): the paper's protocol, the same for every architecture (the trainer's docstring).
* ``practitioner``: TopK as sparse-autoencoder practitioners train it (Gao et al. 2024, openai/sparse_autoencoder;
  saprmarks/dictionary_learning ``trainers/top_k.py``), mapped onto the toy model. There the SAE's decoder maps
  latents to activations and its encoder activations to latents; here ``W_in`` maps the features ``x`` to ``h``
  (the SAE decoder's role: its column ``j`` is feature ``j``'s direction) and ``act(W_out h + b)`` maps ``h``
  back to the features (the SAE encoder's role), whose output is itself the reconstruction. So:

  - tied initialisation: ``W_in``'s columns scaled to unit norm, ``W_out = W_in^T``;
  - unit-norm "decoder" columns: ``W_in``'s columns renormalised after every Adam step (dictionary_learning
    also removes the gradient's component along each column before the step; not done here);
  - AuxK (Gao et al. 2024, appendix A.2): a feature that has not fired (output > 0) in the last
    :data:`DEAD_STEPS` training batches is dead; the ``k_aux = n_d / 2`` (at most the number dead) largest
    pre-activations ``ReLU(W_out h + b)`` among dead features reconstruct the residual ``e = x - f(x)``
    (detached), and the loss adds ``AUXK_ALPHA = 1/32`` times ``|e - e_aux|^2 / |e - mean e|^2`` (the
    normalised form of both references). In the toy model the reconstruction lives in the latent space itself,
    so a dead feature is pulled toward its own ``x_j`` on the samples where it ranks among the ``k_aux``;
  - k annealing: ``k`` falls linearly from ``K_ANNEAL_START = 4`` times its value to its value over the first
    ``K_ANNEAL_STEPS`` steps (the stopping rule looks only after them);
  - ``trained-topk-practitioner`` and ``trained-batchtopk-practitioner`` sweep ``k`` over ``K_MULTS`` (1, 1.5, 2)
    times ``p n_s`` (rounded, at least 1), each on its own training stream, and keep the ``k`` whose training
    loss (the mean of the last window of training batches: no evaluation sample is used) is least; the row's
    params name every ``k``'s training loss, steps and stop reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from decoderbench.errors import BadInput

#: Bandwidth ``eps`` of the rectangle kernel in the JumpReLU/TRec threshold pseudo-derivative.
BANDWIDTH = 0.01
#: Initial threshold of JumpReLU/TRec (Rajamanoharan et al. 2024b initialise theta at 0.001).
THETA_INIT = 1e-3

#: TopK training recipes (option ``recipe``): the paper's protocol, or the practitioners' (module docstring).
RECIPES = ("paper", "practitioner")
#: AuxK loss weight (Gao et al. 2024; dictionary_learning's ``auxk_alpha``).
AUXK_ALPHA = 1.0 / 32.0
#: A feature is dead after this many training batches without firing (1024 samples each: about 1.3e5 samples).
DEAD_STEPS = 128
#: k annealing: k starts at this multiple of its value and reaches it after K_ANNEAL_STEPS steps.
K_ANNEAL_START = 4
K_ANNEAL_STEPS = 2000
#: The practitioner decoders' sweep of k, in multiples of p n_s.
K_MULTS = (1.0, 1.5, 2.0)


class _JumpFn(torch.autograd.Function):
    """``y 1[y > theta]`` with the straight-through pseudo-derivative for ``theta``."""

    @staticmethod
    def forward(ctx, y, theta, eps):
        keep = y > theta
        ctx.save_for_backward(y, theta, keep)
        ctx.eps = float(eps)
        return torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))

    @staticmethod
    def backward(ctx, g):
        y, theta, keep = ctx.saved_tensors
        eps = ctx.eps
        gy = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
        near = ((y - theta).abs() < 0.5 * eps).to(g.dtype)
        gtheta = -(theta / eps) * near * g
        gtheta = gtheta.reshape(-1, theta.shape[-1]).sum(0)
        return gy, gtheta, None


class _ProLUFn(torch.autograd.Function):
    """``m 1[m > 0] 1[m + b > 0]`` with Taggart's ProLU_ReLU gradient (d/dm = d/db = 1 on the active set)."""

    @staticmethod
    def forward(ctx, m, b):
        active = (m > 0) & (m + b > 0)
        ctx.save_for_backward(active)
        return torch.where(active, m, torch.zeros((), dtype=m.dtype, device=m.device))

    @staticmethod
    def backward(ctx, g):
        (active,) = ctx.saved_tensors
        ga = torch.where(active, g, torch.zeros((), dtype=g.dtype, device=g.device))
        return ga, ga.reshape(-1, ga.shape[-1]).sum(0)


def _topk(r: torch.Tensor, k: int) -> torch.Tensor:
    k = min(int(k), r.shape[-1])
    vals, idx = torch.topk(r, k, dim=-1)
    return torch.zeros_like(r).scatter(-1, idx, vals)


def _batchtopk(r: torch.Tensor, k: int) -> torch.Tensor:
    flat = r.reshape(-1)
    m = min(int(k) * r.shape[0], flat.numel())
    if m >= flat.numel():
        return r
    thr = torch.topk(flat.detach(), m, sorted=False).values.min()  # the m-th largest value
    return torch.where(r >= thr, r, torch.zeros((), dtype=r.dtype, device=r.device))


def k_for(n_s: int, p: float, mult: float = 1.0) -> int:
    """``k = round(mult p n_s)``, at least 1 and at most ``n_s``: the default k (mult 1) and the practitioner sweep's."""
    return max(1, min(n_s, int(round(mult * p * n_s))))


@dataclass(frozen=True)
class Arch:
    """One activation: its name, which of ``b`` and the extra per-feature tensors it trains, its options."""

    name: str
    description: str
    trains_b: bool = True
    extras: tuple = ()  # names of extra per-feature parameters, in checkpoint order
    options: tuple = ()  # architecture options (besides the protocol's)

    def defaults(self, n_s: int, p: float) -> dict:
        """The architecture options' defaults at a cell."""
        out = {}
        if "k" in self.options:
            out["k"] = k_for(n_s, p)
        if "bandwidth" in self.options:
            out["bandwidth"] = BANDWIDTH
        return out

    def init_extras(self, n_s: int, device, dtype) -> dict[str, torch.Tensor]:
        init = {"theta": THETA_INIT, "r_mag": 0.0, "b_mag": 0.0}
        return {e: torch.full((n_s,), init[e], device=device, dtype=dtype) for e in self.extras}

    def project(self, extras: dict) -> None:
        """Keep the parameters in their domain after an optimiser step (theta >= 0)."""
        if "theta" in extras:
            with torch.no_grad():
                extras["theta"].clamp_(min=0.0)

    def act(self, m: torch.Tensor, b: torch.Tensor, extras: dict, opts: dict) -> torch.Tensor:
        """The model's output from ``m = W_out h`` (before the bias)."""
        n = self.name
        if n == "relu":
            return torch.relu(m + b)
        if n == "linear":
            return m + b
        if n == "topk":
            return _topk(torch.relu(m + b), opts["k"])
        if n == "batchtopk":
            return _batchtopk(torch.relu(m + b), opts["k"])
        if n == "jumprelu":
            return _JumpFn.apply(m + b, extras["theta"], opts["bandwidth"])
        if n == "trec":
            return _JumpFn.apply(m, extras["theta"], opts["bandwidth"])
        if n == "prolu":
            return _ProLUFn.apply(m, b)
        if n == "gated":
            gate = (m + b) > 0
            mag = torch.relu(m * torch.exp(extras["r_mag"]) + extras["b_mag"])
            return torch.where(gate, mag, torch.zeros((), dtype=mag.dtype, device=mag.device))
        raise AssertionError(n)  # pragma: no cover - ARCHS is closed

    def k_at(self, opts: dict, step: int) -> dict:
        """The options at a training step: the practitioner recipe's annealed ``k`` (else ``opts`` as given)."""
        if opts.get("recipe") != "practitioner" or "k" not in opts or step >= K_ANNEAL_STEPS:
            return opts
        k0 = K_ANNEAL_START * opts["k"]
        return {**opts, "k": max(opts["k"], int(round(k0 + (opts["k"] - k0) * step / K_ANNEAL_STEPS)))}

    def aux(self, m: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """An auxiliary training loss (gated: the gate path's own reconstruction), else None."""
        if self.name == "gated":
            return ((torch.relu(m + b).to(x.dtype) - x) ** 2).mean()
        return None


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("relu", "ReLU(W_out W_in x + b), the paper's model"),
    Arch("linear", "W_out W_in x + b, the affine baseline"),
    Arch("topk", "the k largest of ReLU(W_out W_in x + b) per sample, k = round(p n_s)", options=("k", "recipe")),
    Arch("batchtopk", "the k B largest of ReLU(W_out W_in x + b) over a batch of B", options=("k", "recipe")),
    Arch("jumprelu", "y 1[y > theta], y = W_out W_in x + b, theta by a straight-through estimator",
         extras=("theta",), options=("bandwidth",)),
    Arch("trec", "m 1[m > theta], m = W_out W_in x (no bias), theta by a straight-through estimator",
         trains_b=False, extras=("theta",), options=("bandwidth",)),
    Arch("prolu", "m 1[m > 0] 1[m + b > 0], m = W_out W_in x: the bias gates, does not shift"),
    Arch("gated", "1[m + b > 0] ReLU(exp(r_mag) m + b_mag), m = W_out W_in x (tied gated SAE)",
         extras=("r_mag", "b_mag")),
)}


#: The architectures that take the option ``recipe`` (each also trained as ``trained-<a>-practitioner``).
PRACTITIONER_ARCHS = tuple(a.name for a in ARCHS.values() if "recipe" in a.options)


def check_arch_options(arch: Arch, options: dict, n_s: int, p: float, who: str) -> dict:
    """The architecture options (defaults filled in), validated; ValueError names a bad one."""
    out = arch.defaults(n_s, p)
    if "k" in arch.options and "k" in options:
        k = options["k"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k != int(k) \
                or not 1 <= int(k) <= n_s:
            raise BadInput(f"{who} option k must be an integer in 1..n_s={n_s}, got {k!r}")
        out["k"] = int(k)
    if "recipe" in arch.options and "recipe" in options:
        rec = options["recipe"]
        if rec not in RECIPES:
            raise BadInput(f"{who} option recipe must be one of {', '.join(RECIPES)}, got {rec!r}")
        if rec != "paper":  # (the paper's recipe is the default and stays out of the cache key: older models stay valid)
            out["recipe"] = rec
    if "bandwidth" in arch.options and "bandwidth" in options:
        e = options["bandwidth"]
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or not e > 0:
            raise BadInput(f"{who} option bandwidth must be a finite number > 0, got {e!r}")
        out["bandwidth"] = float(e)
    return out
