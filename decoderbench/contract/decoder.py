"""The decoder contract: what a plugin implements and what the harness hands it.

A decoder is a small class with a unique ``name`` (what ``--plugins`` selects), a ``kind``, an
optional ``fit`` that learns a few parameters from training samples of the cell, and a ``decode``
that maps a batch to ``x_hat`` (shape (B, n_s)). What a decoder sees depends on its kind:

============  =====================================================  ===========================
kind          ``decode`` receives                                     may also use
============  =====================================================  ===========================
elementwise   ``z = W_out h`` (B, n_s); must act on each entry alone  fitted scalars
filtering     ``z = W_out h`` (B, n_s); may compare entries (TopK)    fitted scalars
reference     ``z = W_out h`` (B, n_s)                                ``ctx.p``, ``ctx.mu``, ``ctx.sigma``
iterative     ``h = W_in x`` (B, n_d)                                 ``ctx.encoder`` (its operators)
learned       ``h = W_in x`` (B, n_d) with its OWN trained ``W_in``,   anything it trains
              applied by the harness (``input_encoder``)
============  =====================================================  ===========================

A learned decoder owns its encoder: it trains on ``x`` (``TrainingSet`` hands it ``x``, the target of its
reconstruction loss) and, once fitted, exposes its ``W_in`` through ``encoder_weight()`` (an ``n_d x n_s``
tensor). The harness takes that weight once, right after ``fit`` (:func:`input_encoder`, a detached copy that
later changes to the decoder cannot reach), encodes every evaluation batch itself and hands ``decode`` only
``h = x W_in^T``: no decoder kind ever receives ``x`` at decode time (:func:`prepare_input` has no such
input), and a rank-``n_d`` code is all a learned decoder sees, as for every other kind.

The prior (``p``, and ``x_i = c_i u_i``) is part of the cell and known to every decoder. Training
samples come from ``TrainingSet`` (a seeded stream of its own); the harness scores on a separate
stream, so no sample is ever both fitted and scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .._validate import check_nd, check_ns, check_p, check_seed
from ..model.data import SparseSampler, derive_seed, make_generator
from ..errors import BadInput

KINDS = ("elementwise", "filtering", "reference", "iterative", "learned")
INPUT_OF_KIND = {"elementwise": "z", "filtering": "z", "reference": "z", "iterative": "h", "learned": "code"}
INPUTS = ("z", "h", "code")
#: How a decoder reports whether it converged: the keys ``converged`` (True: its stopping rule was met, on every
#: sample for a per-sample iteration; False: it stopped on a cap first; None or absent: not known) and
#: ``stop_reason`` (a short word) in the dict ``fit`` returns or in ``self.info``. The harness copies them into
#: the row's columns of the same names (:data:`STOP_COLUMNS`), which the board reads.
STOP_COLUMNS = ("converged", "stop_reason")
#: Stop reasons that mean the decoder stopped before its stopping rule judged it (a time or step cap, or
#: divergence): such a row is ranked nowhere. ``max_iter`` (an iteration cap) is judged by the row's plateau.
CAP_STOP_REASONS = ("time_cap", "step_cap", "diverged")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: ``n_s`` features, ``n_d`` dense dimensions, sparsity ``p``."""

    n_s: int
    n_d: int
    p: float

    def __post_init__(self):
        object.__setattr__(self, "n_s", check_ns(self.n_s))
        object.__setattr__(self, "n_d", check_nd(self.n_d, self.n_s))
        object.__setattr__(self, "p", check_p(self.p))

    @property
    def r(self) -> float:
        return self.n_d / self.n_s


class CellOnlyEncoder:
    """``ctx.encoder`` as an ``elementwise`` decoder sees it: what describes the cell (``n_s``, ``n_d``, ``r``,
    ``capabilities``, ``interference(p)``, ``rowsum()``, ``describe()``, its name) but none of the operators:
    a decoder that acts on each entry of ``z`` alone has no use for them, and one that calls them is not
    elementwise. Calling one raises ValueError (an error row) naming it. (Python can always reach the real
    object; the harness's check on the scored batches, ``worker.entrywise_on_scored``, is what a decoder cannot
    get around.)"""

    OPERATORS = frozenset({"encode", "adjoint", "decode", "apply", "project", "pinv", "w_in", "dense"})

    def __init__(self, encoder, who: str):
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_who", who)

    def __getattr__(self, name):
        if name in CellOnlyEncoder.OPERATORS:
            raise ValueError(f"{self._who}: kind 'elementwise' but it called ctx.encoder.{name}: an elementwise "
                             "decoder acts on each entry of z alone; declare kind 'iterative' to use the encoder's "
                             "operators")
        return getattr(self._encoder, name)

    def __setattr__(self, name, value):
        raise AttributeError("ctx.encoder is read-only")

    def __repr__(self) -> str:
        return f"CellOnlyEncoder({self._encoder!r})"


def harness_encoder(encoder):
    """The encoder behind a :class:`CellOnlyEncoder` (what the harness itself encodes training samples with)."""
    return encoder._encoder if isinstance(encoder, CellOnlyEncoder) else encoder


@dataclass
class DecoderContext:
    """Everything a decoder is told about its cell. Built by the harness, one per (cell, decoder, seed); a
    decoder holds it as ``self.ctx``.

    ``n_s``, ``n_d``, ``r``, ``p`` (the prior ``x_i = c_i u_i`` is known to every decoder), ``seed``, ``device``,
    ``dtype``; ``options`` (the decoder's options: a grid's ``[options.NAME]`` or ``evaluate(options=...)``);
    ``encoder`` (its operators: :class:`decoderbench.Encoder`; for kinds other than iterative, use it only
    to know the cell; an ``elementwise`` decoder gets a :class:`CellOnlyEncoder`, whose operators raise); ``mu`` and ``sigma`` (mean and standard deviation of the interference ``nu_i``);
    ``theory()`` (the cell's exact theory); ``eval_batch_size``; ``generator(purpose)``.
    """

    cell: Cell
    seed: int
    encoder: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    options: dict = field(default_factory=dict)
    decoder_name: str = ""

    @property
    def n_s(self) -> int:
        return self.cell.n_s

    @property
    def n_d(self) -> int:
        return self.cell.n_d

    @property
    def p(self) -> float:
        return self.cell.p

    @property
    def r(self) -> float:
        return self.cell.r

    @property
    def mu(self) -> float:
        """Mean of the interference nu_i (the same for every row of the rug)."""
        return self.encoder.interference(self.p)[0]

    @property
    def sigma(self) -> float:
        """Standard deviation of the interference nu_i (paper eq. 6: sqrt(v (n_s/n_d - 1)), v = p/3 - p^2/4)."""
        return self.encoder.interference(self.p)[1]

    def check_options(self, allowed) -> None:
        """ValueError if ``options`` names an option the decoder does not take (the older protocol, for decoders
        that declare no ``Options`` schema: such a decoder calls this in ``__init__`` with the names it accepts).
        Deprecated: declare ``Options`` instead (every built-in does)."""
        import warnings

        warnings.warn(f"{self.decoder_name or 'a decoder'}: ctx.check_options is deprecated; declare the options "
                      "as a nested `class Options(decoderbench.Options)` instead", DeprecationWarning, stacklevel=2)
        unknown = sorted(set(self.options or {}) - set(allowed))
        if unknown:
            raise ValueError(f"options for {self.decoder_name or 'this decoder'} must be among "
                             f"{', '.join(allowed) or '(none)'}; got {', '.join(map(str, unknown))}")

    def generator(self, purpose: str) -> torch.Generator:
        """A fresh generator for the decoder's own randomness (initialisation, restarts), derived
        from the cell, the seed, the decoder and ``purpose``; never global state."""
        c = self.cell
        return make_generator(derive_seed("decoder", self.decoder_name, c.n_s, c.n_d, c.p, self.seed, purpose),
                              self.device)

    @property
    def eval_batch_size(self) -> int:
        """Samples per evaluation batch the harness hands ``decode`` (a decoder whose output depends on
        the batch, as BatchTopK's does, fits on batches of this size)."""
        from ..model.evalkey import eval_batch_size

        return eval_batch_size(self.n_s, self.device)

    def theory(self) -> dict:
        """The cell's theory values (decoderbench.model.theory.cell_theory)."""
        from ..model.theory import cell_theory

        return cell_theory(self.n_s, self.n_d, self.p)


class TrainingSet:
    """Fresh training samples of the cell, in the form the decoder's kind sees.

    ``sample(batch)`` returns ``(inp, x)``: ``inp`` is z, h or x according to the kind, ``x`` the
    truth. Every call draws new samples from the training stream.
    """

    def __init__(self, ctx: DecoderContext, input_kind: str, purpose: str = "train"):
        self.ctx = ctx
        self.input_kind = input_kind
        self.sampler = SparseSampler(ctx.n_s, ctx.p, ctx.seed, purpose, device=ctx.device, dtype=ctx.dtype)
        self.n_drawn = 0

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.sampler.sample(batch)
        self.n_drawn += x.shape[0]
        if self.input_kind == "code":  # a learned decoder trains its own encoder on x (the reconstruction target)
            return x, x
        return prepare_input(harness_encoder(self.ctx.encoder), self.input_kind, x), x

    def pairs(self, n: int, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """n fresh samples, concatenated."""
        inps, xs = [], []
        left = int(n)
        while left > 0:
            i, x = self.sample(min(batch, left))
            inps.append(i)
            xs.append(x)
            left -= x.shape[0]
        return torch.cat(inps), torch.cat(xs)


class LearnedCode:
    """A learned decoder's own encoder as the harness applies it: ``encode(x) = x W_in^T``.

    Built by :func:`input_encoder` from a detached copy of the decoder's ``encoder_weight()``, checked to be a
    finite floating ``n_d x n_s`` tensor (a code of rank at most ``n_d``, like the cell's encoder's).
    """

    def __init__(self, W_in: torch.Tensor, n_s: int, n_d: int, who: str = "decoder"):
        if not isinstance(W_in, torch.Tensor) or not W_in.is_floating_point():
            raise ValueError(f"{who}.encoder_weight() must return a floating torch tensor, got {type(W_in).__name__}")
        if tuple(W_in.shape) != (n_d, n_s):
            raise ValueError(f"{who}.encoder_weight() must have shape (n_d, n_s) = ({n_d}, {n_s}), "
                             f"got {tuple(W_in.shape)}")
        W_in = W_in.detach().clone()
        if not bool(torch.isfinite(W_in).all()):
            raise ValueError(f"{who}.encoder_weight() must be finite")
        self.W_in = W_in
        self.n_s, self.n_d = n_s, n_d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_in.to(x.device, x.dtype).T


def input_encoder(decoder: "Decoder", encoder):
    """What the harness encodes ``x`` with before ``decoder.decode``: the cell's ``encoder``, or, for a learned
    decoder, its own ``W_in`` (:class:`LearnedCode`, taken now: call it once, after ``fit``)."""
    if decoder.kind != "learned":
        return encoder
    get = getattr(decoder, "encoder_weight", None)
    if not callable(get):
        raise ValueError(f"learned decoder {decoder.name!r} must define encoder_weight() (its W_in, n_d x n_s)")
    return LearnedCode(get(), decoder.ctx.n_s, decoder.ctx.n_d, who=decoder.name or type(decoder).__name__)


def prepare_input(encoder, input_kind: str, x: torch.Tensor) -> torch.Tensor:
    """The decoder's input for a batch ``x``: ``z = W_out W_in x``, ``h = W_in x``, or (``code``) ``h`` from a
    learned decoder's own encoder (``encoder`` must then be :func:`input_encoder`'s :class:`LearnedCode`). There
    is no input kind that passes ``x`` itself."""
    if input_kind not in INPUTS:
        raise ValueError(f"input kind must be one of {', '.join(INPUTS)}, got {input_kind!r}")
    if input_kind == "code":
        if not isinstance(encoder, LearnedCode):
            raise ValueError("a learned decoder's input is its own code: encode with input_encoder(decoder, ...)")
        return encoder.encode(x)
    if isinstance(encoder, LearnedCode):
        raise ValueError(f"input kind {input_kind!r} needs the cell's encoder, not a learned code")
    h = encoder.encode(x)
    if input_kind == "h":
        return h
    return encoder.decode(h)


class Decoder:
    """Base class of every decoder plugin.

    Subclasses set ``name`` and ``kind`` and implement ``decode``; ``fit`` is optional. Set
    ``requires`` to the encoder capabilities the decoder needs (e.g. ``{"orthogonal_rows"}``): on an
    encoder without them the harness skips it with a reason. Bump ``version`` whenever a change
    alters the numbers, so stored results are recomputed. ``self.info`` may collect diagnostics during
    ``decode`` (iterations, stop reason); they are stored with the fitted parameters. Two keys of ``info`` (or
    of the dict ``fit`` returns) are public row columns that the board reads: ``converged`` (bool, or None when
    unknown) and ``stop_reason`` (``converged``, ``max_iter``, or one of :data:`CAP_STOP_REASONS`; see
    :data:`STOP_COLUMNS`). An iterative decoder that stops per sample may also report ``stop_reasons``, a dict
    ``{reason: samples}``: when ``converged`` is False the board counts the ``max_iter`` samples from it.

    The harness builds one decoder per (cell, seed) with its :class:`DecoderContext`: the context is
    ``self.ctx``, and a subclass that overrides ``__init__`` must call ``super().__init__(ctx)`` (which sets
    ``self.ctx`` and ``self.info``). ``fit(train)`` draws from ``train`` (:class:`TrainingSet`): ``train.sample(B)``
    and ``train.pairs(n)`` return ``(inp, x)``, float tensors on ``ctx.device`` of ``ctx.dtype`` (float32 unless a
    grid says float64), ``x`` of shape (n, n_s) and ``inp`` what ``decode`` receives (z: (n, n_s); h: (n, n_d);
    for a learned decoder, x itself). Randomness comes from ``ctx.generator(purpose)``, never global state.
    ``decode`` must return a finite (B, n_s) tensor of its input's device and dtype and leave its input alone.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    requires: ClassVar[frozenset] = frozenset()
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    #: The decoder's declared options: a subclass of ``decoderbench.Options`` (a pydantic model, unknown keys
    #: refused), checked before a sweep starts and read as ``self.opts``; None: undeclared (legacy decoders).
    Options: ClassVar[type | None] = None

    def __init__(self, ctx: DecoderContext):
        self.ctx = ctx
        self.info: dict = {}
        #: the validated options (an ``Options`` instance with defaults filled in), or None when undeclared
        self.opts = None
        if type(self).Options is not None:
            from .options import check

            self.opts = check(type(self), ctx.options or {}, ctx.cell, name=ctx.decoder_name or self.name)

    def fit(self, train: TrainingSet) -> dict | None:
        """Learn parameters from ``train`` (fresh samples of the cell); return them as a JSON-able dict."""
        return {}

    def decode(self, inp: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def input_kind(cls) -> str:
        return INPUT_OF_KIND[cls.kind]

    @classmethod
    def validate_options(cls, options: dict, cell: Cell) -> None:
        """The older protocol, for decoders that declare no ``Options``: raise ValueError (one line naming the
        option and what is allowed) for options this decoder cannot take at ``cell``; called before a sweep
        starts. Default: no check. Deprecated: a declared ``Options`` schema takes its place."""


def check_decoder_class(cls) -> None:
    """Raise ValueError if ``cls`` does not meet the contract (used at registration)."""
    if not (isinstance(cls, type) and issubclass(cls, Decoder)):
        raise ValueError(f"a decoder must be a subclass of decoderbench.Decoder, got {cls!r}")
    if not isinstance(cls.name, str) or not cls.name or not cls.name.replace("-", "_").replace(".", "_").isidentifier():
        raise ValueError(f"decoder name must be a non-empty identifier-like string, got {cls.name!r}")
    if cls.kind not in KINDS:
        raise ValueError(f"decoder {cls.name!r}: kind must be one of {', '.join(KINDS)}, got {cls.kind!r}")
    if cls.name == "all":
        raise ValueError("decoder name 'all' is reserved")


def json_safe(value):
    """Convert tensors/numpy scalars in a params dict to plain JSON types; non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    if hasattr(value, "item") and callable(value.item):
        try:
            return json_safe(value.item())
        except Exception:
            return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)
