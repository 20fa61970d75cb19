"""Adam on (W_in, W_out, b and the architecture's extras) with the plateau rule, caps, divergence guard and
checkpointing (paper appendix G)."""

from __future__ import annotations

import math
import time
from collections import deque

import torch

from .arch import ARCHS, AUXK_ALPHA, DEAD_STEPS, K_ANNEAL_STEPS, Arch
from .model import TrainedModel
from .rule import PlateauRule
from .settings import Settings


def _unit_columns_(W: torch.Tensor) -> torch.Tensor:
    """Scale ``W``'s columns to unit norm, in place (the practitioner recipe's feature directions)."""
    return W.div_(W.norm(dim=0, keepdim=True).clamp_min(1e-12))


class _Trainer:
    """Adam on the model's parameters with the plateau rule, caps, divergence guard and checkpointing.

    Initialisation (the same draws for every architecture, so all start from one ``W``): ``W_in`` then ``W_out``
    uniform on ``(-1/sqrt(fan_in), 1/sqrt(fan_in))`` from ``generator`` (torch's ``nn.Linear`` default for these
    shapes), ``b = 0``, the extras at their :meth:`Arch.init_extras` values (no random draws). The practitioner
    recipe (option ``recipe``, :mod:`.arch`) then scales ``W_in``'s columns to unit norm and ties ``W_out = W_in^T``,
    keeps the columns at unit norm after every step, adds the AuxK loss and anneals ``k``.
    """

    def __init__(self, n_s: int, n_d: int, p: float, settings: Settings, device: torch.device,
                 dtype: torch.dtype, generator: torch.Generator, arch: Arch | None = None,
                 arch_options: dict | None = None):
        self.n_s, self.n_d, self.p, self.s = n_s, n_d, p, settings
        self.arch = arch or ARCHS["relu"]
        self.arch_options = dict(arch_options or {})
        self.device, self.dtype = device, dtype
        bi, bo = 1.0 / math.sqrt(n_s), 1.0 / math.sqrt(n_d)
        self.W_in = ((torch.rand(n_d, n_s, generator=generator, device=device, dtype=dtype) * 2 - 1) * bi)
        self.W_out = ((torch.rand(n_s, n_d, generator=generator, device=device, dtype=dtype) * 2 - 1) * bo)
        self.b = torch.zeros(n_s, device=device, dtype=dtype)
        self.practitioner = self.arch_options.get("recipe") == "practitioner"
        if self.practitioner:  # tied initialisation with unit-norm feature directions (the columns of W_in)
            _unit_columns_(self.W_in)
            self.W_out = self.W_in.T.clone()
        #: training batches since each feature last fired (the AuxK dead-feature count)
        self.since_fired = torch.zeros(n_s, dtype=torch.long, device=device)
        self.n_dead: int | None = None
        self.extras = self.arch.init_extras(n_s, device, dtype)
        self._names = ("W_in", "W_out") + (("b",) if self.arch.trains_b else ()) + tuple(self.extras)
        self.params = [self._tensor(n).requires_grad_() for n in self._names]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr_at(0))
        self.rule = PlateauRule(settings.window)
        self.step = 0
        self.stop_reason: str | None = None
        self.total_time_s = 0.0
        self.last_losses: deque = deque(maxlen=settings.window)
        self.diverged_at: int | None = None

    def _tensor(self, name: str) -> torch.Tensor:
        return self.extras[name] if name in self.extras else getattr(self, name)

    #: Steps between host checks of the losses, by device type (a check syncs the device).
    SYNC_EVERY = {"cpu": 1}

    # -- checkpoint ------------------------------------------------------------------------------------
    def checkpoint(self, gen_state: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extra = {}
        for name, prm in zip(self._names, self.params):
            st = self.opt.state.get(prm, {})
            for k in ("exp_avg", "exp_avg_sq", "step"):
                if k in st:
                    extra[f"adam.{name}.{k}"] = torch.as_tensor(st[k]).reshape(-1) if k == "step" else st[k]
        if self.practitioner:
            extra["aux.since_fired"] = self.since_fired
        extra["rule_losses"] = torch.tensor(list(self.rule.losses), dtype=torch.float64)
        extra["last_losses"] = torch.tensor(list(self.last_losses), dtype=torch.float64)
        if gen_state is not None:
            extra["generator_state"] = gen_state
        return extra

    def restore(self, tensors: dict, meta: dict) -> torch.Tensor | None:
        """Load a checkpoint (weights, Adam state, windows); returns the stored generator state, if any.

        KeyError or a shape mismatch means the file is not this model's checkpoint."""
        with torch.no_grad():
            for name in ("W_in", "W_out", "b") + tuple(self.extras):
                src = tensors[f"extra.{name}" if name in self.extras else name]
                dst = self._tensor(name)
                if tuple(src.shape) != tuple(dst.shape):
                    raise ValueError(f"checkpoint tensor {name} has shape {tuple(src.shape)}, "
                                     f"expected {tuple(dst.shape)}")
                dst.copy_(src.to(self.device, self.dtype))
        for name, prm in zip(self._names, self.params):
            if f"adam.{name}.exp_avg" in tensors:
                self.opt.state[prm] = {
                    "step": tensors[f"adam.{name}.step"].reshape(()).to(torch.float32),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].to(self.device, self.dtype),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(self.device, self.dtype),
                }
        if self.practitioner and "aux.since_fired" in tensors:
            self.since_fired = tensors["aux.since_fired"].to(self.device, torch.long).clone()
        self.rule = PlateauRule(self.s.window, tensors["rule_losses"].tolist())
        self.last_losses = deque(tensors["last_losses"].tolist(), maxlen=self.s.window)
        self.step = int(meta["steps"])
        self.stop_reason = meta.get("stop_reason")
        self.total_time_s = float(meta.get("total_train_time_s", 0.0))
        return tensors.get("generator_state")

    # -- the loop --------------------------------------------------------------------------------------
    @property
    def rule_start(self) -> int:
        """First step whose loss the stopping rule sees: after the warm phase, and after k's annealing."""
        return max(self.s.rule_start, K_ANNEAL_STEPS if self.practitioner else 0)

    def loss_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's reconstruction loss, the loss Adam minimises): equal except for gated (plus its
        auxiliary gate loss) and the practitioner recipe (plus AuxK)."""
        use_ac = self.s.autocast == "bf16"
        opts = self.arch.k_at(self.arch_options, self.step)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_ac):
            m = (x @ self.W_in.T) @ self.W_out.T
            y = self.arch.act(m, self.b, self.extras, opts)
            aux = self.arch.aux(m, self.b, x)
        loss = ((y.to(x.dtype) - x) ** 2).mean()
        if self.practitioner and torch.is_grad_enabled():
            aux = self._auxk(m, x, y.to(x.dtype))
        return loss, (loss if aux is None else loss + aux.to(loss.dtype))

    def _auxk(self, m: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """AuxK (Gao et al. 2024, A.2): the ``k_aux`` largest pre-activations among dead features reconstruct
        the detached residual; ``AUXK_ALPHA`` times its normalised squared error. Updates the firing counts."""
        with torch.no_grad():
            fired = (y > 0).any(0)
            self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + 1)
            dead = self.since_fired >= DEAD_STEPS
            self.n_dead = int(dead.sum())
        if self.n_dead == 0:
            return None
        k_aux = min(max(1, self.n_d // 2), self.n_dead)
        pre = torch.relu(m + self.b).to(x.dtype)
        cand = torch.where(dead[None, :], pre, torch.full_like(pre, -math.inf))
        vals, idx = torch.topk(cand, k_aux, dim=-1)
        e_aux = torch.zeros_like(pre).scatter(-1, idx, vals)  # (k_aux <= n_dead: only dead entries, all >= 0)
        e = (x - y).detach()
        denom = (e - e.mean(0, keepdim=True)).square().sum(-1).mean()
        num = (e - e_aux).square().sum(-1).mean()
        return AUXK_ALPHA * torch.nan_to_num(num / denom, nan=0.0, posinf=0.0)

    def train(self, sample, max_steps: int, max_time_s: float | None) -> str:
        """Train until the rule or a cap stops it; returns the stop reason.

        Each loss is that of the current state on a fresh batch, computed before the Adam step. Losses
        are checked on the host every step on the CPU (every 25 on CUDA, to avoid a sync per step); a
        non-finite loss, or one above ``diverge_factor * p/3``, restores the last checked state (on the
        CPU: the state just before the bad one) and stops with ``diverged``.
        """
        s = self.s
        limit = s.diverge_factor * self.p / 3.0
        snap = [t.detach().clone() for t in self.params]
        snap_step = self.step
        sync = self.SYNC_EVERY.get(self.device.type, 25)
        pending: list[torch.Tensor] = []
        t0 = time.perf_counter()
        reason = None

        def check(last: int) -> str | None:
            """Check the pending losses; ``last`` is the state index (steps taken) of the newest one."""
            nonlocal pending, snap_step
            first = last - len(pending) + 1
            values = torch.stack(pending).double().cpu().tolist()
            pending = []
            if not all(math.isfinite(v) and v <= limit for v in values):
                with torch.no_grad():
                    for prm, keep in zip(self.params, snap):
                        prm.copy_(keep)
                self.diverged_at = first + next(k for k, v in enumerate(values)
                                                if not (math.isfinite(v) and v <= limit))
                self.step = snap_step
                return "diverged"
            out = None
            for i, v in enumerate(values):
                self.last_losses.append(v)
                k = first + i  # the rule is evaluated after every check_every-th batch past rule_start
                if self.rule.push(v, k >= self.rule_start and (k + 1) % s.check_every == 0):
                    out = "converged"
                    break
            with torch.no_grad():  # the state whose loss was checked last
                for keep, prm in zip(snap, self.params):
                    keep.copy_(prm)
            snap_step = self.step
            return out

        while reason is None:
            if self.step >= max_steps:
                reason = "step_cap"
                break
            if max_time_s is not None and time.perf_counter() - t0 >= max_time_s:
                reason = "time_cap"
                break
            lr = s.lr_at(self.step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            x, _ = sample(s.batch)
            loss, objective = self.loss_of(x)
            self.opt.zero_grad(set_to_none=True)
            objective.backward()
            pending.append(loss.detach())
            if len(pending) >= sync or self.step + 1 >= max_steps:
                reason = check(self.step)  # the Adam step follows the check
                if reason == "diverged":
                    break
            self.opt.step()
            self.arch.project(self.extras)
            if self.practitioner:  # unit-norm feature directions (the SAE decoder's columns)
                with torch.no_grad():
                    _unit_columns_(self.W_in)
            self.step += 1
        if pending and reason != "diverged":  # a time cap between two host checks (CUDA)
            reason = check(self.step - 1) or reason
        self.total_time_s += time.perf_counter() - t0
        self.stop_reason = reason
        for prm in self.params:
            prm.requires_grad_(False)
        return reason

    def model(self, meta: dict) -> TrainedModel:
        return TrainedModel(self.W_in.detach(), self.W_out.detach(), self.b.detach(), meta, arch=self.arch.name,
                            extras={k: v.detach() for k, v in self.extras.items()},
                            arch_options=dict(self.arch_options))
