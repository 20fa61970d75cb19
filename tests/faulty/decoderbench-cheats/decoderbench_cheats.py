"""The strongest cheats we could think of against decoderbench's scoring (tests/test_no_peeking.py).

Each tries to return the very samples ``x`` it is scored on, so that its loss is 0; when its trick
finds nothing it returns zeros (the trivial decoder, far worse than ReLU). They are declared
``filtering`` (which may compare entries) so that the elementwise probe does not stop them first,
except ``cheat_not_elementwise``, which claims ``elementwise`` and is not.
"""

import gc
import sys

import torch

from decoderbench import Decoder, hookimpl
from decoderbench.model.data import SparseSampler


def _looks_like_x(t, z):
    """A (B, n_s) tensor of the batch's size with values in [0, 1] that is not the input itself."""
    return (isinstance(t, torch.Tensor) and t is not z and t.shape == z.shape and t.dtype.is_floating_point
            and bool((t >= 0).all()) and bool((t <= 1).all()) and bool((t == 0).float().mean() > 0.5))


class RebuildNaive(Decoder):
    """Rebuilds the evaluation sampler from what its context tells it (cell and seed)."""

    name = "cheat_rebuild"
    kind = "filtering"

    def fit(self, train):
        self.sampler = SparseSampler(self.ctx.n_s, self.ctx.p, self.ctx.seed, "eval", device=self.ctx.device,
                                     dtype=self.ctx.dtype)

    def decode(self, z):
        return self.sampler.sample(z.shape[0])


class RebuildInformed(Decoder):
    """Calls the harness's own evaluation-stream function (it reads the source, as anyone can)."""

    name = "cheat_rebuild_informed"
    kind = "filtering"

    def fit(self, train):
        from decoderbench.model.evalkey import eval_sampler

        self.sampler = eval_sampler(self.ctx.cell, self.ctx.seed, device=self.ctx.device, dtype=self.ctx.dtype)

    def decode(self, z):
        return self.sampler.sample(z.shape[0])


class Frames(Decoder):
    """Walks up the caller's frames for the batch being scored; zeroes it there too (a mutation)."""

    name = "cheat_frames"
    kind = "filtering"

    def decode(self, z):
        f = sys._getframe(1)
        while f is not None:
            for v in list(f.f_locals.values()):
                if _looks_like_x(v, z):
                    return v.clone()
            f = f.f_back
        return torch.zeros_like(z)


class FramesMutate(Decoder):
    """Finds the scored batch in the caller's frames and sets it to zero, then returns zeros."""

    name = "cheat_frames_mutate"
    kind = "filtering"

    def decode(self, z):
        f = sys._getframe(1)
        while f is not None:
            for v in list(f.f_locals.values()):
                if _looks_like_x(v, z):
                    v.zero_()
                    return torch.zeros_like(z)
            f = f.f_back
        return torch.zeros_like(z)


class Heap(Decoder):
    """Searches every live object of the process for the batch being scored."""

    name = "cheat_heap"
    kind = "filtering"

    def decode(self, z):
        for obj in gc.get_objects():
            if isinstance(obj, dict):
                for v in list(obj.values()):
                    if _looks_like_x(v, z):
                        return v.clone()
        return torch.zeros_like(z)


class InputMutate(Decoder):
    """Writes into its input, hoping the harness scores against (or reuses) that buffer."""

    name = "cheat_input_mutate"
    kind = "filtering"

    def decode(self, z):
        z.zero_()
        return z


class NotElementwise(Decoder):
    """Claims 'elementwise' but keeps each row's 5 % largest entries (compares entries)."""

    name = "cheat_not_elementwise"
    kind = "elementwise"

    def decode(self, z):
        k = max(1, z.shape[-1] // 20)
        thr = z.topk(k, dim=-1).values[:, -1:]
        return torch.where(z >= thr, 0.5 * z, torch.zeros_like(z))


CHEATS = (RebuildNaive, RebuildInformed, Frames, FramesMutate, Heap, InputMutate, NotElementwise)


@hookimpl
def decoderbench_register_decoders(register):
    for cls in CHEATS:
        register(cls)


class RebuildReimplemented(Decoder):
    """Re-implements the harness's keyed stream with the public key constant (defeated only by a secret key)."""

    name = "cheat_rebuild_reimplemented"
    kind = "filtering"

    def fit(self, train):
        import hashlib

        from decoderbench.model.evalkey import PUBLIC_KEY

        key = hashlib.sha256(PUBLIC_KEY).digest()
        msg = f"{self.ctx.n_s}|{float(self.ctx.p)!r}|{self.ctx.seed}".encode()
        purpose = "eval-" + hashlib.blake2b(msg, key=key, digest_size=16).hexdigest()
        self.sampler = SparseSampler(self.ctx.n_s, self.ctx.p, self.ctx.seed, purpose, device=self.ctx.device,
                                     dtype=self.ctx.dtype)

    def decode(self, z):
        return self.sampler.sample(z.shape[0])


CHEATS = CHEATS + (RebuildReimplemented,)
