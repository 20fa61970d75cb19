"""Attack: SIGKILL its parent, leave a grandchild holding the pipe, then SIGSTOP itself (hoping to kill or
hang the run)."""
import os
import signal
import time

import torch

from decoderbench import Decoder, hookimpl


class Signals(Decoder):
    name = "adv_signals"
    kind = "filtering"

    def decode(self, z):
        pid = os.fork()
        if pid == 0:  # a grandchild holding every inherited descriptor
            time.sleep(600)
            os._exit(0)
        with open(os.environ.get("ADV_PIDFILE_SIGNALS", "/dev/null"), "a") as f:
            f.write(f"{pid}\n")
        try:
            os.kill(os.getppid(), signal.SIGKILL)  # its parent (what started it)
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGSTOP)
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    register(Signals)
