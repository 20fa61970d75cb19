"""``decoderbench new-plugin NAME --kind KIND``: a ready third-party distribution with a working decoder.

:func:`write_plugin` writes ``decoderbench-<name>/`` holding ``pyproject.toml`` (the entry point in group
``decoderbench``), ``decoderbench_<name>.py`` (a minimal working decoder of the kind, with comments naming
every part of the contract that kind may use) and ``tests/test_decoderbench_<name>.py`` (the contract checks
of :func:`decoderbench.testing.check_decoder`, and a loss below the trivial ``p/3``). Install it with
``pip install -e ./decoderbench-<name>`` and it is listed, run and tested like a built-in.
"""

from __future__ import annotations

from pathlib import Path

from .contract.decoder import KINDS
from .errors import BadInput

CONTRACT = '''\
# The contract (decoderbench.Decoder; README "Writing a decoder plugin"):
# - name (what --plugins and evaluate() select), kind, version (bump it whenever a change alters the
#   numbers: stored rows of another version are recomputed), description (one line), requires (the encoder
#   capabilities the decoder needs, e.g. {"orthogonal_rows"}; on an encoder without them the row is skipped).
# - The harness builds one decoder per (cell, seed): __init__(ctx) must call super().__init__(ctx), which
#   sets self.ctx and self.info (a dict of diagnostics, stored with the fitted parameters).
# - self.ctx: n_s, n_d, r, p (the prior is known: x_i = c_i u_i, c_i ~ Bernoulli(p), u_i ~ U[0, 1]), seed,
#   device, dtype, options (this decoder's options from a grid's [options.NAME] or evaluate(options=)),
#   encoder, mu and sigma (mean and spread of the interference nu_i), theory() (the cell's exact theory),
#   eval_batch_size, and generator(purpose): a torch.Generator for the decoder's own randomness (never
#   global state; the same (cell, seed, decoder, purpose) gives the same stream).
# - fit(train) draws fresh training samples (never the evaluation ones): train.sample(B) or train.pairs(n)
#   return (inp, x), both (n, n_s) (inp is (n, n_d) for kinds that see h) float tensors on ctx.device with
#   ctx.dtype (float32 by default); it returns its fitted parameters as a JSON-able dict (the row's params).
# - Options: declared once in the nested class Options (a pydantic model: types, defaults, descriptions;
#   unknown keys refused); checked before a sweep starts, listed by `decoderbench plugins`, and read as
#   self.opts (validated, defaults filled in). Set them in a grid's [options.NAME] or evaluate(options=).
# - decode(inp) maps a batch (B, ...) to x_hat, a finite (B, n_s) tensor of the input's dtype and device, and
#   must not change its input. A decode that is costly per sample stays affordable with a sample cap:
#   [sampling.NAME] max_samples = 256 in a grid, or evaluate(..., max_samples=256).
'''

KIND_NOTES = {
    "elementwise": '''\
# kind "elementwise": decode receives z = W_out h, (B, n_s), and must act on each entry alone (the harness
# probes it: an output entry may depend only on the same input entry). It may use fitted scalars.''',
    "filtering": '''\
# kind "filtering": decode receives z = W_out h, (B, n_s); it may compare the entries of a row (TopK), never
# mix rows. It may use fitted scalars.''',
    "reference": '''\
# kind "reference": decode receives z = W_out h, (B, n_s); it may use the cell's prior and interference
# (ctx.p, ctx.mu, ctx.sigma) and the theory (ctx.theory()).''',
    "iterative": '''\
# kind "iterative": decode receives h = W_in x, (B, n_d), and may apply the encoder's operators
# (ctx.encoder): encode(x) = W_in x, adjoint(h) = W_in^T h, decode(h) = W_out h, apply(x) = R x =
# W_out W_in x; on encoders with capability "orthogonal_rows" (the rug) also project(x) = P x (the projector
# onto W_in's row space, P = (n_d/n_s) R) and pinv(h) = W_in^T (W_in W_in^T)^-1 h (least squares).''',
    "learned": '''\
# kind "learned": the decoder owns its encoder. fit trains on x (train.sample(B) returns (x, x): the input is
# x itself, the reconstruction target), then encoder_weight() returns its W_in (n_d x n_s); the harness takes
# it once after fit, encodes every evaluation batch itself and hands decode only h = x W_in^T, (B, n_d).''',
}

BODIES = {
    "elementwise": '''\
class {cls}(Decoder):
    """a ReLU(z - t): the kink t at a quantile of the training z, a by least squares, the best of a few."""

    name = "{name}"
    kind = "elementwise"
    version = "1"
    description = "a relu(z - t), t from a few quantiles, a by least squares"

    class Options(Options):  # declared once: checked before a sweep, listed by `decoderbench plugins`
        fit_samples: PosInt = Field(64, description="training samples the fit draws")

    def fit(self, train):
        z, x = train.pairs(self.opts.fit_samples)  # (n, n_s) each, on ctx.device, ctx.dtype
        z, x = z.reshape(-1).double(), x.reshape(-1).double()
        best = None
        for q in (0.5, 0.8, 0.9, 0.95, 0.98):
            t = float(torch.quantile(z[:100000], q))
            y = torch.relu(z - t)
            a = float((x * y).sum() / (y * y).sum().clamp_min(1e-30))
            loss = float(((x - a * y) ** 2).mean())
            if best is None or loss < best[0]:
                best = (loss, a, t)
        loss, self.a, self.t = best
        return {{"a": self.a, "t": self.t, "train_loss": loss}}

    def decode(self, z):
        return self.a * torch.relu(z - self.t)
''',
    "filtering": '''\
class {cls}(Decoder):
    """Per sample, keep the k = round(p n_s) largest entries of a (z - mu), zero the rest (a TopK)."""

    name = "{name}"
    kind = "filtering"
    version = "1"
    description = "top-k of a (z - mu), k = round(p n_s), a by least squares"

    class Options(Options):
        fit_samples: PosInt = Field(64, description="training samples the fit draws")

    def __init__(self, ctx):
        super().__init__(ctx)  # sets self.ctx, self.info and self.opts (the validated options)
        self.k = max(1, round(ctx.p * ctx.n_s))
        self.a = 1.0

    def _keep(self, z):
        y = z - self.ctx.mu
        idx = y.topk(self.k, dim=1).indices  # compares entries within a row: kind "filtering"
        return torch.zeros_like(y).scatter(1, idx, y.gather(1, idx)).clamp_min(0)

    def fit(self, train):
        z, x = train.pairs(self.opts.fit_samples)
        y = self._keep(z).double()
        self.a = float((x.double() * y).sum() / (y * y).sum().clamp_min(1e-30))
        self.info["k"] = self.k
        return {{"a": self.a, "k": self.k}}

    def decode(self, z):
        return self.a * self._keep(z)
''',
    "reference": '''\
class {cls}(Decoder):
    """Keep z - mu where it exceeds the level that pure interference passes with probability p."""

    name = "{name}"
    kind = "reference"
    version = "1"
    description = "(z - mu) 1[z - mu > sigma Phi^-1(1 - p)], clipped to [0, 1]"

    class Options(Options):  # no options: any option given is refused with its name
        pass

    def __init__(self, ctx):
        super().__init__(ctx)
        # nu_i ~ (mu, sigma): a feature that is off gives z_i - mu > level with probability about p
        self.level = float(ctx.sigma) * float(torch.special.ndtri(torch.tensor(1.0 - ctx.p, dtype=torch.float64)))

    def fit(self, train):
        return {{"mu": float(self.ctx.mu), "sigma": float(self.ctx.sigma), "level": self.level}}

    def decode(self, z):
        y = z - self.ctx.mu
        return torch.where(y > self.level, y.clamp(0, 1), torch.zeros_like(y))
''',
    "iterative": '''\
class {cls}(Decoder):
    """Projected gradient on |W_in x - h|^2 over the box [0, 1]^n_s with a sparsity shrink (a few steps)."""

    name = "{name}"
    kind = "iterative"
    version = "1"
    description = "projected gradient through ctx.encoder, x in [0, 1], shrink lam"
    requires = frozenset({{"orthogonal_rows"}})  # uses pinv and the step 1/L with L = n_s/n_d

    class Options(Options):
        steps: PosInt = Field(10, description="projected-gradient steps per batch")
        fit_samples: PosInt = Field(256, description="training samples lam is chosen on")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.steps = self.opts.steps
        self.lam = 0.0

    def _run(self, h, lam):
        enc = self.ctx.encoder
        step = self.ctx.n_d / self.ctx.n_s  # 1 / L: W_in W_in^T = (n_s/n_d) I on the rug
        x = enc.pinv(h).clamp(0, 1)  # the least-squares start
        for _ in range(self.steps):
            grad = enc.adjoint(enc.encode(x) - h)  # gradient of |W_in x - h|^2 / 2
            x = (x - step * grad - step * lam).clamp(0, 1)  # shrink, then project onto the box
        return x

    def fit(self, train):
        h, x = train.pairs(self.opts.fit_samples)  # h: (n, n_d), x: (n, n_s)
        losses = {{lam: float(((self._run(h, lam) - x) ** 2).mean()) for lam in (0.0, 0.01, 0.03, 0.1, 0.3)}}
        self.lam = min(losses, key=losses.get)
        return {{"lam": self.lam, "steps": self.steps, "train_loss": losses[self.lam]}}

    def decode(self, h):
        self.info["steps"] = self.steps
        return self._run(h, self.lam)
''',
    "learned": '''\
class {cls}(Decoder):
    """A tied autoencoder x_hat = ReLU(W^T W x + b), W (n_d x n_s) and b trained by Adam on fresh batches."""

    name = "{name}"
    kind = "learned"
    version = "1"
    description = "tied ReLU autoencoder, a few hundred Adam steps"

    class Options(Options):
        steps: PosInt = Field(300, description="Adam steps")
        batch: PosInt = Field(256, description="fresh samples per step")
        lr: PosNumber = Field(3e-3, description="Adam's learning rate")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.steps, self.batch, self.lr = self.opts.steps, self.opts.batch, self.opts.lr

    def fit(self, train):
        gen = self.ctx.generator("init")  # the decoder's own randomness, derived from the cell and seed
        W = torch.randn(self.ctx.n_d, self.ctx.n_s, generator=gen, device=gen.device, dtype=torch.float32)
        W = (W / self.ctx.n_d ** 0.5).to(self.ctx.device, self.ctx.dtype).requires_grad_()
        b = torch.zeros(self.ctx.n_s, device=self.ctx.device, dtype=self.ctx.dtype, requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=self.lr)
        for _ in range(self.steps):
            x, _ = train.sample(self.batch)  # a learned decoder trains on x
            loss = ((torch.relu((x @ W.T) @ W + b) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.W, self.b = W.detach(), b.detach()
        return {{"train_loss": float(loss), "steps": self.steps}}

    def encoder_weight(self):
        return self.W  # W_in, (n_d, n_s): the harness encodes h = x W_in^T with it

    def decode(self, h):
        return torch.relu(h @ self.W.to(h.dtype) + self.b.to(h.dtype))
''',
}

MODULE = '''\
"""{description}.

A decoderbench plugin of kind {kind!r}, made by `decoderbench new-plugin`.
"""

import torch
from pydantic import Field

from decoderbench import Decoder, Options, hookimpl
from decoderbench.contract.options import PosInt, PosNumber  # noqa: F401 (types for declared options)

{contract}
{kind_note}


{body}

@hookimpl
def decoderbench_register_decoders(register):
    register({cls})
'''

PYPROJECT = '''\
# A decoderbench plugin: its own distribution, found through the entry-point group "decoderbench".
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "{description}"
requires-python = ">=3.10"
dependencies = ["decoderbench"]

[project.entry-points.decoderbench]
{ep} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
'''

TEST = '''\
"""The contract checks of decoderbench.testing, and a loss below the trivial p/3 (output 0)."""

from decoderbench.testing import check_decoder

from {module} import {cls}


def test_contract_and_better_than_nothing():
    row = check_decoder({cls})
    assert row["loss"] < row["trivial"]
'''


def names_for(name: str) -> dict:
    """The distribution, module, entry point and class names of plugin ``name``."""
    from .api import check_decoder_name

    try:
        check_decoder_name(name)
    except BadInput:
        raise BadInput(f"new-plugin: {name!r} is not a decoder name (letters, digits, - _ .)") from None
    if name == "all":
        raise BadInput("new-plugin: the decoder name 'all' is reserved")
    stem = name.replace("-", "_").replace(".", "_").lower()
    cls = "".join(part.capitalize() for part in stem.split("_") if part) or "MyDecoder"
    if cls[0].isdigit():
        cls = "D" + cls
    return {"name": name, "dist": f"decoderbench-{name.replace('_', '-').replace('.', '-').lower()}",
            "module": f"decoderbench_{stem}", "ep": name, "cls": cls}


def render_plugin(name: str, kind: str = "elementwise") -> dict[str, str]:
    """{relative path: text} of the distribution of a plugin ``name`` of ``kind``."""
    if kind not in KINDS:
        raise BadInput(f"new-plugin: --kind must be one of {', '.join(KINDS)}, got {kind!r}")
    n = names_for(name)
    body = BODIES[kind].format(cls=n["cls"], name=n["name"])
    description = [ln for ln in body.splitlines() if ln.strip().startswith('"""')][0].strip().strip('"').rstrip(".")
    module = MODULE.format(description=description, kind=kind, contract=CONTRACT.rstrip(), kind_note=KIND_NOTES[kind],
                           body=body, cls=n["cls"])
    return {"pyproject.toml": PYPROJECT.format(description=description.replace('"', "'"), **n),
            f"{n['module']}.py": module,
            f"tests/test_{n['module']}.py": TEST.format(**n)}


def write_plugin(name: str, kind: str = "elementwise", parent=".") -> Path:
    """Write the distribution folder into ``parent``; bad input if it exists. Returns the folder."""
    files = render_plugin(name, kind)
    folder = Path(parent) / names_for(name)["dist"]
    if folder.exists():
        raise BadInput(f"new-plugin: {folder} exists; choose another name or --dir")
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
