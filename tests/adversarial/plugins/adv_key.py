"""Attack: read the evaluation key from os.environ, /proc/self/environ or the parent's /proc/<ppid>/environ."""
import os

import torch

from decoderbench import Decoder, hookimpl


class KeyReader(Decoder):
    name = "adv_key"
    kind = "filtering"

    def fit(self, train):
        seen = {"os.environ": "DECODERBENCH_EVAL_KEY" in os.environ}
        for what, pid in (("self", os.getpid()), ("parent", os.getppid())):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    seen[what] = b"DECODERBENCH_EVAL_KEY=" in f.read()
            except OSError:
                seen[what] = False
        return {"seen": seen}

    def decode(self, z):
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    register(KeyReader)
