"""Bring your own activation: any torch function or ``torch.nn.Module`` ``act(y)`` as a decoder ``act(a z + b)``.

:func:`activation_decoder` turns ``act`` into an ``elementwise`` :class:`ActivationDecoder` subclass named
after the callable (overridable). The decoder sees ``z = W_out h`` like every elementwise decoder and
outputs ``act(a z + b)``; its two scalars ``a``, ``b`` (and the module's own parameters, if ``act`` is a
module that has any) are fitted on pooled training pairs ``(z_i, x_i)`` to the least per-feature squared
error, the benchmark's loss.

**The optimiser.** A callable's loss surface is unknown: a ReLU whose kink lies above every training ``z``
has zero gradient, a step has zero gradient everywhere, a saturating function has long plateaus, and
several basins are possible. So the fit is a global coarse search followed by a local quasi-Newton one:

1. a grid of ``STARTS`` = 3 slopes ``a in {0.5, 1, 2}`` (``z`` is on the scale of ``x``: the rug's
   ``R_ii = 1``) times 5 offsets that put ``a z + b = 0`` at the median, the 90th, the ``1 - 2p``, ``1 - p``
   and ``1 - p/2`` quantiles of the training ``z`` (where the optimum of a thresholding activation lies:
   about ``p`` of the features are on); every start's training loss is evaluated (no gradient needed);
2. L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search, float64, full batch) from the ``REFINE`` = 3
   best starts, over ``a``, ``b`` and the module's parameters (reset to their initial values for each
   start): two parameters and one fixed training set make the objective deterministic and smooth
   almost everywhere, where a quasi-Newton method converges in tens of steps to the bottom of the basin,
   with no learning rate to tune and no minibatch noise (the same seed gives the same row). A start
   that ends non-finite or worse than where it began keeps its starting point.

The lowest training loss wins. ``params`` reports ``a``, ``b``, ``train_loss``, the optimiser, the starts'
losses and the number of module parameters fitted. On the cell ``n_s = 1024, r = 0.25, p = 0.045``,
``act = torch.relu`` lands within 1% of the built-in exact least-squares ``relu`` (tests/test_activation.py).

**Entrywise?** A callable cannot be trusted to act on each entry alone (a softmax does not), so the
decoder is declared ``elementwise`` and the harness probes it after ``fit`` like every elementwise decoder
(``decoderbench.run.worker.probe_elementwise``): one that compares entries becomes an error row saying so.
Pass ``kind="filtering"`` to register a callable that may compare entries (it is then not probed).

Options (``ctx.options``): ``fit_pairs`` (default ``2^19``), how many scalar pairs the fit pools.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re

import torch
from pydantic import Field

from .decoder import Decoder
from .options import Options, PosNumber

DEFAULT_PAIRS = 2**19
SLOPES = (0.5, 1.0, 2.0)
STARTS = len(SLOPES) * 5
REFINE = 3
LBFGS_ITER = 100
CHECK_SHAPE = (2, 64)  # the small batch an activation is checked on before anything runs


def callable_name(act) -> str:
    """The decoder name a callable gets: its ``__name__`` (a function), or its class name in lower case (a
    module, e.g. ``torch.nn.GELU()`` -> ``gelu``), made identifier-like (``<lambda>`` -> ``lambda``)."""
    if isinstance(act, torch.nn.Module):
        raw = type(act).__name__.lower()
    else:
        raw = getattr(act, "__name__", None) or type(act).__name__
    name = re.sub(r"[^0-9A-Za-z_.-]", "", str(raw)).strip("._-") or "activation"
    if name[0].isdigit():
        name = "act_" + name
    return name


def check_activation(act, name: str, dtype=torch.float32) -> None:
    """TypeError/ValueError naming ``name`` unless ``act`` maps a small batch to a finite tensor of its shape."""
    if not callable(act):
        raise TypeError(f"activation {name!r}: {act!r} is not callable")
    y = torch.linspace(-3.0, 3.0, CHECK_SHAPE[0] * CHECK_SHAPE[1], dtype=dtype).reshape(CHECK_SHAPE)
    probe = act
    if isinstance(act, torch.nn.Module):
        probe = copy.deepcopy(act).to(dtype)
    try:
        with torch.no_grad():
            out = probe(y.clone())
    except Exception as exc:
        raise ValueError(f"activation {name!r} fails on a ({CHECK_SHAPE[0]}, {CHECK_SHAPE[1]}) tensor: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"activation {name!r} must return a torch tensor, got {type(out).__name__}")
    if tuple(out.shape) != CHECK_SHAPE:
        raise ValueError(f"activation {name!r} must return a tensor of its input's shape {CHECK_SHAPE}, "
                         f"got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"activation {name!r} returned non-finite values on inputs in [-3, 3]")


def code_digest(obj) -> str:
    """A short digest of what ``obj`` computes (a callable, a module or a class): the bytecode, constants and
    names of its functions, and a module's initial parameters. It goes into the version of session-defined
    decoders, so that a store never reuses a row of an edited notebook function."""
    h = hashlib.sha256()

    def code(c):
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for k in c.co_consts:
            if hasattr(k, "co_code"):
                code(k)
            else:
                h.update(repr(k).encode())

    def feed(o, depth=0):
        f = getattr(o, "__func__", o)
        if hasattr(f, "__code__"):
            code(f.__code__)
        elif isinstance(o, type) and depth < 2:
            h.update(o.__qualname__.encode())
            for k in sorted(vars(o)):
                v = vars(o)[k]
                if k.startswith("__") and k not in ("__init__", "__call__"):
                    continue
                h.update(k.encode())
                if isinstance(v, (str, int, float, bool, tuple, frozenset)) or v is None:
                    h.update(repr(v).encode())
                else:
                    feed(getattr(v, "__func__", v), depth + 1)
        else:
            h.update(f"{getattr(o, '__module__', '')}.{getattr(o, '__qualname__', repr(type(o)))}".encode())
        if isinstance(o, torch.nn.Module):
            feed(type(o), depth)
            for k, t in sorted(o.state_dict().items()):
                h.update(k.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())

    feed(obj)
    return h.hexdigest()[:10]


class ActivationOptions(Options):
    fit_pairs: PosNumber = Field(DEFAULT_PAIRS, description="scalar pairs (z_i, x_i) the fit pools")


class ActivationDecoder(Decoder):
    """``act(a z + b)`` with ``a``, ``b`` (and a module's parameters) fitted; see the module docstring.

    Subclasses are made by :func:`activation_decoder`; ``_act`` holds the callable (in a tuple, so that a
    function does not become a method)."""

    kind = "elementwise"
    _act: tuple = ()
    description = "act(a z + b), fitted by multi-start L-BFGS"
    Options = ActivationOptions

    def __init__(self, ctx):
        super().__init__(ctx)
        (act,) = type(self)._act
        self.module = copy.deepcopy(act) if isinstance(act, torch.nn.Module) else None
        self.fn = self.module if self.module is not None else act
        self.a, self.b = 1.0, 0.0

    # -- fitting ----------------------------------------------------------------------------------
    def _pairs(self, train):
        n = max(8, math.ceil(float(self.opts.fit_pairs) / self.ctx.n_s))
        z, x = train.pairs(n, batch=min(1024, n))
        return z.detach().to(torch.float64), x.detach().to(torch.float64)

    def _loss(self, z, x, a, b):
        out = self.fn(z * a + b)
        if not isinstance(out, torch.Tensor) or out.shape != z.shape:
            raise ValueError(f"activation {self.name!r} returned {type(out).__name__} of shape "
                             f"{tuple(getattr(out, 'shape', ()))} for an input of shape {tuple(z.shape)}")
        return ((out - x) ** 2).mean()

    def fit(self, train):
        z, x = self._pairs(train)
        p = self.ctx.p
        if self.module is not None:
            self.module.to(device=z.device, dtype=torch.float64)
        params0 = [t for t in self.module.parameters() if t.requires_grad] if self.module is not None else []
        init_state = [t.detach().clone() for t in params0]
        flat = z.reshape(-1)
        qs = [0.5, 0.9, 1 - 2 * p, 1 - p, 1 - p / 2]
        levels = torch.quantile(flat[: min(flat.numel(), 2**24)].float(),
                                torch.tensor([min(max(q, 0.0), 1.0) for q in qs])).double().tolist()
        starts = [(s, -s * t) for s in SLOPES for t in levels]

        def reset():
            with torch.no_grad():
                for t, t0 in zip(params0, init_state):
                    t.copy_(t0)

        losses = []
        with torch.no_grad():
            for a, b in starts:
                v = float(self._loss(z, x, a, b))
                losses.append(v if math.isfinite(v) else math.inf)
        order = sorted(range(len(starts)), key=lambda i: (losses[i], i))[:REFINE]
        best = None  # (loss, a, b, module state)
        iters = []
        for i in order:
            reset()
            a0, b0 = starts[i]
            ab = torch.tensor([a0, b0], dtype=torch.float64, device=z.device, requires_grad=True)
            opt = torch.optim.LBFGS([ab, *params0], lr=1, max_iter=LBFGS_ITER, tolerance_grad=1e-12,
                                    tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = self._loss(z, x, ab[0], ab[1])
                if loss.requires_grad:
                    loss.backward()
                return loss

            try:
                opt.step(closure)
                with torch.no_grad():
                    end = float(self._loss(z, x, float(ab[0].detach()), float(ab[1].detach())))
                st = opt.state[opt._params[0]]
                iters.append(int(st.get("n_iter", 0)))
            except (RuntimeError, ValueError) as exc:
                if "returned" in str(exc):  # a wrong shape: the activation's fault, not the optimiser's
                    raise
                end = math.inf
                iters.append(0)
            if math.isfinite(end) and end <= losses[i]:
                a1, b1 = ab.detach().tolist()
                cand = (end, a1, b1, [t.detach().clone() for t in params0])
            else:  # keep the start
                reset()
                cand = (losses[i], a0, b0, [t.detach().clone() for t in params0])
            if best is None or cand[0] < best[0]:
                best = cand
        loss, self.a, self.b, state = best
        with torch.no_grad():
            for t, v in zip(params0, state):
                t.copy_(v)
        if not math.isfinite(loss):
            raise ValueError(f"activation {self.name!r}: no start gave a finite training loss")
        if self.module is not None:
            self.module.requires_grad_(False)
        return {"a": self.a, "b": self.b, "train_loss": loss, "fit_pairs": int(z.numel()),
                "optimizer": f"grid of {len(starts)} starts, then L-BFGS (strong Wolfe, float64) from the best "
                             f"{len(order)}",
                "start_losses": [losses[i] for i in order], "lbfgs_iters": iters,
                "module_params": int(sum(t.numel() for t in params0))}

    def decode(self, z):
        with torch.no_grad():
            if self.module is not None:
                self.module.to(device=z.device, dtype=z.dtype)
            return self.fn(z * self.a + self.b)


def activation_decoder(act, name: str | None = None, kind: str = "elementwise", version: str = "1") -> type:
    """A decoder class for the activation ``act`` (a torch function or ``nn.Module``): ``act(a z + b)``.

    ``name``: the decoder's name (default: :func:`callable_name`). ``kind``: ``elementwise`` (probed for
    entrywise action after ``fit``) or ``filtering`` (may compare entries). A plugin registers the class this
    returns like any other; ``decoderbench.evaluate`` accepts ``act`` itself and calls this."""
    if kind not in ("elementwise", "filtering"):
        raise ValueError(f"an activation's kind must be elementwise or filtering, got {kind!r}")
    name = name or callable_name(act)
    check_activation(act, name)
    desc = f"{name}(a z + b), (a, b)" + (" and the module's parameters" if isinstance(act, torch.nn.Module) else "") \
        + " fitted by multi-start L-BFGS"
    cls = type(f"Activation_{re.sub(r'[^0-9A-Za-z_]', '_', name)}", (ActivationDecoder,),
               {"name": name, "kind": kind, "_act": (act,), "version": str(version), "description": desc,
                "__module__": __name__})
    return cls
