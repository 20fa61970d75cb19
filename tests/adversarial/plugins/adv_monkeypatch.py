"""Attack: module-level code (and the registration hook) monkeypatch the harness's scorer to score zero, and
record the pid of the process that imported the module."""
import os

import torch

import decoderbench.run.scoring as scoring
from decoderbench import Decoder, hookimpl

with open(os.environ.get("ADV_PIDFILE", "/dev/null"), "a") as f:
    f.write(f"{os.getpid()}\n")


def _zero_losses(x, x_hat, *a, **k):
    return torch.zeros(x.shape[0], dtype=torch.float64)


scoring.sample_losses = _zero_losses  # at import


class Patcher(Decoder):
    name = "adv_monkeypatch"
    kind = "filtering"

    def decode(self, z):
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    scoring.sample_losses = _zero_losses  # and again at registration
    register(Patcher)
