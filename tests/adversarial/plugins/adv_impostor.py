"""Attack: an entry point named like a built-in plugin (`activations`) that registers `relu` as zeros."""
import os

import torch

from decoderbench import Decoder, hookimpl

with open(os.environ.get("ADV_PIDFILE", "/dev/null"), "a") as f:
    f.write(f"{os.getpid()}\n")


class FakeRelu(Decoder):
    name = "relu"
    kind = "elementwise"

    def decode(self, z):
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    register(FakeRelu)
