"""The trained toy model (paper section 2 and appendix G): ``f(x) = act(W_out W_in x + b)``, one decoder per
activation.

Decoders (kind ``learned``), all registered by this plugin's ``decoderbench_register_decoders``:

* ``trained``: the paper's ReLU model, ``ReLU(W_out W_in x + b)``, unchanged from decoderbench 0.1.0 (same
  numbers, same cache entries). Its option ``activation`` (default ``relu``) selects any architecture below;
* ``trained-relu`` (an alias of ``trained``: the same model, the same cache entry, a row under its own name),
  ``trained-linear``, ``trained-topk``, ``trained-batchtopk``, ``trained-jumprelu``, ``trained-trec``,
  ``trained-prolu``, ``trained-gated``: ``trained`` with that activation fixed. The activations, the
  pseudo-derivatives that train their thresholds (JumpReLU/TRec bandwidth 0.01) and their options (``k``,
  default ``round(p n_s)``; ``bandwidth``) are in :mod:`.arch`.

A learned decoder owns its encoder: ``W_in`` (``n_d x n_s``), ``W_out`` (``n_s x n_d``), ``b`` (``n_s``) and the
activation's extra tensors are trained by Adam on fresh batches of the cell's training stream (a learned
decoder trains on ``x`` itself: its loss is the reconstruction of ``x``), minimising the per-feature loss
``n_s^{-1} ||x - f(x)||^2`` averaged over the batch. At evaluation the harness, not the decoder, applies the
model's own encoder: the decoder exposes ``W_in`` (:meth:`Trained.encoder_weight`) and ``decode`` receives only
``h = x W_in^T`` (``decoder.input_encoder``), so it never sees ``x``.

Protocol (the paper's appendix G), the same for every architecture:

* initialisation: ``W_in ~ U(-1/sqrt(n_s), 1/sqrt(n_s))`` and ``W_out ~ U(-1/sqrt(n_d), 1/sqrt(n_d))``
  i.i.d. (torch's ``nn.Linear`` default for these shapes), drawn from one generator per cell and seed shared
  by all architectures (``derive_seed("decoder", "trained", cell, seed, "init")``, so every architecture starts
  from the same ``W``); ``b = 0`` (torch's default bias init kills about half the features at r = 0.1,
  p = 0.01);
* Adam, batch 1024, learning rate ``3e-3 / sqrt(n_s)``, fp32 master weights;
* stop when the mean loss of the last 200 batches is no lower than that of the 200 before
  (:class:`PlateauRule`), checked after every 30th batch as the authors' code does (KfirD/PersianRug
  ``model.py``: once per epoch of 30,000 samples = 30 batches of 1024; checking after every batch stops
  earlier, on noise: near the plateau the two window means differ by about their standard error), or at a
  cap: ``max_steps`` (total Adam steps) or ``max_time_s`` (seconds of training in this call).

Options (``ctx.options``; every one is recorded in the row's params):

``max_steps`` (default 200000), ``max_time_s`` (default 120; ``0`` or ``null`` means no time cap),
``lr`` (default ``3e-3/sqrt(n_s)``), ``warm_lr_mult`` and ``warm_steps`` (default 1 and 2000; a 3x learning
rate for the first 2000 steps is ``warm_lr_mult: 3``; with a multiplier other than 1 the stopping rule only
looks at batches after the warm phase. Off by default, so that the default is the paper's protocol. Where
either stops is noisy: at r = 0.25, p = 0.045 (training loss of the last 200 batches) n_s = 128 plain 0.00352
after 2,580 steps, 3x 0.00332 after 2,445, 0.0032 after 11,000; n_s = 512 plain (rule checked every batch)
0.00384 after 5,083 and 0.00368 when continued to 8,083, 3x 0.00371 after 3,270; n_s = 1024 3x 0.00407 after
3,940 against plain 0.00382 after about 12,000), ``autocast`` (``"none"`` or ``"bf16"``: bf16 autocast with
fp32 master weights; default ``"bf16"`` on CUDA, ``"none"`` on CPU, where it was measured to be slower),
``batch`` (1024), ``window`` (200), ``check_every`` (30), ``diverge_factor`` (1e6: a loss above
``diverge_factor * p/3``, or a non-finite one, stops training as ``diverged`` and restores the last state
whose loss was finite and below it), ``cache`` (default true), ``cache_dir`` (default ``$DECODERBENCH_CACHE``
or ``~/.cache/decoderbench/trained``), ``only_cached`` (default false: with true, the decoder trains nothing and scores only a converged (or
diverged) model found in the cache; otherwise it declines the unit with :class:`decoderbench.Skip`, a
``skipped`` row whose reason names the grid that trains it: the default grid sets it, since no architecture
converges at n_s = 4096 within minutes on a CPU), ``threads`` (CPU threads while training, restored afterwards; default:
torch's current setting. On a loaded shared machine 1 thread was up to 40x faster than 2 at n_s <= 512), and
the architecture's own (:mod:`.arch`). An option the architecture does not take, an unknown activation or a
``k`` outside ``1..n_s`` is bad input (one line naming it and what is allowed), raised when the decoder is
built, before any training; ``decoderbench run`` checks every unit that way before the sweep starts.

Cache (:mod:`.cache`, :mod:`.fileformat`): a training checkpoint (weights, Adam state, the training stream's
generator state, the loss window, step count) is stored as safetensors under a key of everything that
determines the trained model except the caps (cell, seed, settings, architecture and its options, device
type, dtype, this plugin's version). A later run loads it only if its content matches its hash and its meta
matches the key; otherwise it retrains and overwrites it (``cache_rejected`` says why). A converged (or
diverged) checkpoint is reused as is when it fits under ``max_steps``; a capped one is resumed (bit-identical
on CPU to training without the interruption) and saved again, so repeated time-capped sweeps converge.
``reused`` and ``resumed_from_step`` in the params say what happened.

``stop_reason``: ``converged`` | ``step_cap`` | ``time_cap`` | ``diverged``; ``converged`` (a row column too) is
``stop_reason == "converged"``. The params also hold the
symmetry diagnostics of :func:`decoderbench.model.symmetry.diagnostics` for ``W = W_out W_in`` and ``b`` (for
gated: the gate path's ``W`` and ``b``; for trec ``b = 0``), and the means and spreads of the extras.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from decoderbench import BadInput, Decoder, Skip, TrainingSet, hookimpl
from decoderbench.model.data import derive_seed, make_generator

from .arch import ARCHS, BANDWIDTH, K_MULTS, PRACTITIONER_ARCHS, THETA_INIT, Arch, k_for
from .cache import load_cached
from .fileformat import MODEL_FORMAT, ModelFileError, content_hash, load_model, read_model_file, save_model
from .model import TrainedModel
from .rule import PlateauRule, plateau_reached
from .settings import KNOWN_OPTIONS, VERSION, Settings, cache_key, default_cache_dir, options_schema, parse_options
from .trainer import _Trainer

__all__ = ["Trained", "TrainedModel", "save_model", "load_model", "read_model_file", "plateau_reached",
           "PlateauRule", "Settings", "parse_options", "cache_key", "default_cache_dir", "STOP_REASONS", "ARCHS",
           "DECODERS", "PRACTITIONER", "MODEL_FORMAT", "ModelFileError", "content_hash", "BANDWIDTH", "THETA_INIT", "KNOWN_OPTIONS"]

STOP_REASONS = ("converged", "step_cap", "time_cap", "diverged")


class Trained(Decoder):
    """act(W_out W_in x + b) with every parameter trained by Adam (paper section 2, appendix G); ReLU unless
    the option ``activation`` says otherwise."""

    name = "trained"
    kind = "learned"
    version = VERSION
    description = "ReLU(W_out W_in x + b), all trained by Adam (paper appendix G); option activation"
    #: The activation a ``trained-<act>`` decoder fixes (None: the ``activation`` option, default relu).
    activation: str | None = None

    def __init__(self, ctx):
        super().__init__(ctx)
        self.settings, self.caps = self._parse(ctx.options, ctx.n_s, ctx.p, ctx.device)
        self.model: TrainedModel | None = None

    @classmethod
    def _parse(cls, options, n_s: int, p: float, device) -> tuple[Settings, dict]:
        return parse_options(options, n_s, device, p=p, fixed=cls.activation, who=cls.name)


    def encoder_weight(self) -> torch.Tensor:
        """The trained model's ``W_in`` (``n_d x n_s``): the harness encodes ``h = x W_in^T`` with it."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: encoder_weight() before fit()")
        return self.model.W_in

    def _not_trained(self, why: str) -> str:
        return (f"{self.name} is not trained within this grid's budget (option only_cached: {why}); "
                f"`decoderbench run --grid trained` trains it, `decoderbench trained-board` shows it")

    def fit(self, train) -> dict:
        ctx = self.ctx
        settings, caps = self.settings, self.caps
        arch: Arch = caps["arch"]
        arch_options = caps["arch_options"]
        key = cache_key(ctx.n_s, ctx.n_d, ctx.p, ctx.seed, settings, ctx.device.type, ctx.dtype, arch.name,
                        arch_options)
        folder = Path(caps["cache_dir"]).expanduser() if caps["cache_dir"] else default_cache_dir()
        path = folder / f"{key}.safetensors"
        if caps["only_cached"] and not (caps["cache"] and path.is_file()):
            raise Skip(self._not_trained("no converged model for this cell in the cache"))  # before any model is built
        c = ctx.cell
        init = make_generator(derive_seed("decoder", "trained", c.n_s, c.n_d, c.p, ctx.seed, "init"), ctx.device)
        trainer = _Trainer(ctx.n_s, ctx.n_d, ctx.p, settings, ctx.device, ctx.dtype, init, arch, arch_options)
        gen = getattr(getattr(train, "sampler", None), "generator", None)
        max_steps, max_time_s = caps["max_steps"], caps["max_time_s"]
        reused, resumed_from, save, train_now, rejected = False, None, caps["cache"], True, None
        if caps["cache"]:
            tensors, meta, rejected = load_cached(path, key, ctx.n_s, ctx.n_d, ctx.p, ctx.seed, settings, arch.name,
                                                  arch_options)
            if tensors is not None:
                try:
                    done = meta.get("stop_reason") in ("converged", "diverged")
                    cached = int(meta.get("steps", 0))
                    if cached > max_steps:
                        save = False  # the cache holds a longer run: train afresh, keep the cache
                    elif done or cached == max_steps:
                        trainer.restore(tensors, meta)
                        reused, train_now, save = True, False, False
                    elif gen is not None and "generator_state" in tensors:
                        state = trainer.restore(tensors, meta)
                        gen.set_state(state.to(gen.get_state().device))
                        reused, resumed_from = True, cached
                except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # not this model's checkpoint
                    rejected = f"cache file {path.name}: {type(exc).__name__}: {exc}"
                    trainer = _Trainer(ctx.n_s, ctx.n_d, ctx.p, settings, ctx.device, ctx.dtype,
                                       make_generator(derive_seed("decoder", "trained", c.n_s, c.n_d, c.p, ctx.seed,
                                                                  "init"), ctx.device), arch, arch_options)
                    reused, resumed_from, save, train_now = False, None, True, True
        if caps["only_cached"] and train_now:  # no finished model to score (a capped checkpoint would train on)
            raise Skip(self._not_trained(rejected or "no converged model for this cell in the cache"))
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
            "activation": arch.name, **arch_options,
            "steps": trainer.step, "stop_reason": trainer.stop_reason, "diverged_at": trainer.diverged_at,
            "converged": trainer.stop_reason == "converged",  # the row's declared column (decoder.STOP_COLUMNS)
            "train_time_s": elapsed, "total_train_time_s": trainer.total_time_s,
            "loss_train_last": _mean(trainer.last_losses),
            "reused": reused, "resumed_from_step": resumed_from,
            "max_steps": max_steps, "max_time_s": max_time_s, "threads": threads, **asdict(settings),
            "cache_key": key, "model_path": str(path) if (save or reused) else None,
        }
        if rejected:
            params["cache_rejected"] = rejected
        if "cache_error" in meta:
            params["cache_error"] = meta["cache_error"]
        params.update(_diagnostics(self.model, ctx.p, converged=trainer.stop_reason == "converged"))
        return params

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """``act(h W_out^T + b)`` from the code ``h = x W_in^T`` (B, n_d) the harness computed."""
        with torch.no_grad():
            return self.model.decode(h)


def _mean(values) -> float | None:
    values = list(values)
    return math.fsum(values) / len(values) if values else None


def _diagnostics(model: TrainedModel, p: float, converged: bool = True) -> dict:
    from decoderbench.model.encoders import DENSE_MAX_NS
    from decoderbench.model.symmetry import diagnostics, spread

    out = {}
    for name, t in model.extras.items():
        out[f"{name}_mean"], out[f"{name}_std"], out[f"{name}_range"] = spread(t.detach().cpu().double())
    if model.n_s > DENSE_MAX_NS:
        return {**out, "diagnostics": f"skipped: n_s > {DENSE_MAX_NS} (dense W)"}
    # W formed in float32 (one GEMM, 64 MB at n_s = 4096); the row sums are taken in float64
    W = model.W_out.detach().cpu().float() @ model.W_in.detach().cpu().float()
    from decoderbench.model.exact import NOT_ENCODED

    diag = W.diagonal().double().abs()
    # features whose own signal the model does not carry (|W_ii| at most NOT_ENCODED of the median): counted
    # apart from the features that never fire (a row column), since such a feature may still fire on
    # interference, which the usual dead-latent rule (no firing for a while) never sees
    out["features_never_encoded"] = int((diag <= NOT_ENCODED * float(diag.median())).sum())
    out["never_encoded_below"] = f"{NOT_ENCODED:g} x median |diag W|"
    own = _own_exact(W, p) if converged else {
        "own_exact_error": "not computed: the model did not converge (its W's law is no reference for anything)"}
    return {**diagnostics(W, model.b, p, n_d=model.n_d), **out, **own}


#: Rows of the trained W whose exact interference law is computed (evenly spaced), and the law's grid.
EXACT_ROWS = 16
EXACT_M = 128
#: At most this many grid points per row (a range of about 40 at ``EXACT_M``): a converged model's law spans a
#: few units; an unconverged one's (time-capped, a few steps) spans hundreds, and its law (one complex exp and
#: log per distinct entry per grid point, 16 rows) would take minutes for a number that means nothing.
EXACT_MAX_POINTS = 1 << 13


def _own_exact(W: torch.Tensor, p: float) -> dict:
    """The exact elementwise MMSE and E.2 bound of the trained ``W`` itself (no Gaussian assumption), averaged
    over ``EXACT_ROWS`` evenly spaced rows: the least loss any elementwise decoder of ``W x`` can reach, which the
    Gaussian elementwise MMSE is not for a trained W (its interference is skewed). ``own_exact_se``: the
    standard error of that mean over rows."""
    from decoderbench.model.exact import references_for_weights

    n = W.shape[0]
    rows = sorted({int(i * n / EXACT_ROWS) for i in range(min(EXACT_ROWS, n))})
    try:
        ref = references_for_weights(W.double().numpy(), p, rows=rows, M=EXACT_M, max_points=EXACT_MAX_POINTS)
    except ValueError as exc:  # e.g. a law too wide for the grid: a diagnostic, never the row's failure
        return {"own_exact_error": str(exc)}
    return {"own_mmse_elementwise_exact": ref["mmse_elementwise_exact"], "own_e2_bound_exact": ref["e2_bound_exact"],
            "own_exact_se": ref["mmse_row_sd"] / math.sqrt(ref["rows"]), "own_exact_rows": ref["rows"],
            "own_exact_rows_not_encoded": ref["rows_not_encoded"]}


Trained.Options = options_schema(None, "trained")  # declared options: listed, checked before a sweep


def _alias(act: str, desc: str, base: type | None = None, suffix: str = "") -> type:
    """The decoder ``trained-<act><suffix>``: ``base`` (default :class:`Trained`) with the activation fixed."""
    name = f"trained-{act}{suffix}"
    return type(f"Trained_{act}{suffix.replace('-', '_')}", (base or Trained,), {
        "name": name, "activation": act, "description": desc, "Options": options_schema(act, name),
        "__doc__": f"``{name}``: {desc}.", "__module__": __name__})


#: The ``trained-<act>`` decoders, one per activation of :data:`~.arch.ARCHS`.
DECODERS = {a.name: _alias(a.name, a.description + (" (alias of trained)" if a.name == "relu" else ""))
            for a in ARCHS.values()}


class _Practitioner(Trained):
    """TopK trained as practitioners train it (:mod:`.arch`, recipe ``practitioner``), ``k`` swept over
    :data:`~.arch.K_MULTS` times ``p n_s`` unless the option ``k`` fixes it; the least training loss decides."""

    @classmethod
    def _parse(cls, options, n_s: int, p: float, device):
        opts = dict(options or {})
        if opts.get("recipe", "practitioner") != "practitioner":
            raise BadInput(f"{cls.name} option recipe must be 'practitioner' (or absent), got {opts['recipe']!r}; "
                           f"the paper's recipe is trained-{cls.activation}")
        opts["recipe"] = "practitioner"
        return parse_options(opts, n_s, device, p=p, fixed=cls.activation, who=cls.name)

    def fit(self, train) -> dict:
        ctx = self.ctx
        base = dict(self.caps["arch_options"])
        if "k" in (ctx.options or {}):
            ks = [base["k"]]
        else:
            ks = sorted({k_for(ctx.n_s, ctx.p, m) for m in K_MULTS})
        tried = []
        for k in ks:
            self.caps["arch_options"] = {**base, "k": k}
            # each k on its own training stream, so that what one k finds in the cache never moves another's data
            stream = train if len(ks) == 1 else TrainingSet(ctx, getattr(train, "input_kind", "code"),
                                                            purpose=f"train/{self.name}/k={k}")
            params = Trained.fit(self, stream)
            tried.append((k, params, self.model))
        def rank(t):
            v = t[1].get("loss_train_last")
            return (not (isinstance(v, float) and math.isfinite(v)), v if isinstance(v, float) else 0.0, t[0])
        k, params, self.model = min(tried, key=rank)
        self.caps["arch_options"] = {**base, "k": k}
        sweep = {str(kk): {"loss_train_last": pp.get("loss_train_last"), "steps": pp.get("steps"),
                           "stop_reason": pp.get("stop_reason"),
                           "features_never_encoded": pp.get("features_never_encoded")} for kk, pp, _ in tried}
        return {**params, "k_best": k, "k_sweep": sweep, "k_mults": list(K_MULTS),
                "k_chosen_by": "least training loss (mean of the last window of training batches)"}


#: ``trained-topk-practitioner`` and ``trained-batchtopk-practitioner`` (the architectures taking ``recipe``).
PRACTITIONER = {a: _alias(a, f"{a} trained as practitioners do: tied init, unit-norm W_in columns, AuxK, k annealed; "
                             f"k swept over {'/'.join(f'{m:g}' for m in K_MULTS)} x p n_s, the least training loss kept",
                          _Practitioner, "-practitioner") for a in PRACTITIONER_ARCHS}


@hookimpl
def decoderbench_register_commands(register):
    from . import board, compare

    register(board.command())
    register(compare.command())


@hookimpl
def decoderbench_register_grids(register):
    from importlib import resources

    register("trained", resources.files(__name__) / "trained.toml")  # `decoderbench run --grid trained`


@hookimpl
def decoderbench_register_decoders(register):
    register(Trained)
    for cls in (*DECODERS.values(), *PRACTITIONER.values()):
        register(cls)
