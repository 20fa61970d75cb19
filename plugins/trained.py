"""The trained toy model (paper section 2 and appendix G): ``f(x) = ReLU(W_out W_in x + b)``.

A ``learned`` decoder: it owns its encoder. ``W_in`` (``n_d x n_s``), ``W_out`` (``n_s x n_d``) and ``b``
(``n_s``) are trained by Adam on fresh batches of the cell's training stream (``TrainingSet.sample``; a
learned decoder sees ``x`` itself), minimising the per-feature loss ``n_s^{-1} ||x - f(x)||^2`` averaged
over the batch.

Protocol (the paper's, SCIENCE.md "The trained toy model"):

* initialisation: ``W_in ~ U(-1/sqrt(n_s), 1/sqrt(n_s))`` and ``W_out ~ U(-1/sqrt(n_d), 1/sqrt(n_d))``
  i.i.d. (torch's ``nn.Linear`` default for these shapes), drawn from the decoder's own generator
  (``ctx.generator("init")``); ``b = 0`` (torch's default bias init kills about half the features at
  r = 0.1, p = 0.01);
* Adam, batch 1024, learning rate ``3e-3 / sqrt(n_s)``, fp32 master weights;
* stop when the mean loss of the last 200 batches is no lower than that of the 200 before
  (:class:`PlateauRule`), checked after every 30th batch as the authors' code does (KfirD/PersianRug
  ``model.py``: once per epoch of 30,000 samples = 30 batches of 1024; checking after every batch stops
  earlier, on noise: near the plateau the two window means differ by about their standard error), or at a
  cap: ``max_steps`` (total Adam steps) or ``max_time_s`` (seconds of training in this call).

Options (``ctx.options``; every one is recorded in the row's params):

``max_steps`` (default 200000), ``max_time_s`` (default 120; ``0`` or ``null`` means no time cap),
``lr`` (default ``3e-3/sqrt(n_s)``), ``warm_lr_mult`` and ``warm_steps`` (default 1 and 2000; SCIENCE.md's
speed-up is ``warm_lr_mult: 3``, a 3x learning rate for the first 2000 steps; with a multiplier other than 1
the stopping rule only looks at batches after the warm phase. Off by default, so that the default is the
paper's protocol. Where either stops is noisy: at r = 0.25, p = 0.045 (training loss of the last 200 batches)
n_s = 128 plain 0.00352 after 2,580 steps, 3x 0.00332 after 2,445, 0.0032 after 11,000; n_s = 512 plain
(rule checked every batch) 0.00384 after 5,083 and 0.00368 when continued to 8,083, 3x 0.00371 after 3,270;
n_s = 1024 3x 0.00407 after 3,940 against SCIENCE.md's plain 0.00382 after about 12,000), ``autocast`` (``"none"`` or ``"bf16"``: bf16 autocast with
fp32 master weights; default ``"bf16"`` on CUDA, ``"none"`` on CPU, where it was measured to be slower),
``batch`` (1024), ``window`` (200), ``check_every`` (30), ``diverge_factor`` (1e6: a loss above ``diverge_factor * p/3``, or a
non-finite one, stops training as ``diverged`` and restores the last state whose loss was finite and
below it), ``cache`` (default true), ``cache_dir`` (default ``$DECODERBENCH_CACHE`` or
``~/.cache/decoderbench/trained``), ``threads`` (CPU threads while training, restored afterwards; default:
torch's current setting. On a loaded shared machine 1 thread was up to 40x faster than 2 at n_s <= 512).

Cache: a training checkpoint (weights, Adam state, the training stream's generator state, the loss
window, step count) is stored as safetensors under a key of everything that determines the trained model
except the caps (cell, seed, settings, device type, dtype, this plugin's version). A later run loads it:
a converged (or diverged) checkpoint is reused as is when it fits under ``max_steps``; a capped one is
resumed (bit-identical on CPU to training without the interruption) and saved again, so repeated
time-capped sweeps converge. ``reused`` and ``resumed_from_step`` in the params say what happened.

``stop_reason``: ``converged`` | ``step_cap`` | ``time_cap`` | ``diverged``. The params also hold the
symmetry diagnostics of :func:`decoderbench.symmetry.diagnostics` for ``W = W_out W_in`` and ``b``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from decoderbench import Decoder, hookimpl
from decoderbench.symmetry import MODEL_FORMAT, TrainedModel, load_model, read_model_file, save_model

__all__ = ["Trained", "TrainedModel", "save_model", "load_model", "plateau_reached", "PlateauRule", "Settings",
           "parse_options", "cache_key", "default_cache_dir", "STOP_REASONS"]

VERSION = "1"
STOP_REASONS = ("converged", "step_cap", "time_cap", "diverged")
AUTOCAST = ("none", "bf16")


# ----------------------------------------------------------------------------------------- the stop rule


def plateau_reached(losses, window: int = 200) -> bool:
    """The paper's stopping rule on a loss history: at least ``2 window`` losses and the mean of the last
    ``window`` is no lower than the mean of the ``window`` before."""
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    losses = list(losses)
    if len(losses) < 2 * window:
        return False
    last = math.fsum(losses[-window:])
    prev = math.fsum(losses[-2 * window:-window])
    return last >= prev


class PlateauRule:
    """Streaming form of :func:`plateau_reached`: ``push(loss)`` returns True once the rule holds."""

    def __init__(self, window: int = 200, history=()):
        if int(window) < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.window = int(window)
        self.losses: deque = deque((float(v) for v in history), maxlen=2 * self.window)

    def push(self, loss: float, check: bool = True) -> bool:
        """Add one batch loss; with ``check`` return whether the rule now holds (else False)."""
        self.losses.append(float(loss))
        return check and plateau_reached(self.losses, self.window)

    def clear(self) -> None:
        self.losses.clear()

    def last_mean(self) -> float | None:
        n = min(len(self.losses), self.window)
        if n == 0:
            return None
        return math.fsum(list(self.losses)[-n:]) / n


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """Everything that determines a trained model besides the cell and seed (caps aside)."""

    lr: float
    warm_lr_mult: float = 1.0
    warm_steps: int = 2000
    autocast: str = "none"
    batch: int = 1024
    window: int = 200
    check_every: int = 30
    diverge_factor: float = 1e6
    init: str = "uniform_fan_in_b0"

    def lr_at(self, step: int) -> float:
        return self.lr * (self.warm_lr_mult if step < self.warm_steps else 1.0)

    @property
    def rule_start(self) -> int:
        """First step whose loss the stopping rule sees (after the warm phase if it changes the lr)."""
        return self.warm_steps if self.warm_lr_mult != 1.0 else 0


def _opt_float(options: dict, name: str, default, lo: float | None = None, lo_open: bool = True,
               allow_none: bool = False):
    v = options.get(name, default)
    if v is None and allow_none:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    ok = math.isfinite(f) and (lo is None or (f > lo if lo_open else f >= lo))
    if not ok:
        bound = "" if lo is None else (f" {'>' if lo_open else '>='} {lo:g}")
        raise ValueError(f"trained option {name} must be a finite number{bound}, got {v!r}")
    return f


def _opt_int(options: dict, name: str, default, lo: int) -> int:
    v = options.get(name, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not math.isfinite(f) or f != int(f) or int(f) < lo:
        raise ValueError(f"trained option {name} must be an integer >= {lo}, got {v!r}")
    return int(f)


KNOWN_OPTIONS = ("max_steps", "max_time_s", "lr", "warm_lr_mult", "warm_steps", "autocast", "batch", "window",
                 "check_every", "diverge_factor", "cache", "cache_dir", "threads")


def parse_options(options: dict, n_s: int, device: torch.device) -> tuple[Settings, dict]:
    """(Settings, caps and cache options) from ``ctx.options``; ValueError names a bad option."""
    options = dict(options or {})
    unknown = sorted(k for k in options if k not in KNOWN_OPTIONS)
    if unknown:
        raise ValueError(f"trained: unknown option {unknown[0]!r}; allowed: {', '.join(KNOWN_OPTIONS)}")
    autocast = options.get("autocast", "bf16" if device.type == "cuda" else "none")
    if autocast not in AUTOCAST:
        raise ValueError(f"trained option autocast must be one of {', '.join(AUTOCAST)}, got {autocast!r}")
    settings = Settings(
        lr=_opt_float(options, "lr", 3e-3 / math.sqrt(n_s), lo=0.0),
        warm_lr_mult=_opt_float(options, "warm_lr_mult", 1.0, lo=0.0),
        warm_steps=_opt_int(options, "warm_steps", 2000, 0),
        autocast=autocast,
        batch=_opt_int(options, "batch", 1024, 1),
        window=_opt_int(options, "window", 200, 1),
        check_every=_opt_int(options, "check_every", 30, 1),
        diverge_factor=_opt_float(options, "diverge_factor", 1e6, lo=0.0),
    )
    max_time = _opt_float(options, "max_time_s", 120.0, lo=0.0, lo_open=False, allow_none=True)
    cache = options.get("cache", True)
    if not isinstance(cache, bool):
        raise ValueError(f"trained option cache must be true or false, got {cache!r}")
    cache_dir = options.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise ValueError(f"trained option cache_dir must be a path string, got {cache_dir!r}")
    threads = None if options.get("threads") is None else _opt_int(options, "threads", None, 1)
    caps = {"max_steps": _opt_int(options, "max_steps", 200_000, 1), "threads": threads,
            "max_time_s": None if not max_time else max_time,
            "cache": cache, "cache_dir": cache_dir}
    return settings, caps


def default_cache_dir() -> Path:
    env = os.environ.get("DECODERBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decoderbench" / "trained"


def cache_key(n_s: int, n_d: int, p: float, seed: int, settings: Settings, device_type: str,
              dtype: torch.dtype) -> str:
    """A hash of everything that determines the trained model except the caps."""
    d = {"format": MODEL_FORMAT, "version": VERSION, "n_s": int(n_s), "n_d": int(n_d), "p": float(p), "seed": int(seed),
         "settings": asdict(settings), "device_type": device_type, "dtype": str(dtype).replace("torch.", "")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ training


class _Trainer:
    """Adam on (W_in, W_out, b) with the plateau rule, caps, divergence guard and checkpointing."""

    def __init__(self, n_s: int, n_d: int, p: float, settings: Settings, device: torch.device,
                 dtype: torch.dtype, generator: torch.Generator):
        self.n_s, self.n_d, self.p, self.s = n_s, n_d, p, settings
        self.device, self.dtype = device, dtype
        bi, bo = 1.0 / math.sqrt(n_s), 1.0 / math.sqrt(n_d)
        self.W_in = ((torch.rand(n_d, n_s, generator=generator, device=device, dtype=dtype) * 2 - 1) * bi)
        self.W_out = ((torch.rand(n_s, n_d, generator=generator, device=device, dtype=dtype) * 2 - 1) * bo)
        self.b = torch.zeros(n_s, device=device, dtype=dtype)
        self.params = [self.W_in.requires_grad_(), self.W_out.requires_grad_(), self.b.requires_grad_()]
        self.opt = torch.optim.Adam(self.params, lr=settings.lr_at(0))
        self.rule = PlateauRule(settings.window)
        self.step = 0
        self.stop_reason: str | None = None
        self.total_time_s = 0.0
        self.last_losses: deque = deque(maxlen=settings.window)
        self.diverged_at: int | None = None

    #: Steps between host checks of the losses, by device type (a check syncs the device).
    SYNC_EVERY = {"cpu": 1}

    # -- checkpoint ------------------------------------------------------------------------------------
    _NAMES = ("W_in", "W_out", "b")

    def checkpoint(self, gen_state: torch.Tensor | None) -> dict[str, torch.Tensor]:
        extra = {}
        for name, prm in zip(self._NAMES, self.params):
            st = self.opt.state.get(prm, {})
            for k in ("exp_avg", "exp_avg_sq", "step"):
                if k in st:
                    extra[f"adam.{name}.{k}"] = torch.as_tensor(st[k]).reshape(-1) if k == "step" else st[k]
        extra["rule_losses"] = torch.tensor(list(self.rule.losses), dtype=torch.float64)
        extra["last_losses"] = torch.tensor(list(self.last_losses), dtype=torch.float64)
        if gen_state is not None:
            extra["generator_state"] = gen_state
        return extra

    def restore(self, tensors: dict, meta: dict) -> torch.Tensor | None:
        with torch.no_grad():
            for name, prm in zip(self._NAMES, self.params):
                prm.copy_(tensors[name].to(self.device, self.dtype))
        for name, prm in zip(self._NAMES, self.params):
            if f"adam.{name}.exp_avg" in tensors:
                self.opt.state[prm] = {
                    "step": tensors[f"adam.{name}.step"].reshape(()).to(torch.float32),
                    "exp_avg": tensors[f"adam.{name}.exp_avg"].to(self.device, self.dtype),
                    "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(self.device, self.dtype),
                }
        self.rule = PlateauRule(self.s.window, tensors["rule_losses"].tolist())
        self.last_losses = deque(tensors["last_losses"].tolist(), maxlen=self.s.window)
        self.step = int(meta["steps"])
        self.stop_reason = meta.get("stop_reason")
        self.total_time_s = float(meta.get("total_train_time_s", 0.0))
        return tensors.get("generator_state")

    # -- the loop --------------------------------------------------------------------------------------
    def loss_of(self, x: torch.Tensor) -> torch.Tensor:
        use_ac = self.s.autocast == "bf16"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_ac):
            y = torch.relu((x @ self.W_in.T) @ self.W_out.T + self.b)
        return ((y.to(x.dtype) - x) ** 2).mean()

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
                if self.rule.push(v, k >= s.rule_start and (k + 1) % s.check_every == 0):
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
            loss = self.loss_of(x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            pending.append(loss.detach())
            if len(pending) >= sync or self.step + 1 >= max_steps:
                reason = check(self.step)  # the Adam step follows the check
                if reason == "diverged":
                    break
            self.opt.step()
            self.step += 1
        if pending and reason != "diverged":  # a time cap between two host checks (CUDA)
            reason = check(self.step - 1) or reason
        self.total_time_s += time.perf_counter() - t0
        self.stop_reason = reason
        for prm in self.params:
            prm.requires_grad_(False)
        return reason

    def model(self, meta: dict) -> TrainedModel:
        return TrainedModel(self.W_in.detach(), self.W_out.detach(), self.b.detach(), meta)


# ------------------------------------------------------------------------------------------------- plugin


class Trained(Decoder):
    """ReLU(W_out W_in x + b) with W_in, W_out, b trained by Adam (paper section 2, appendix G)."""

    name = "trained"
    kind = "learned"
    version = VERSION
    description = "ReLU(W_out W_in x + b), all trained by Adam (paper appendix G)"

    def fit(self, train) -> dict:
        ctx = self.ctx
        settings, caps = parse_options(ctx.options, ctx.n_s, ctx.device)
        key = cache_key(ctx.n_s, ctx.n_d, ctx.p, ctx.seed, settings, ctx.device.type, ctx.dtype)
        folder = Path(caps["cache_dir"]).expanduser() if caps["cache_dir"] else default_cache_dir()
        path = folder / f"{key}.safetensors"
        trainer = _Trainer(ctx.n_s, ctx.n_d, ctx.p, settings, ctx.device, ctx.dtype, ctx.generator("init"))
        gen = getattr(getattr(train, "sampler", None), "generator", None)
        max_steps, max_time_s = caps["max_steps"], caps["max_time_s"]
        reused, resumed_from, save, train_now = False, None, caps["cache"], True
        if caps["cache"] and path.is_file():
            try:
                tensors, meta = read_model_file(path)
            except Exception:  # an unreadable cache entry is retrained and overwritten
                tensors = None
            if tensors is not None:
                done = meta.get("stop_reason") in ("converged", "diverged")
                cached = int(meta.get("steps", 0))
                if cached > max_steps:
                    save = False  # the cache holds a longer run: train afresh, keep the cache
                elif done or cached == max_steps:
                    trainer.restore(tensors, meta)
                    reused, train_now, save = True, False, False
                elif gen is not None and "generator_state" in tensors:
                    gen.set_state(trainer.restore(tensors, meta).to(gen.get_state().device))
                    reused, resumed_from = True, cached
        elapsed = 0.0
        threads = caps["threads"] or torch.get_num_threads()
        if train_now:
            before = torch.get_num_threads()
            t0 = time.perf_counter()
            try:
                torch.set_num_threads(threads)
                trainer.train(train.sample, max_steps, max_time_s)
            finally:
                torch.set_num_threads(before)
            elapsed = time.perf_counter() - t0
        meta = {"n_s": ctx.n_s, "n_d": ctx.n_d, "p": ctx.p, "seed": ctx.seed, "settings": asdict(settings),
                "steps": trainer.step, "stop_reason": trainer.stop_reason, "diverged_at": trainer.diverged_at,
                "total_train_time_s": trainer.total_time_s, "device": str(ctx.device),
                "dtype": str(ctx.dtype).replace("torch.", ""), "torch_version": torch.__version__,
                "version": VERSION, "key": key}
        self.model = trainer.model(meta)
        if save:
            try:
                save_model(path, self.model, trainer.checkpoint(gen.get_state() if gen is not None else None))
            except OSError as exc:  # a read-only cache must not fail the row
                meta["cache_error"] = f"{type(exc).__name__}: {exc}"
                save = False
        params = {
            "steps": trainer.step, "stop_reason": trainer.stop_reason, "diverged_at": trainer.diverged_at,
            "train_time_s": elapsed, "total_train_time_s": trainer.total_time_s,
            "loss_train_last": _mean(trainer.last_losses),
            "reused": reused, "resumed_from_step": resumed_from,
            "max_steps": max_steps, "max_time_s": max_time_s, "threads": threads, **asdict(settings),
            "cache_key": key, "model_path": str(path) if (save or reused) else None,
        }
        if "cache_error" in meta:
            params["cache_error"] = meta["cache_error"]
        params.update(_diagnostics(self.model, ctx.p))
        return params

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.forward(x)


def _mean(values) -> float | None:
    values = list(values)
    return math.fsum(values) / len(values) if values else None


def _diagnostics(model: TrainedModel, p: float) -> dict:
    from decoderbench.encoders import DENSE_MAX_NS
    from decoderbench.symmetry import diagnostics

    if model.n_s > DENSE_MAX_NS:
        return {"diagnostics": f"skipped: n_s > {DENSE_MAX_NS} (dense W)"}
    # W formed in float32 (one GEMM, 64 MB at n_s = 4096); the row sums are taken in float64
    W = model.W_out.detach().cpu().float() @ model.W_in.detach().cpu().float()
    return diagnostics(W, model.b, p, n_d=model.n_d)


@hookimpl
def decoderbench_register_decoders(register):
    register(Trained)
