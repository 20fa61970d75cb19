"""Message-passing decoders: AMP and VAMP (OAMP) with the harness's conditional-mean denoiser.

Both see ``h = W_in x`` (kind ``iterative``) and touch the encoder only through its operators
(``encode`` = ``W_in``, ``adjoint`` = ``W_in^T``; for VAMP also ``project`` = ``P`` and ``pinv`` =
``x_ls``), fast transforms on the rug, never a dense matrix. The denoiser is the conditional mean of
the scalar channel ``r = x + N(0, 1/gamma)`` (``decoderbench.channel.conditional_moments``); its
divergence is ``Var[x | r] gamma``.

Variances are tracked per sample: every sample has its own scalar precisions and stops on its own,
and a stopped sample is frozen, so a sample's ``x_hat`` does not depend on the other samples in the
batch.

VAMP (Rangan, Schniter & Fletcher 2019; OAMP, Ma & Ping 2017) for a row-orthogonal ``W_in``, noiseless
(SCIENCE.md). Start uninformed: ``x1 = p/2``, ``E1 = v``, ``gamma1 = 0``, so ``r2 = p/2``,
``gamma2 = 1/v``. Then repeat::

    projection:  x2 = r2 - P r2 + x_ls           (divergence alpha2 = 1 - r)
                 r1 = (x2 - alpha2 r2) / (1 - alpha2),   gamma1 = gamma2 (1 - alpha2) / alpha2
    denoising:   x1, Var = E[x | r1], Var[x | r1] at noise 1/gamma1;   E1 = mean(Var)
                 alpha1 = gamma1 E1
                 r2 = (x1 - alpha1 r1) / (1 - alpha1),   gamma2 = (1 - alpha1) / E1

Its state evolution is ``theory.vamp_se``. AMP (Donoho, Maleki & Montanari 2009) for i.i.d. ``W_in``
(entries ``N(0, 1/n_d)``), started at ``x = 0``, ``z = h``::

    tau2 = |z|^2 / n_d;   x, Var = E[x | x + W^T z], Var[. | .] at noise tau2
    z = h - W x + (n_s / n_d) z mean(Var) / tau2          (the Onsager term)

Its state evolution is ``theory.amp_se``. Both return the denoiser's output (``x1``, resp. ``x``).

Cost per iteration and sample: one denoiser call on ``n_s`` entries (the dominant cost on CPU: the
exact posterior moments are formed in float64); VAMP applies ``P`` (two fast transforms) and ``W_in``
(one, for the residual below), AMP ``W_in^T`` and ``W_in`` (one transform each on the rug).

Stopping (per sample; ``self.info["stop_reasons"]`` counts them):

* ``converged``: the relative change of the estimate, ``|x_new - x_old| <= tol |x_new|``, and that of
  the estimated MSE ``E1`` (the mean posterior variance), ``|dE1| <= tol E1``, both hold (requiring
  both keeps a sample that is still recovering, whose ``E1`` falls by large factors, from stopping
  early). The current iterate is returned.
* ``variance_collapse``: ``E1`` fell below ``16 eps^2`` of the working dtype: the algorithm considers
  its estimate exact to working precision, and another step would divide by a vanishing variance.
  The current iterate is returned. (At small ``n_s`` this can be overconfidence; the row's loss
  says which.)
* ``breakdown``: the update cannot continue: ``alpha1 >= 1`` (``gamma2 <= 0``), a non-finite value,
  or AMP's ``tau2`` grew past ``_AMP_BLOWUP`` times its start. The best iterate is returned: the one
  with the least residual ``|h - W_in x|^2`` among the start and every sane iterate (a measured
  quantity; the algorithm's own ``E1`` can be confidently wrong once it has gone astray).
  ``self.info["breakdown"]`` counts such samples and ``self.info["note"]`` says so.
* ``max_iter``: the cap was reached; the current iterate is returned.

Nothing is ever NaN: a sample stops at the first sign of trouble, before a division by a
non-positive or vanishing variance.

Options (``ctx.options``): ``max_iter`` (int >= 1, default 200), ``tol`` (float >= 0, default 1e-6
in float64, 1e-5 otherwise; ``tol = 0`` stops only on an exact fixed point, a collapse, a breakdown
or the cap). ``self.info`` also holds ``predicted`` (the state-evolution loss of the cell:
``vamp_se`` for VAMP, ``amp_se`` for AMP, whatever the encoder) and ``predicted_by``.
"""

from __future__ import annotations

import math

import torch

from decoderbench import Decoder, hookimpl
from decoderbench.channel import conditional_moments
from decoderbench.data import variance

REASONS = ("converged", "variance_collapse", "breakdown", "max_iter")
_DEFAULT_MAX_ITER = 200
#: AMP breaks down when its effective noise variance tau2 grows past this multiple of its start.
_AMP_BLOWUP = 1e3


def _collapse_floor(dtype: torch.dtype) -> float:
    """E1 below this (absolute) means the estimate is exact to working precision.

    Entries of x lie in [0, 1], so a per-entry error of ``eps`` is as good as the arithmetic gets;
    the floor sits a little above ``eps^2``.
    """
    eps = torch.finfo(dtype).eps
    return 16.0 * eps * eps


class _MessagePassing(Decoder):
    kind = "iterative"
    version = "1"
    theory_key = ""

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.check_options(("max_iter", "tol"))
        opts = dict(ctx.options or {})
        max_iter = opts.get("max_iter", _DEFAULT_MAX_ITER)
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, float)) or max_iter != int(max_iter) \
                or int(max_iter) < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        self.max_iter = int(max_iter)
        default_tol = 1e-6 if ctx.dtype == torch.float64 else 1e-5
        tol = opts.get("tol", default_tol)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        self.tol = float(tol)
        self.p = ctx.p
        self.v = variance(ctx.p)
        self._counts = {k: 0 for k in REASONS}
        self._iters_sum = 0
        self._iters_max = 0
        self._n = 0
        from decoderbench import theory

        se = getattr(theory, self.theory_key)(ctx.p, ctx.n_d / ctx.n_s)
        self.info = {"predicted": se.mse, "predicted_by": self.theory_key, "max_iter": self.max_iter,
                     "tol": self.tol, "variances": "per sample"}

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, reason: torch.Tensor, iters: torch.Tensor) -> None:
        """Fold one batch's per-sample stop reasons (indices into REASONS) and iterations into info."""
        for k, name in enumerate(REASONS):
            self._counts[name] += int((reason == k).sum())
        self._iters_sum += int(iters.sum())
        self._iters_max = max(self._iters_max, int(iters.max()))
        self._n += int(iters.numel())
        most = max(REASONS, key=lambda k: self._counts[k])
        self.info.update(
            iterations_mean=self._iters_sum / self._n, iterations_max=self._iters_max, n_decoded=self._n,
            stop_reasons={k: c for k, c in self._counts.items() if c}, stop_reason=most,
            breakdown=self._counts["breakdown"])
        if self._counts["breakdown"]:
            self.info["note"] = (f"{self._counts['breakdown']} of {self._n} samples broke down; "
                                 "each returned its best iterate (least residual |h - W_in x|^2)")

    def _denoise(self, r: torch.Tensor, noise_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x | r], mean Var[x | r] per sample) at per-sample noise variance ``noise_var`` (k, 1)."""
        mean, var = conditional_moments(r, self.p, 0.0, noise_var.sqrt())
        return mean, var.mean(-1, keepdim=True)

    def _run(self, h: torch.Tensor, x0: torch.Tensor, init, step) -> torch.Tensor:
        """Shared per-sample loop.

        ``x0`` (B, n_s) is the algorithm's starting estimate. ``init(h) -> state`` (a dict of (B, ...)
        tensors). ``step(state, h) -> (x, E, res, ok, state)``: one iteration on the active samples
        giving the new estimate ``x`` (k, n_s), its estimated MSE ``E`` (k, 1), its residual
        ``res = |h - W_in x|^2`` (k,), and ``ok`` (k,), False where the update broke down (then the
        other outputs may be garbage and are not used).
        """
        B = h.shape[0]
        dtype = h.dtype
        floor = _collapse_floor(dtype)
        out = torch.empty(B, self.ctx.n_s, dtype=dtype, device=h.device)
        if B == 0:
            return out
        best_x = x0.clone()
        best_res = (h - self.ctx.encoder.encode(x0)).square().sum(-1)
        prev_x = x0.clone()
        prev_e = torch.full((B, 1), self.v, dtype=dtype, device=h.device)
        reason = torch.full((B,), -1, dtype=torch.long, device=h.device)
        iters = torch.zeros(B, dtype=torch.long, device=h.device)
        active = torch.arange(B, device=h.device)
        state = init(h)
        for it in range(1, self.max_iter + 1):
            x, e, res, ok, state = step(state, h[active])
            iters[active] = it
            ok = ok & torch.isfinite(e[:, 0]) & torch.isfinite(res) & torch.isfinite(x).all(-1)
            # best iterate so far: least residual |h - W_in x|^2 (a measured quantity; the algorithm's
            # own E can be confidently wrong once the iteration has gone astray)
            better = ok & (res < best_res[active])
            if bool(better.any()):
                idx = active[better]
                best_x[idx] = x[better]
                best_res[idx] = res[better]
            dx = (x - prev_x[active]).square().sum(-1)
            nx = x.square().sum(-1)
            de = (e[:, 0] - prev_e[active, 0]).abs()
            conv = ok & (dx <= self.tol * self.tol * nx) & (de <= self.tol * e[:, 0])
            collapse = ok & (e[:, 0] <= floor)
            broke = ~ok
            code = torch.full_like(active, -1)
            code[conv] = REASONS.index("converged")
            code[collapse] = REASONS.index("variance_collapse")
            code[broke] = REASONS.index("breakdown")
            if it == self.max_iter:
                code[code < 0] = REASONS.index("max_iter")
            done = code >= 0
            if bool(done.any()):
                idx = active[done]
                reason[idx] = code[done]
                # breakdown returns the best iterate; the others return the current one
                out[idx] = torch.where(broke[done, None], best_x[idx], x[done])
            keep = ~done
            if not bool(keep.any()):
                break
            active = active[keep]
            prev_x[active] = x[keep]
            prev_e[active] = e[keep]
            state = {k: v[keep] for k, v in state.items()}
        self._record(reason, iters)
        return out

    def _check_h(self, h: torch.Tensor) -> None:
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[-1] != self.ctx.n_d:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(f"h must be a tensor of shape (B, {self.ctx.n_d}), got {shape}")


class VAMP(_MessagePassing):
    name = "vamp"
    requires = frozenset({"orthogonal_rows"})
    description = "VAMP/OAMP, conditional-mean denoiser and projection step (row-orthogonal W_in)"
    theory_key = "vamp_se"

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        self._check_h(h)
        enc = self.ctx.encoder
        a2 = 1.0 - self.ctx.n_d / self.ctx.n_s  # divergence of the projection step, tr(I - P)/n_s
        B, dtype, dev = h.shape[0], h.dtype, h.device

        def projection(r2, g2, x_ls):
            """x2 = r2 - P r2 + x_ls, then the extrinsic r1 and its precision g1."""
            x2 = r2 - enc.project(r2) + x_ls
            return (x2 - a2 * r2) / (1.0 - a2), g2 * ((1.0 - a2) / a2)

        def init(h_):
            # uninformed start: x1 = p/2 with E1 = v and g1 = 0 give r2 = p/2, g2 = 1/v
            x_ls = enc.pinv(h_)
            r2 = torch.full((B, self.ctx.n_s), 0.5 * self.p, dtype=dtype, device=dev)
            g2 = torch.full((B, 1), 1.0 / self.v, dtype=dtype, device=dev)
            r1, g1 = projection(r2, g2, x_ls)
            return {"r1": r1, "g1": g1, "x_ls": x_ls}

        def step(state, h_):
            r1, g1, x_ls = state["r1"], state["g1"], state["x_ls"]
            ok = torch.isfinite(g1[:, 0]) & (g1[:, 0] > 0) & torch.isfinite(r1).all(-1)
            g1 = torch.where(ok[:, None], g1, torch.ones_like(g1))
            r1 = torch.where(ok[:, None], r1, torch.zeros_like(r1))
            x1, e1 = self._denoise(r1, 1.0 / g1)  # denoising step
            a1 = g1 * e1  # its divergence
            ok = ok & (a1[:, 0] < 1.0)  # else gamma2 <= 0: breakdown
            a1 = torch.where(ok[:, None], a1, torch.zeros_like(a1))
            # E1 = 0 is a collapse (the loop stops the sample now), not a breakdown: guard the division
            e1s = torch.where(ok[:, None] & (e1 > 0), e1, torch.ones_like(e1))
            r2 = (x1 - a1 * r1) / (1.0 - a1)
            g2 = (1.0 - a1) / e1s
            r1n, g1n = projection(r2, g2, x_ls)
            res = (h_ - enc.encode(x1)).square().sum(-1)
            return x1, e1, res, ok, {"r1": r1n, "g1": g1n, "x_ls": x_ls}

        x0 = torch.full((B, self.ctx.n_s), 0.5 * self.p, dtype=dtype, device=dev)
        return self._run(h, x0, init, step)


class AMP(_MessagePassing):
    name = "amp"
    description = "AMP, conditional-mean denoiser with the Onsager term (i.i.d. Gaussian theory)"
    theory_key = "amp_se"

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        self._check_h(h)
        enc = self.ctx.encoder
        ratio = self.ctx.n_s / self.ctx.n_d

        def init(h_):
            return {"x": h_.new_zeros(h_.shape[0], self.ctx.n_s), "z": h_.clone(),
                    "tau2_0": h_.square().mean(-1, keepdim=True)}

        def step(state, h_):
            x, z, tau2_0 = state["x"], state["z"], state["tau2_0"]
            tau2 = z.square().mean(-1, keepdim=True)  # per-sample effective noise variance
            ok = torch.isfinite(tau2[:, 0]) & (tau2[:, 0] > 0) & (tau2[:, 0] <= _AMP_BLOWUP * tau2_0[:, 0])
            tau2 = torch.where(ok[:, None], tau2, torch.ones_like(tau2))
            rr = torch.where(ok[:, None], x + enc.adjoint(z), torch.zeros_like(x))
            xn, e = self._denoise(rr, tau2)
            wx = enc.encode(xn)
            zn = h_ - wx + (ratio * e / tau2) * z  # Onsager: (n_s/n_d) <eta'> z, <eta'> = E / tau2
            res = (h_ - wx).square().sum(-1)
            return xn, e, res, ok, {"x": xn, "z": zn, "tau2_0": tau2_0}

        return self._run(h, torch.zeros(h.shape[0], self.ctx.n_s, dtype=h.dtype, device=h.device), init, step)


@hookimpl
def decoderbench_register_decoders(register):
    register(VAMP)
    register(AMP)
