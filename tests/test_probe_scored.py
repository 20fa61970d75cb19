"""The elementwise check holds up against a decoder that acts entrywise only on the probe's calls: the first
scored batch is decoded once more with its entries mixed between rows and permuted (drawn from the
evaluation key's stream), and an elementwise decoder's output must follow. Honest elementwise decoders pass
with the same numbers as without the check."""

from __future__ import annotations

import torch

import decoderbench as db
from decoderbench import api
from decoderbench_plugins.message_passing import VAMP

CELL = dict(n_s=256, r=0.25, p=0.05, min_samples=256, max_samples=256, device="cpu", progress=False)


class ProbeAware(db.Decoder):
    """Entrywise (a ReLU) on the three probe calls right after fit; then message passing through the encoder
    on h rebuilt from z (z = R x and R = W^T W, so h = W z n_d / n_s on the rug): far below any elementwise
    loss if it were scored as elementwise."""

    name = "probe_aware"
    kind = "elementwise"

    def fit(self, train):
        from decoderbench.contract.decoder import harness_encoder

        self.calls = 0
        self.enc = harness_encoder(self.ctx.encoder)  # past the cell-only view (Python can reach anything)
        self.vamp = VAMP(db.DecoderContext(cell=self.ctx.cell, seed=0, encoder=self.enc, options={}))

    def decode(self, z):
        self.calls += 1
        if self.calls <= 3:
            return z.clamp(min=0)
        # W z = W W^T W x = (n_s/n_d) h on the rug (W W^T = (n_s/n_d) I): h rebuilt from z
        return self.vamp.decode(self.enc.encode(z) * (self.ctx.n_d / self.ctx.n_s))


def test_a_probe_aware_decoder_is_caught_on_the_scored_batch():
    row = api.records(db.evaluate([ProbeAware], **CELL))[0]
    assert row["status"] == "error", row
    assert "does not act on each entry alone on the scored batches" in row["error"]


def test_it_would_have_scored_far_below_the_elementwise_bound_unchecked(monkeypatch):
    from decoderbench.run import runner

    monkeypatch.setattr(runner, "_checked_first_batch", lambda decode, secret: decode)
    row = api.records(db.evaluate([ProbeAware], **CELL))[0]
    assert row["status"] == "ok" and row["loss"] < 0.2 * row["e2_bound"], row  # the cheat works unchecked


def test_honest_elementwise_rows_are_unchanged_by_the_check(monkeypatch):
    from decoderbench.run import runner

    names = ["relu", "jumprelu", "linear", "trec"]
    checked = {r["decoder"]: (r["loss"], r["loss_se"]) for r in api.records(db.evaluate(names, **CELL))}
    monkeypatch.setattr(runner, "_checked_first_batch", lambda decode, secret: decode)
    plain = {r["decoder"]: (r["loss"], r["loss_se"]) for r in api.records(db.evaluate(names, **CELL))}
    assert checked == plain and all(v[0] is not None for v in checked.values())


class Naive(db.Decoder):
    """Declared elementwise, but decodes through the encoder's operators."""

    name = "naive_reader"
    kind = "elementwise"

    def decode(self, z):
        return self.ctx.encoder.apply(z.clamp(min=0))


def test_an_elementwise_decoder_that_calls_the_encoder_is_refused():
    row = api.records(db.evaluate([Naive], **CELL))[0]
    assert row["status"] == "error" and "kind 'elementwise' but it called ctx.encoder.apply" in row["error"], row
    iso = api.records(db.evaluate([Naive], **CELL, isolate=True))[0]  # the same in a worker
    assert iso["status"] == "error" and "ctx.encoder.apply" in iso["error"] and iso["isolated"], iso


def test_an_elementwise_decoder_still_reads_the_cell_from_its_encoder():
    class Scaled(db.Decoder):
        name = "sigma_reader"
        kind = "elementwise"

        def fit(self, train):
            return {"sigma": self.ctx.sigma, "n_d": self.ctx.encoder.n_d, "caps": sorted(self.ctx.encoder.capabilities)}

        def decode(self, z):
            return z.clamp(min=0)

    row = api.records(db.evaluate([Scaled], **CELL))[0]
    assert row["status"] == "ok" and row["params"]["n_d"] == 64 and row["params"]["sigma"] > 0
