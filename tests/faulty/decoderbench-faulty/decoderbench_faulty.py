"""Decoders that misbehave in every way the harness must survive (tests/test_guarded.py installs this).

Each is elementwise and would otherwise be a fine ``0.25 z + 0.0125``; the fault fires in ``decode``
(or ``fit``) on the first evaluation batch, after fitting.
"""

import os
import sys
import time

import torch

from decoderbench import Decoder, hookimpl


class Ok(Decoder):
    name = "faulty_ok"
    kind = "elementwise"
    description = "honest: 0.25 z + 0.0125"

    def fit(self, train):
        from decoderbench.model import evalkey

        # where it runs: a decoder worker has a random key of its own (evalkey._in_decoder_worker), a process
        # that scores has none
        return {"in_decoder_worker": evalkey._WORKER_KEY is not None}

    def decode(self, z):
        return 0.25 * z + 0.0125


class Raises(Ok):
    name = "faulty_raises"
    description = "raises in fit"

    def fit(self, train):
        raise RuntimeError("boom in fit")


class NaN(Ok):
    name = "faulty_nan"
    description = "returns NaN"

    def decode(self, z):
        out = 0.25 * z
        out[0, 0] = float("nan")
        return out


class Shape(Ok):
    name = "faulty_shape"
    description = "drops a column"

    def decode(self, z):
        return z[:, :-1]


class Sleeps(Ok):
    name = "faulty_sleeps"
    description = "sleeps forever in decode"

    def decode(self, z):
        time.sleep(600)
        return z


class OsExit(Ok):
    name = "faulty_os_exit"
    description = "os._exit(3) in decode"

    def decode(self, z):
        os._exit(3)


class SysExit(Ok):
    name = "faulty_sys_exit"
    description = "sys.exit(0) in decode"

    def decode(self, z):
        sys.exit(0)


class Segfault(Ok):
    name = "faulty_segfault"
    description = "dereferences NULL in decode"

    def decode(self, z):
        import ctypes

        ctypes.string_at(0)
        return z


class Memory(Ok):
    name = "faulty_memory"
    description = "allocates until memory runs out"

    def decode(self, z):
        hoard = []
        while True:
            hoard.append(torch.ones(2**28, dtype=torch.uint8))  # 256 MiB each, touched


class Prints(Ok):
    name = "faulty_prints"
    description = "honest, but prints to stdout (Python and file descriptor 1) in fit and decode"

    def fit(self, train):
        print("{not json: printed by fit")
        sys.stdout.flush()
        os.write(1, b"[not json either: written to fd 1 by fit\n")

    def decode(self, z):
        print("printed by decode")
        os.write(1, b"fd 1 from decode\n")
        return super().decode(z)


FAULTY = (Ok, Raises, NaN, Shape, Sleeps, OsExit, SysExit, Segfault, Memory, Prints)


@hookimpl
def decoderbench_register_decoders(register):
    for cls in FAULTY:
        register(cls)
