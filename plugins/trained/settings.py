"""The training protocol's settings, the options that set them, and the cache key they determine."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from decoderbench.errors import BadInput

from .arch import ARCHS, Arch, check_arch_options
from .fileformat import MODEL_FORMAT

VERSION = "1"
AUTOCAST = ("none", "bf16")


@dataclass(frozen=True)
class Settings:
    """Everything that determines a trained model besides the cell, the seed and the architecture (caps aside)."""

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
               allow_none: bool = False, who: str = "trained"):
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
        raise BadInput(f"{who} option {name} must be a finite number{bound}, got {v!r}")
    return f


def _opt_int(options: dict, name: str, default, lo: int, who: str = "trained") -> int:
    v = options.get(name, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if not math.isfinite(f) or f != int(f) or int(f) < lo:
        raise BadInput(f"{who} option {name} must be an integer >= {lo}, got {v!r}")
    return int(f)


#: The protocol's options, taken by every architecture.
KNOWN_OPTIONS = ("max_steps", "max_time_s", "lr", "warm_lr_mult", "warm_steps", "autocast", "batch", "window",
                 "check_every", "diverge_factor", "cache", "cache_dir", "threads", "only_cached")


#: Each option's default (None: chosen at the cell or device, said in the text) and meaning, for the schema.
OPTION_DOCS = {
    "max_steps": (200_000, "cap on Adam steps"),
    "max_time_s": (120.0, "cap on training seconds (0 or null: none)"),
    "lr": (None, "Adam's learning rate [3e-3 / sqrt(n_s)]"),
    "warm_lr_mult": (1.0, "learning-rate multiplier during the first warm_steps"),
    "warm_steps": (2000, "steps at warm_lr_mult x lr"),
    "autocast": (None, f"one of {', '.join(AUTOCAST)} [bf16 on CUDA, else none]"),
    "batch": (1024, "fresh samples per Adam step"),
    "window": (200, "steps per window of the stopping rule"),
    "check_every": (30, "steps between checks of the stopping rule"),
    "diverge_factor": (1e6, "stop as diverged when the loss exceeds this factor of the trivial loss"),
    "cache": (True, "reuse and store trained models in the cache"),
    "cache_dir": (None, "the model cache [$DECODERBENCH_CACHE or ~/.cache/decoderbench/trained]"),
    "threads": (None, "CPU threads while training [torch's setting]"),
    "only_cached": (False, "train nothing: score only a converged cached model, else skip the row"),
}
ARCH_OPTION_DOCS = {"k": (None, "latents kept (per sample; per unit of the batch for batchtopk), 1..n_s "
                                "[round(p n_s)]"),
                    "bandwidth": (None, "straight-through estimator's bandwidth [arch.BANDWIDTH]"),
                    "recipe": ("paper", "topk/batchtopk training recipe: paper (the paper's protocol) or "
                                        "practitioner (tied init, unit-norm W_in columns, AuxK, k annealing)")}


def options_schema(fixed: str | None, who: str):
    """The declared ``Options`` of ``trained`` (``fixed`` None) or ``trained-<fixed>``: every option listed with
    its default and meaning; the checks themselves are :func:`parse_options`' (cross-option and cell-dependent:
    which options an activation takes, ``k <= n_s``), run by a validator with the unit's cell, so every message
    is the one ``parse_options`` gives."""
    from typing import Any

    from pydantic import ConfigDict, Field, create_model, model_validator

    from decoderbench.contract.options import Options

    archs = [ARCHS[fixed]] if fixed else list(ARCHS.values())
    fields = {k: (Any, Field(OPTION_DOCS.get(k, (None, ""))[0], description=OPTION_DOCS.get(k, (None, ""))[1]))
              for k in KNOWN_OPTIONS}
    if fixed is None:
        fields["activation"] = (Any, Field("relu", description=f"the architecture: one of {', '.join(ARCHS)}"))
    for o in sorted({o for a in archs for o in a.options}):
        d, t = ARCH_OPTION_DOCS.get(o, (None, "an architecture option"))
        fields[o] = (Any, Field(d, description=t))

    def protocol(self, info):
        cell = (info.context or {}).get("cell")
        given = {**self.model_dump(exclude_unset=True), **(self.model_extra or {})}
        if cell is not None:
            parse_options(given, cell.n_s, torch.device("cpu"), p=cell.p, fixed=fixed, who=who)
        return self

    # unknown keys reach parse_options, which refuses them naming the activation's allowed options
    base = type("TrainedOptionsBase", (Options,), {"model_config": ConfigDict(extra="allow", frozen=True),
                                                   "__module__": __name__})
    return create_model(f"TrainedOptions_{fixed or 'any'}", __base__=base, __module__=__name__,
                        __validators__={"protocol": model_validator(mode="after")(protocol)}, **fields)


def resolve_arch(options: dict, fixed: str | None, who: str) -> Arch:
    """The architecture: ``fixed`` (a ``trained-<act>`` decoder) or the ``activation`` option (``trained``)."""
    act = options.get("activation", fixed or "relu")
    if not isinstance(act, str) or act not in ARCHS:
        raise BadInput(f"{who} option activation must be one of {', '.join(ARCHS)}, got {act!r}")
    if fixed is not None and act != fixed:
        raise BadInput(f"{who} option activation must be {fixed!r} (or absent), got {act!r}; "
                         f"use trained-{act} or trained with activation {act!r}")
    return ARCHS[act]


def allowed_options(arch: Arch, fixed: str | None) -> tuple:
    return KNOWN_OPTIONS + ("activation",) + arch.options


def parse_options(options: dict, n_s: int, device: torch.device, p: float = 0.045, fixed: str | None = None,
                  who: str = "trained") -> tuple[Settings, dict]:
    """(Settings, caps and cache options) from ``ctx.options``; ValueError names a bad option.

    The caps dict also carries ``arch`` (the :class:`~.arch.Arch`) and ``arch_options`` (its options, defaults
    filled in at the cell).
    """
    options = dict(options or {})
    arch = resolve_arch(options, fixed, who)
    allowed = allowed_options(arch, fixed)
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise BadInput(f"{who}: unknown option {unknown[0]!r} for activation {arch.name}; allowed: "
                         f"{', '.join(allowed)}")
    arch_options = check_arch_options(arch, options, n_s, p, who)
    autocast = options.get("autocast", "bf16" if device.type == "cuda" else "none")
    if autocast not in AUTOCAST:
        raise BadInput(f"{who} option autocast must be one of {', '.join(AUTOCAST)}, got {autocast!r}")
    settings = Settings(
        lr=_opt_float(options, "lr", 3e-3 / math.sqrt(n_s), lo=0.0, who=who),
        warm_lr_mult=_opt_float(options, "warm_lr_mult", 1.0, lo=0.0, who=who),
        warm_steps=_opt_int(options, "warm_steps", 2000, 0, who=who),
        autocast=autocast,
        batch=_opt_int(options, "batch", 1024, 1, who=who),
        window=_opt_int(options, "window", 200, 1, who=who),
        check_every=_opt_int(options, "check_every", 30, 1, who=who),
        diverge_factor=_opt_float(options, "diverge_factor", 1e6, lo=0.0, who=who),
    )
    max_time = _opt_float(options, "max_time_s", 120.0, lo=0.0, lo_open=False, allow_none=True, who=who)
    cache = options.get("cache", True)
    if not isinstance(cache, bool):
        raise BadInput(f"{who} option cache must be true or false, got {cache!r}")
    cache_dir = options.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise BadInput(f"{who} option cache_dir must be a path string, got {cache_dir!r}")
    only_cached = options.get("only_cached", False)
    if not isinstance(only_cached, bool):
        raise BadInput(f"{who} option only_cached must be true or false, got {only_cached!r}")
    if only_cached and not cache:
        raise BadInput(f"{who} option only_cached needs cache = true (it scores only a converged cached model)")
    threads = None if options.get("threads") is None else _opt_int(options, "threads", None, 1, who=who)
    caps = {"max_steps": _opt_int(options, "max_steps", 200_000, 1, who=who), "threads": threads,
            "max_time_s": None if not max_time else max_time,
            "cache": cache, "cache_dir": cache_dir, "arch": arch, "arch_options": arch_options,
            "only_cached": only_cached}
    return settings, caps


def default_cache_dir() -> Path:
    env = os.environ.get("DECODERBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decoderbench" / "trained"


def cache_key(n_s: int, n_d: int, p: float, seed: int, settings: Settings, device_type: str,
              dtype: torch.dtype, arch: str = "relu", arch_options: dict | None = None) -> str:
    """A hash of everything that determines the trained model except the caps.

    For the ReLU model the dictionary hashed is exactly the one decoderbench 0.1.0 hashed, so ``trained`` and
    ``trained-relu`` share one cache entry with the models that version trained.
    """
    d = {"format": MODEL_FORMAT, "version": VERSION, "n_s": int(n_s), "n_d": int(n_d), "p": float(p), "seed": int(seed),
         "settings": asdict(settings), "device_type": device_type, "dtype": str(dtype).replace("torch.", "")}
    if arch != "relu":
        d["arch"] = arch
        d["arch_options"] = dict(sorted((arch_options or {}).items()))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]
