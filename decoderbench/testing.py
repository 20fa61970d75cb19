"""Contract checks a plugin's own tests can call: ``check_decoder(MyDecoder)``.

The checks of the project's conformance suite that need nothing but the decoder class, run at a small
cell (default ``n_s = 256``, ``r = 0.25``, ``p = 0.05``): the class attributes; ``fit`` returns JSON-able
parameters; ``decode`` returns a finite ``(B, n_s)`` tensor on the input's device and dtype, leaves its
input alone, repeats itself, handles a batch of one and the all-zero input; an ``elementwise`` decoder acts
on each entry alone (the harness's own probe); and scored through ``decoderbench.evaluate`` twice, the same
seed gives the same loss. Returns the scored row (a dict). AssertionError names the broken part.
"""

from __future__ import annotations

import json
import math

import torch


def check_decoder(spec, n_s: int = 256, r: float = 0.25, p: float = 0.05, options: dict | None = None,
                  max_samples: int = 512) -> dict:
    """Check ``spec`` (a Decoder subclass, a registered name, or an activation) against the contract."""
    from . import api
    from .model.data import derive_seed
    from .contract.decoder import KINDS, Cell, DecoderContext, TrainingSet, input_encoder, json_safe, prepare_input
    from .model.encoders import PersianRug
    from .run.worker import probe_elementwise

    reg = api.resolve(spec)
    cls = reg.cls
    name = reg.name
    assert cls.kind in KINDS, f"{name}: kind must be one of {KINDS}, got {cls.kind!r}"
    assert isinstance(cls.version, str) and cls.version, f"{name}: version must be a non-empty string"
    assert isinstance(cls.requires, (set, frozenset)), f"{name}: requires must be a (frozen)set"
    cell = Cell(n_s, round(r * n_s), p)
    enc = PersianRug(cell.n_s, cell.n_d, seed=0)
    ctx = DecoderContext(cell=cell, seed=0, encoder=enc, options=dict(options or {}), decoder_name=name)
    dec = cls(ctx)
    assert getattr(dec, "ctx", None) is ctx, f"{name}: __init__ must call super().__init__(ctx) (self.ctx)"
    params = dec.fit(TrainingSet(ctx, cls.input_kind())) or {}
    assert isinstance(params, dict), f"{name}: fit must return a dict (or None), got {type(params).__name__}"
    json.dumps(json_safe(params), allow_nan=False)
    code = input_encoder(dec, enc)
    g = torch.Generator().manual_seed(derive_seed("check_decoder", n_s))
    x = (torch.rand(8, n_s, generator=g) < p).float() * torch.rand(8, n_s, generator=g)
    inp = prepare_input(code, cls.input_kind(), x)
    for batch in (inp, inp[:1], torch.zeros_like(inp[:2])):
        before = batch.clone()
        with torch.no_grad():
            out = dec.decode(batch)
            again = dec.decode(batch.clone())
        assert isinstance(out, torch.Tensor), f"{name}: decode must return a tensor, got {type(out).__name__}"
        assert tuple(out.shape) == (batch.shape[0], n_s), \
            f"{name}: decode must return shape (B, n_s) = {(batch.shape[0], n_s)}, got {tuple(out.shape)}"
        assert out.dtype == batch.dtype and out.device == batch.device, f"{name}: decode must keep dtype and device"
        assert bool(torch.isfinite(out).all()), f"{name}: decode returned non-finite values"
        assert torch.equal(batch, before), f"{name}: decode changed its input"
        assert torch.equal(out, again), f"{name}: decode of the same batch differs"
    if cls.kind == "elementwise":
        probe_elementwise(dec.decode, ctx)
    rows = []
    for _ in range(2):
        df = api.evaluate([spec], n_s=n_s, r=r, p=p, max_samples=max_samples, device="cpu", progress=False,
                          options={name: options} if options else None)
        (row,) = api.records(df)
        assert row["status"] == "ok", f"{name}: scored row {row['status']}: {row['error']}"
        rows.append(row)
    assert rows[0]["loss"] == rows[1]["loss"], f"{name}: the same seed gave another loss"
    assert math.isfinite(rows[0]["loss"])
    return rows[0]
