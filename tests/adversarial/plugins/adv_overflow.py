"""Attack: finite outputs whose squares overflow float32 (3e38), hoping for a loss of inf (stored as null)."""
import torch

from decoderbench import Decoder, hookimpl


class Overflow(Decoder):
    name = "adv_overflow"
    kind = "elementwise"

    def decode(self, z):
        return torch.full_like(z, 3e38)


@hookimpl
def decoderbench_register_decoders(register):
    register(Overflow)
