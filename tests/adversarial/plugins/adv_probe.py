"""Attack: entrywise (a ReLU) on the elementwise probe's calls right after fit, then decodes through the
encoder's operators (reached past the cell-only view) on the scored batches."""
import torch

from decoderbench import Decoder, hookimpl


class ProbeThenEncoder(Decoder):
    name = "adv_probe"
    kind = "elementwise"

    def fit(self, train):
        from decoderbench.contract.decoder import harness_encoder

        self.calls = 0
        self.enc = harness_encoder(self.ctx.encoder)

    def decode(self, z):
        self.calls += 1
        if self.calls <= 3:
            return z.clamp(min=0)
        return self.enc.project(z).clamp(0, 1)  # uses the operators: not entrywise


@hookimpl
def decoderbench_register_decoders(register):
    register(ProbeThenEncoder)
