"""Attack: decode returns an object whose unpickling would run a function in the process that unpickles it."""
import os

import torch

from decoderbench import Decoder, hookimpl


def _planted(path):
    with open(path, "a") as f:
        f.write(f"unpickled in {os.getpid()}\n")
    return torch.zeros(1)


class Payload:
    def __reduce__(self):
        return (_planted, (os.environ.get("ADV_PLANT", "/dev/null"),))


class Unpickle(Decoder):
    name = "adv_unpickle"
    kind = "filtering"

    def decode(self, z):
        return Payload()


@hookimpl
def decoderbench_register_decoders(register):
    register(Unpickle)
