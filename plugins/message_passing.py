"""Message-passing decoders: AMP and VAMP (OAMP) with the harness's conditional-mean denoiser.

Both see ``h = W_in x`` (kind ``iterative``) and touch the encoder only through its operators
(``encode`` = ``W_in``, ``adjoint`` = ``W_in^T``; for VAMP also ``project`` = ``P`` and ``pinv`` =
``x_ls``), fast transforms on the rug, never a dense matrix. The denoiser is the conditional mean of
the scalar channel ``r = x + N(0, 1/gamma)`` (``decoderbench.model.channel.conditional_moments``); its
divergence is ``Var[x | r] gamma``.

Variances are tracked per sample: every sample has its own scalar precisions, damping and restart
count, and stops on its own, so a sample's ``x_hat`` does not depend on the other samples in the batch.

VAMP (Rangan, Schniter & Fletcher 2019; OAMP, Ma & Ping 2017) for a row-orthogonal ``W_in``
(``W_in W_in^T = (n_s/n_d) I``; the projector ``P = (n_d/n_s) R`` and the least-squares solution
``x_ls = W_in^T (W_in W_in^T)^{-1} h``), noiseless. Start uninformed: ``r2 = p/2``, ``1/gamma2 = v``
(the prior's mean and variance). Then repeat::

    projection:  x2 = r2 - P r2 + x_ls           (divergence alpha2 = 1 - r)
                 r1 = (x2 - alpha2 r2) / (1 - alpha2) = r2 + (x_ls - P r2) / r
                 gamma1 = gamma2 (1 - alpha2) / alpha2 = gamma2 r / (1 - r)
    denoising:   x1, Var = E[x | r1], Var[x | r1] at noise 1/gamma1;   E1 = mean(Var)
                 alpha1 = gamma1 E1
                 r2' = (x1 - alpha1 r1) / (1 - alpha1),   1/gamma2' = E1 / (1 - alpha1)
    damping:     r2 = d r2' + (1 - d) r2,   1/gamma2 = d / gamma2' + (1 - d) / gamma2

With ``d = 1`` (the default) this is exactly the recursion whose state evolution is
``theory.vamp_se``: the t-th ``E1`` of state evolution is the t-th iterate's loss, which the row stores
as ``predicted_t``. AMP (Donoho, Maleki & Montanari 2009) for i.i.d. ``W_in`` (entries
``N(0, 1/n_d)``), started at ``x = 0``, ``z = h``::

    tau2 = |z|^2 / n_d;   x, Var = E[x | x + W^T z], Var[. | .] at noise tau2
    z' = h - W x + (n_s / n_d) z mean(Var) / tau2          (the Onsager term)
    z = d z' + (1 - d) z                                   (damping)

Its state evolution is ``theory.amp_se``. Both return the denoiser's output (``x1``, resp. ``x``).

What keeps them honest, and where the rules come from (read in the reference implementations):

* A variance collapse is not evidence. The prior lives on [0, 1], so at large precision the posterior
  variance is near zero for *any* input: ``E1`` falling to working precision says the algorithm is
  confident, not that it is right. At n_s = 256, r = 0.1, p = 0.01 (a cell with 2.6 active features per
  sample) accepting every collapse gave a loss 5x worse than outputting zero. A collapse therefore ends
  a sample (``variance_collapse``) only when the estimate reproduces ``h`` to working precision,
  ``|h - W_in x1|^2 <= (64 eps)^2 |h|^2`` (a measured quantity the algorithm cannot talk itself into).
  Otherwise the sample *restarts*: it is sent an uninformative message, the estimate it reached as the
  mean with the prior's variance ``v`` as the uncertainty (``r2 = x1``, ``1/gamma2 = v``; for AMP,
  ``z = h - W x``, dropping the Onsager memory). This is vampyre's rule (``estim/msg.py``,
  ``MsgHdlSimp.msg_sub``): when the variance did not decrease sanely (``alpha >= alpha_max``) it sends an
  infinite-variance message instead of dividing by a vanishing variance. We keep the current mean in it
  rather than vampyre's "r = z with infinite variance" because an infinite variance on the rug's
  projection step restarts the whole iteration from scratch, which is deterministic and would replay
  the same collapse. ``info["restarts"]`` counts the events, ``info["restarted_samples"]`` the samples.
* Damping after a restart (automatic damping on trouble). GAMPmatlab's ``VampSlmEst`` shrinks its step
  when the cost rises and reverts the step; tramp's callbacks restore the previous messages on NaN or a
  variance blow-up. Here every restart also halves that sample's damping ``d`` (never below 1/8), so
  the replayed iteration takes shorter steps; so does every ``_SLOW_EVERY = 60`` iterations without a
  stop (a sample that wanders or oscillates). Measured (float32, 512-2048 samples; without -> with the
  halving every 60 iterations -> every 30): n_s 1024, r 0.05, p 0.01: 8.1e-4 -> 3.0e-4 -> 3.1e-4 (43
  samples had run to the 200-iteration cap at a mean loss of 0.0092, 2.8x p/3; 34 at 0.0036 with it);
  n_s 1024, r 0.1, p 0.045 (just below the threshold): 6.64e-3 -> 6.27e-3 -> 6.31e-3 (cap hits 190 ->
  116 of 512); n_s 256, r 0.1, p 0.01: 7.9e-5 -> 8.5e-5 -> 1.5e-4 (within noise at 60, worse at 30). A
  sample that stops within 60
  iterations without a restart (most samples of most cells) never sees damping below the option.
* A non-finite value, ``alpha1 >= 1`` (``gamma2 <= 0``) or AMP's ``tau2`` growing past ``_AMP_BLOWUP``
  times its start is a breakdown: the sample restarts as above from its last finite iterate.
* A sample that has restarted ``_MAX_RESTARTS`` times and still fails stops with ``breakdown`` and
  returns its fallback: for AMP the iterate of least residual ``|h - W_in x|^2`` among the start
  (``x = 0``, loss ``p/3``) and every finite iterate; for VAMP its first iterate (the elementwise
  conditional mean of the first projection, whose loss state evolution puts at the elementwise MMSE,
  below ``p/3``). ``info["breakdown"]`` counts them and ``info["note"]`` says so.

Damping, measured (float32, with the rules above; ``damping`` 1 against 0.7): n_s 256, r 0.1, p 0.01
(2048 samples): loss 8.5e-5 +- 2.0e-5 against 1.0e-4 +- 2.7e-5 (427 restarts against 10: damping avoids
most false collapses, the restarts repair them); n_s 1024, r 0.05, p 0.01: 3.0e-4 +- 5e-5 against
3.3e-4 +- 5e-5; n_s 4096, r 0.25, p 0.045 (recovery): 14.8 against 27.3 iterations per sample; n_s 4096,
r 0.1, p 0.1 (a stall, 0.0248 both, state evolution 0.0252): 15.3 against 19.4 iterations. Damping buys
no loss and costs 1.3-1.9x the iterations, so the default is 1: the plain recursion, which state
evolution describes step by step.

Stopping (per sample; ``info["stop_reasons"]`` counts them):

* ``converged``: ``|x_new - x_old| <= tol |x_new|`` and ``|dE1| <= tol E1``.
* ``variance_collapse``: ``E1`` below ``16 eps^2`` of the working dtype *and* ``h`` reproduced (above).
* ``breakdown``: restarts exhausted (above).
* ``max_iter``: the cap was reached; VAMP returns the current iterate, AMP its least-residual one (see
  ``AMP._cap_returns_fallback``).

Nothing is ever NaN: a sample never divides by a non-positive or vanishing variance.

Cost (one iteration, per sample, ``n_s`` entries): one denoiser call written into preallocated buffers,
for VAMP two in-place fast transforms (the projection; ``x_ls - P r2`` is formed in the transform
domain, ``H x_ls`` computed once) and about ten elementwise passes; AMP one ``W_in^T`` and one
``W_in``. Buffers are allocated once per batch; samples that stop are left in place (their rows are
still computed, and discarded) until at most half the rows are live, then the live rows are compacted
into smaller buffers: an index gather about log2(B) times per batch, none per iteration.

Options (``ctx.options``; refused before anything runs, one line naming the option): ``max_iter``
(int >= 1, default 200), ``tol`` (finite float >= 0, default 1e-6 in float64, 1e-5 otherwise;
``tol = 0`` stops only on an exact fixed point, an accepted collapse, a breakdown or the cap),
``damping`` (float in (0, 1], default 1). ``self.info`` also holds ``predicted`` (the state-evolution
loss of the cell: ``vamp_se`` for VAMP, ``amp_se`` for AMP, whatever the encoder), ``predicted_by``, and
``predicted_t``: state evolution after the largest number of iterations any sample ran (equal to
``predicted`` unless the iterations were capped: an unrolled ``max_iter = t`` decoder sits on it), and the
row's declared stop columns: ``stop_reason`` (the most frequent per-sample reason) and ``converged`` (True when
no sample hit ``max_iter`` or broke down).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import Field

from decoderbench import Decoder, hookimpl
from decoderbench.model.channel import conditional_moments
from decoderbench.model.data import variance
from decoderbench.model.encoders import PersianRug
from decoderbench.model.hadamard import fwht, fwht_
from decoderbench.contract.options import NonNegNumber, Options, PosInt, UnitFraction

REASONS = ("converged", "variance_collapse", "breakdown", "max_iter")
OPTIONS = ("max_iter", "tol", "damping")
_DEFAULT_MAX_ITER = 200
_DEFAULT_DAMPING = 1.0
#: AMP breaks down when its effective noise variance tau2 grows past this multiple of its start.
_AMP_BLOWUP = 1e3
#: A sample that needs more restarts than this stops with ``breakdown`` and returns its fallback.
_MAX_RESTARTS = 6
#: Each restart multiplies the sample's damping by this, down to _MIN_DAMPING.
_RESTART_DAMPING = 0.5
_MIN_DAMPING = 0.125
#: A sample still iterating after every this many iterations has its damping halved (down to _MIN_DAMPING).
_SLOW_EVERY = 60
#: Compact the live rows into smaller buffers once at most this fraction of the rows is live.
_COMPACT_BELOW = 0.5


#: State entries shared by all rows (not compacted).
_SHARED = frozenset({"negm"})


def _collapse_floor(dtype: torch.dtype) -> float:
    """E1 below this (absolute) means the algorithm considers its estimate exact to working precision.

    Entries of x lie in [0, 1], so a per-entry error of ``eps`` is as good as the arithmetic gets;
    the floor sits a little above ``eps^2``.
    """
    eps = torch.finfo(dtype).eps
    return 16.0 * eps * eps


def _reproduces(dtype: torch.dtype) -> float:
    """``|h - W_in x|^2 / |h|^2`` at most this: the estimate reproduces h to working precision.

    ``(64 eps)^2``: 5.8e-11 in float32. A transform of ``n_s`` entries loses about ``eps sqrt(log2 n_s)``
    relative accuracy, so a recovered VAMP estimate sits near 1e-14. Measured at n_s 256, r 0.1, p 0.01
    (2048 samples): loosening it to ``(1024 eps)^2`` let near-solutions through (wrong estimates that almost
    reproduce h: 26 measurements, 2.6 active features) and doubled VAMP's loss, 7.9e-5 -> 1.5e-4. AMP's
    recovered float32 estimates can sit above it (its Onsager recursion loses digits: up to about 2e-10 at
    n_s 1024); they restart, and if they keep failing this test they end on ``breakdown`` returning their
    least-residual iterate, which is the recovered one.
    """
    eps = torch.finfo(dtype).eps
    return (64.0 * eps) ** 2


class MessagePassingOptions(Options):
    """The options of ``vamp`` and ``amp`` (checked before a sweep starts; ``decoderbench plugins`` lists them)."""

    max_iter: Optional[PosInt] = Field(  # noqa: UP007 (pydantic reads the annotation at runtime)
        None, description=f"iteration cap per sample (default {_DEFAULT_MAX_ITER}); with a small cap the row is "
                          "unrolled message passing, described by state evolution after that many iterations "
                          "(predicted_t)")
    tol: Optional[NonNegNumber] = Field(  # noqa: UP007
        None, description="stop when |x - x_prev| <= tol |x| (default 1e-6 in float64, 1e-5 in float32)")
    damping: Optional[UnitFraction] = Field(  # noqa: UP007
        None, description=f"message damping d in (0, 1], 1 = none (default {_DEFAULT_DAMPING})")


class _MessagePassing(Decoder):
    kind = "iterative"
    version = "2"
    theory_key = ""

    Options = MessagePassingOptions

    def __init__(self, ctx):
        super().__init__(ctx)
        max_iter, tol, damping = self.opts.max_iter, self.opts.tol, self.opts.damping
        self.max_iter = _DEFAULT_MAX_ITER if max_iter is None else max_iter
        self.tol = (1e-6 if ctx.dtype == torch.float64 else 1e-5) if tol is None else tol
        self.damping = _DEFAULT_DAMPING if damping is None else damping
        self.p = ctx.p
        self.v = variance(ctx.p)
        self._counts = {k: 0 for k in REASONS}
        self._iters_sum = 0
        self._iters_max = 0
        self._n = 0
        self._restarts = 0
        self._restarted = 0
        from decoderbench.model import theory

        self._se = getattr(theory, self.theory_key)
        r = ctx.n_d / ctx.n_s
        self._r = r
        se = self._se(ctx.p, r)
        self._se_iterations = se.iterations
        self.info = {"predicted": se.mse, "predicted_by": self.theory_key, "max_iter": self.max_iter,
                     "tol": self.tol, "damping": self.damping, "variances": "per sample"}

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, reason: torch.Tensor, iters: torch.Tensor, restarts: torch.Tensor) -> None:
        """Fold one batch's per-sample stop reasons (indices into REASONS), iterations and restarts into info."""
        for k, name in enumerate(REASONS):
            self._counts[name] += int((reason == k).sum())
        self._iters_sum += int(iters.sum())
        self._iters_max = max(self._iters_max, int(iters.max()))
        self._n += int(iters.numel())
        self._restarts += int(restarts.sum())
        self._restarted += int((restarts > 0).sum())
        most = max(REASONS, key=lambda k: self._counts[k])
        # state evolution after the iterations the row ran (the cap binds only if it is below SE's own count)
        t = self._iters_max
        pred_t = self.info["predicted"] if t >= self._se_iterations else \
            self._se(self.p, self._r, tol=0.0, max_iter=t).mse
        self.info.update(
            iterations_mean=self._iters_sum / self._n, iterations_max=self._iters_max, n_decoded=self._n,
            stop_reasons={k: c for k, c in self._counts.items() if c}, stop_reason=most,
            # the row's declared column: every sample decoded so far stopped on its own rule (none on the
            # iteration cap, none broke down with its restarts exhausted)
            converged=self._counts["max_iter"] == 0 and self._counts["breakdown"] == 0,
            breakdown=self._counts["breakdown"], restarts=self._restarts, restarted_samples=self._restarted,
            predicted_t=pred_t)
        if self._counts["breakdown"]:
            self.info["note"] = (f"{self._counts['breakdown']} of {self._n} samples broke down (restarts exhausted); "
                                 f"each returned its {self._fallback_name}")

    def _check_h(self, h: torch.Tensor) -> None:
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[-1] != self.ctx.n_d:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"h must be a tensor of shape (B, {self.ctx.n_d}), got {shape}")

    # ------------------------------------------------------------------ the shared per-sample loop
    # A subclass provides: _init(h) -> state dict of per-row tensors (dim 0 = row; entries named in _SHARED
    # are shared by all rows) holding at least "x" (current estimate, written by _step), "xp" (the previous
    # one), "h" and "damp" (k, 1); _step(st) -> (e, ok, dx, nx): one iteration of every row in place, with
    # e (k,) the estimated MSE, ok (k,) False on a breakdown, dx = |x - xp| and nx = |x|;
    # _restart(st, idx, finite) -> send rows idx the uninformative message centred on their x (xp where
    # not finite); _freeze(st, idx) -> make stopped rows benign (finite, cheap); _fallback(st, idx).

    def _run(self, h: torch.Tensor) -> torch.Tensor:
        B = h.shape[0]
        dtype, dev = h.dtype, h.device
        out = torch.empty(B, self.ctx.n_s, dtype=dtype, device=dev)
        if B == 0:
            return out
        floor = _collapse_floor(dtype)
        reproduce = _reproduces(dtype)
        tol = self.tol
        reason = torch.full((B,), -1, dtype=torch.long)
        iters = torch.zeros(B, dtype=torch.long)
        restarts = torch.zeros(B, dtype=torch.long)
        st = self._init(h)
        rows = torch.arange(B)  # global sample index of each state row
        live = torch.ones(B, dtype=torch.bool)
        e_prev = torch.full((B,), self.v, dtype=torch.float64)
        n_rst = torch.zeros(B, dtype=torch.long)  # restarts per state row
        for it in range(1, self.max_iter + 1):
            e, ok, dx, nx = self._step(st)
            e64 = e.to(torch.float64).cpu()
            ok = ok.cpu() & torch.isfinite(e64) & torch.isfinite(nx.cpu()) & live
            dx, nx = dx.to(torch.float64).cpu(), nx.to(torch.float64).cpu()
            iters[rows[live]] = it
            if it == 1:
                self._keep_first(st)
            code = torch.full_like(rows, -1)
            conv = ok & (dx <= tol * nx) & ((e64 - e_prev).abs() <= tol * e64)
            code[conv] = 0
            collapse = ok & (e64 <= floor) & ~conv
            need_restart = live & ~ok
            src = torch.zeros_like(rows)  # what a stopping row returns: 0 its estimate, 1 the previous, 2 fallback
            if bool(collapse.any()):
                idx = collapse.nonzero().flatten()
                good = self._residual(st, idx, "x").cpu() <= reproduce
                code[idx[good]] = 1
                need_restart[idx[~good]] = True
            if bool((live & ~ok).any()):
                # a breakdown right after an exact estimate (e.g. AMP's z = 0) is a collapse of the previous one
                idx = (live & ~ok).nonzero().flatten()
                good = self._residual(st, idx, "xp").cpu() <= reproduce
                code[idx[good]], src[idx[good]] = 1, 1
                need_restart[idx[good]] = False
            if bool(need_restart.any()):
                idx = need_restart.nonzero().flatten()
                spent = n_rst[idx] >= _MAX_RESTARTS
                code[idx[spent]], src[idx[spent]] = 2, 2
                again = idx[~spent]
                if again.numel():
                    self._restart(st, again.to(dev), finite=ok[again].to(dev))
                    n_rst[again] += 1
                    restarts[rows[again]] += 1
                    e_prev[again] = self.v
            if it % _SLOW_EVERY == 0:  # still iterating: shorter steps (automatic damping on non-convergence)
                slow = (live & (code < 0)).to(dev)[:, None]
                st["damp"] = torch.where(slow, (st["damp"] * _RESTART_DAMPING).clamp_(min=_MIN_DAMPING), st["damp"])
            if it == self.max_iter:
                code[live & (code < 0)] = 3
                if self._cap_returns_fallback:
                    src[live & (code == 3)] = 2
                elif bool((live & (code == 3) & (n_rst > 0)).any()):  # restarted: the better of now and kept
                    idx = (live & (code == 3) & (n_rst > 0)).nonzero().flatten()
                    pick = self._cap_prefers_fallback(st, idx.to(dev)).cpu()
                    src[idx[pick]] = 2
            e_prev = torch.where(ok & ~need_restart, e64, e_prev)
            done = live & (code >= 0)
            if bool(done.any()):
                idx = done.nonzero().flatten()
                reason[rows[idx]] = code[idx]
                s_i = src[idx].to(dev)[:, None]
                idd = idx.to(dev)
                x_done = torch.where(s_i == 1, st["xp"].index_select(0, idd), st["x"].index_select(0, idd))
                out[rows[idx].to(dev)] = torch.where(s_i == 2, self._fallback(st, idd), x_done)
                live[idx] = False
                self._freeze(st, idx.to(dev))
            n_live = int(live.sum())
            if n_live == 0:
                break
            if n_live <= _COMPACT_BELOW * live.numel():
                keep = live.nonzero().flatten()
                kd = keep.to(dev)
                st = {k: (v.index_select(0, kd) if isinstance(v, torch.Tensor) and k not in _SHARED else v)
                      for k, v in st.items()}
                rows, e_prev, n_rst = rows[keep], e_prev[keep], n_rst[keep]
                live = torch.ones(keep.numel(), dtype=torch.bool)
        self._record(reason, iters, restarts)
        return out

    def _keep_first(self, st) -> None:
        pass

    def _cap_prefers_fallback(self, st, idx):
        return torch.zeros(idx.numel(), dtype=torch.bool)

    #: whether a sample stopped by the iteration cap returns its fallback instead of its current iterate
    _cap_returns_fallback = False

    def _residual(self, st, idx, key: str):
        """``|h - W_in x|^2 / |h|^2`` for rows ``idx`` of ``st[key]`` (non-finite: inf)."""
        return self._relative_residual(st["h"].index_select(0, idx), st[key].index_select(0, idx))

    def _relative_residual(self, h, x):
        """``|h - W_in x|^2 / |h|^2`` per row (non-finite: inf)."""
        res = (h - self.ctx.encoder.encode(x)).square().sum(-1)
        res = res / h.square().sum(-1).clamp(min=torch.finfo(h.dtype).tiny)
        return torch.nan_to_num(res, nan=math.inf)

    def _fallback(self, st, idx):
        return st["fallback"].index_select(0, idx)


class VAMP(_MessagePassing):
    version = "3"  # 3: a sample capped after a restart returns the better of its estimate and the kept one
    name = "vamp"
    requires = frozenset({"orthogonal_rows"})
    description = "VAMP/OAMP, conditional-mean denoiser and projection step (row-orthogonal W_in)"
    theory_key = "vamp_se"
    _fallback_name = "first iterate (the elementwise conditional mean)"

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        self._check_h(h)
        return self._run(h)

    # --- the projection step: r1 = r2 + (x_ls - P r2) / r, gamma1 = gamma2 r / (1 - r)

    def _project(self, st, r2, r1) -> None:
        """Write ``r2 + (x_ls - P r2) / r`` into ``r1`` (rows of ``st`` matching r2's)."""
        enc = self.ctx.encoder
        if st["c"] is not None:  # rug: in place in the transform domain, c = H x_ls
            buf = st["buf"]
            buf.copy_(r2)
            fwht_(buf)
            torch.addcmul(st["c"], buf, st["negm"], out=buf)  # H x_ls - m * (H r2) = H (x_ls - P r2)
            fwht_(buf)
            torch.add(r2, buf, alpha=1.0 / (self.ctx.n_s * self._r), out=r1)
        else:
            r1.copy_(r2 + (st["x_ls"] - enc.project(r2)) / self._r)

    def _init(self, h):
        enc = self.ctx.encoder
        B, n_s, dtype, dev = h.shape[0], self.ctx.n_s, h.dtype, h.device
        x_ls = enc.pinv(h)
        fast = isinstance(enc, PersianRug) and x_ls.is_contiguous()
        st = {"h": h, "c": None, "x_ls": None, "buf": None, "negm": None}
        if fast:
            st["c"] = fwht(x_ls)
            st["negm"] = enc.mask.to(device=dev, dtype=dtype).neg()[None, :]
            st["buf"] = torch.zeros_like(x_ls)
            del x_ls
        else:
            st["x_ls"] = x_ls
        # every (B, n_s) buffer is zeroed here, not left empty: first writes into untouched pages inside the
        # blocked posterior cost ~20 us a page on this machine (a zeroing pass ~1 us), which made the posterior
        # of VAMP's second iteration 2.6-2.9x that of its later ones at n_s 65536, B 256 (one iteration cost
        # 11.3 rug applies before, 6.3 after, 2 threads)
        st["r2"] = torch.full((B, n_s), 0.5 * self.p, dtype=dtype, device=dev)
        st["v2"] = torch.full((B, 1), self.v, dtype=dtype, device=dev)  # 1/gamma2
        st["r1"] = torch.zeros_like(st["r2"])
        self._project(st, st["r2"], st["r1"])
        st["g1"] = (1.0 / st["v2"]) * (self._r / (1.0 - self._r))
        st["x"] = torch.zeros_like(st["r2"])
        st["xp"] = torch.full_like(st["r2"], 0.5 * self.p)
        st["var"] = torch.zeros_like(st["r2"])
        st["tmp"] = torch.zeros_like(st["r2"])
        st["fallback"] = None  # set after the first iteration
        st["damp"] = torch.full((B, 1), self.damping, dtype=dtype, device=dev)
        return st

    def _keep_first(self, st) -> None:
        st["fallback"] = torch.nan_to_num(st["x"], nan=0.5 * self.p)
        st["fb_res"] = self._residual(st, torch.arange(st["x"].shape[0], device=st["x"].device), "fallback")

    def _cap_prefers_fallback(self, st, idx):
        """Rows ``idx`` stopped by the cap after a restart: True where the kept iterate (the first, or the
        estimate a restart left, whichever reproduced h better) has a smaller residual than the current one,
        which may be mid-way back from an uninformative message (a cap of 16 iterations otherwise returned
        such half-restarted estimates: loss 1.9e-6 against 4e-9 at a cap of 12, n_s 1024, r 0.25, p 0.045)."""
        return self._residual(st, idx, "fallback") < self._residual(st, idx, "x")

    def _step(self, st):
        # the previous estimate becomes xp; the denoiser writes the new one into the freed buffer
        st["x"], st["xp"] = st["xp"], st["x"]
        x, xp, r1, g1, var, tmp = st["x"], st["xp"], st["r1"], st["g1"], st["var"], st["tmp"]
        conditional_moments(r1, self.p, 0.0, g1.rsqrt(), out=(x, var))
        e1 = var.mean(-1, keepdim=True)
        torch.sub(x, xp, out=tmp)
        dx = torch.linalg.vector_norm(tmp, dim=-1)
        nx = torch.linalg.vector_norm(x, dim=-1)
        a1 = g1 * e1
        ok = (a1[:, 0] < 1.0) & torch.isfinite(a1[:, 0]) & (e1[:, 0] >= 0)  # (E1 = 0: a collapse)
        one_m = torch.where(ok[:, None], 1.0 - a1, torch.ones_like(a1))
        a1 = torch.where(ok[:, None], a1, torch.zeros_like(a1))
        # r2' = (x1 - a1 r1) / (1 - a1), 1/gamma2' = E1 / (1 - a1)
        torch.mul(x, 1.0 / one_m, out=tmp)
        tmp.addcmul_(r1, -a1 / one_m)
        # (a row with E1 = 0 stops or restarts after this step: keep its next precision finite)
        v2n = torch.where(ok[:, None] & (e1 > 0), e1 / one_m, st["v2"])
        damp = st["damp"]
        if bool((damp < 1.0).any()):
            st["r2"].lerp_(tmp, damp)
            st["v2"] = damp * v2n + (1.0 - damp) * st["v2"]
        else:
            st["r2"], st["tmp"] = tmp, st["r2"]
            st["v2"] = v2n
        st["v2"] = torch.where(ok[:, None] & (st["v2"] > 0), st["v2"], torch.full_like(st["v2"], self.v))
        self._project(st, st["r2"], st["r1"])
        st["g1"] = (self._r / (1.0 - self._r)) / st["v2"]
        return e1[:, 0], ok, dx, nx  # (norms: the loop compares dx <= tol nx)

    def _restart(self, st, idx, finite):
        """Rows idx: uninformative message centred on the estimate reached (the previous one if the current
        is not finite): r2 = x1, 1/gamma2 = v; the sample's damping halves."""
        center = torch.where(finite[:, None], st["x"].index_select(0, idx), st["xp"].index_select(0, idx))
        center = torch.nan_to_num(center, nan=0.5 * self.p).clamp_(0.0, 1.0)
        # the estimate reached is kept as the fallback if it reproduces h better than the one kept so far
        res = self._relative_residual(st["h"].index_select(0, idx), center)
        better = res < st["fb_res"].index_select(0, idx)
        if bool(better.any()):
            bi = idx[better]
            st["fallback"][bi] = center[better]
            st["fb_res"][bi] = res[better]
        st["r2"][idx] = center
        st["v2"][idx] = self.v
        st["damp"][idx] = (st["damp"][idx] * _RESTART_DAMPING).clamp_(min=_MIN_DAMPING)
        sub = {"c": None if st["c"] is None else st["c"].index_select(0, idx), "negm": st.get("negm"),
               "x_ls": None if st["x_ls"] is None else st["x_ls"].index_select(0, idx)}
        sub["buf"] = torch.empty_like(center)
        r1 = torch.empty_like(center)
        self._project(sub, center, r1)
        st["r1"][idx] = r1
        st["g1"][idx] = (self._r / (1.0 - self._r)) / self.v
        st["x"][idx] = center  # (the next step compares its estimate with this one)

    def _freeze(self, st, idx):
        st["r1"][idx] = 0.5 * self.p
        st["g1"][idx] = (self._r / (1.0 - self._r)) / self.v
        st["v2"][idx] = self.v


class AMP(_MessagePassing):
    name = "amp"
    description = "AMP, conditional-mean denoiser with the Onsager term (i.i.d. Gaussian theory)"
    theory_key = "amp_se"
    _fallback_name = "best iterate (least residual |h - W_in x|^2, the start x = 0 included)"
    # AMP on a matrix that is not i.i.d. (the rug) can oscillate at a stall: measured at n_s 1024, r 0.2,
    # p 0.2, 233 of 256 samples ran to the cap with a mean loss of 0.065 (p/3 = 0.067) at their last
    # iterate, 0.0387 at their least-residual one (state evolution 0.0388). (VAMP: no difference, 0.0063
    # either way at n_s 1024, r 0.1, p 0.045, so it keeps its current iterate and saves a transform.)
    _cap_returns_fallback = True

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        self._check_h(h)
        return self._run(h)

    def _init(self, h):
        B, n_s = h.shape[0], self.ctx.n_s
        x = h.new_zeros(B, n_s)
        # (every (B, n_s) buffer zeroed once here: see VAMP._init)
        return {"h": h, "x": x, "xp": torch.zeros_like(x), "var": torch.zeros_like(x), "rr": torch.zeros_like(x),
                "z": h.clone(),
                "tau2_0": h.square().mean(-1, keepdim=True), "fallback": torch.zeros_like(x),
                "best": h.square().sum(-1), "res": h.square().sum(-1),
                "damp": torch.full((B, 1), self.damping, dtype=h.dtype, device=h.device)}

    def _step(self, st):
        enc = self.ctx.encoder
        h, z, tau2_0 = st["h"], st["z"], st["tau2_0"]
        st["x"], st["xp"] = st["xp"], st["x"]
        x, xp, var = st["x"], st["xp"], st["var"]
        tau2 = z.square().mean(-1, keepdim=True)  # per-sample effective noise variance
        ok = torch.isfinite(tau2[:, 0]) & (tau2[:, 0] > 0) & (tau2[:, 0] <= _AMP_BLOWUP * tau2_0[:, 0])
        tau2 = torch.where(ok[:, None], tau2, torch.ones_like(tau2))
        rr = (enc.adjoint(z, out=st["rr"]) if isinstance(enc, PersianRug) else enc.adjoint(z)).add_(xp)
        rr = torch.where(ok[:, None], rr, torch.zeros_like(rr)) if not bool(ok.all()) else rr
        conditional_moments(rr, self.p, 0.0, tau2.sqrt(), out=(x, var))
        e = var.mean(-1, keepdim=True)
        wx = enc.encode(x)
        zn = h - wx + (self.ctx.n_s / self.ctx.n_d) * (e / tau2) * z  # Onsager: (n_s/n_d) <eta'> z
        damp = st["damp"]
        st["z"] = zn if not bool((damp < 1.0).any()) else z.lerp(zn, damp)
        res = (h - wx).square().sum(-1)
        st["res"] = res
        good = ok & torch.isfinite(res) & (res < st["best"])
        if bool(good.any()):
            gi = good.nonzero().flatten()
            st["fallback"][gi] = x.index_select(0, gi)
            st["best"][gi] = res[gi]
        dx = torch.linalg.vector_norm(torch.sub(x, xp, out=st["rr"]), dim=-1)  # (rr is spent)
        nx = torch.linalg.vector_norm(x, dim=-1)
        return e[:, 0], ok & torch.isfinite(res), dx, nx

    def _restart(self, st, idx, finite):
        """Rows idx: restart from the estimate reached (the previous one if the current is not finite) with
        z = h - W x (no Onsager memory); the sample's damping halves."""
        center = torch.where(finite[:, None], st["x"].index_select(0, idx), st["xp"].index_select(0, idx))
        center = torch.nan_to_num(center, nan=0.0).clamp_(0.0, 1.0)
        st["x"][idx] = center
        st["z"][idx] = st["h"].index_select(0, idx) - self.ctx.encoder.encode(center)
        st["damp"][idx] = (st["damp"][idx] * _RESTART_DAMPING).clamp_(min=_MIN_DAMPING)

    def _freeze(self, st, idx):
        st["z"][idx] = st["h"].index_select(0, idx)
        st["x"][idx] = 0.0


@hookimpl
def decoderbench_register_decoders(register):
    register(VAMP)
    register(AMP)
