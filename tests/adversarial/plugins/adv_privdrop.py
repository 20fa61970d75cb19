"""Attack on the harness itself, from its worker: find the harness (its pid by walking up the parent chain through
``/proc/<pid>/stat``, which every user may read) and its results store (``ADV_STORE``: the strongest case, a
path the attacker knows, as ``/proc/<harness pid>/cmdline`` would give it); then try to create, overwrite,
rename and delete files of the store, hold one of its lock files, make it writable for all, signal the harness and its forkserver, read
their ``/proc/<pid>/environ``, ``mem`` and ``cwd``, and become root again. Reports what it could do (its fit's params), and who it
ran as, in the describing worker (its description) and in the decoder's worker (its params)."""
import os
import signal

import torch

from decoderbench import Decoder, hookimpl


def _ancestors(n: int = 2) -> list[int]:
    out, pid = [], os.getpid()
    for _ in range(n):
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
        out.append(pid)
    return out


def _try(fn) -> bool:
    """True when the attempt succeeded."""
    try:
        fn()
        return True
    except OSError:  # PermissionError, and EIO or ESRCH where that is how it fails
        return False


def _who() -> str:
    return f"uid={os.getresuid()} gid={os.getresgid()} groups={os.getgroups()}"


def _store_attacks(store: str) -> dict:
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(store) for f in fs)
    victim = files[0] if files else os.path.join(store, "missing")

    def overwrite():
        with open(victim, "r+b") as f:
            f.write(b"owned")

    def create():
        with open(os.path.join(store, "adv_planted"), "x") as f:
            f.write("planted")

    def hold_a_claim():  # flock needs only a descriptor opened for reading
        import fcntl

        lock = next((f for f in files if f.endswith(".lock")), os.path.join(store, "none.lock"))
        with open(lock, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)

    return {"store_files_seen": len(files), "lock": _try(hold_a_claim),
            "create": _try(create), "overwrite": _try(overwrite),
            "mkdir": _try(lambda: os.mkdir(os.path.join(store, "adv_dir"))),
            "rename": _try(lambda: os.rename(victim, victim + ".moved")), "delete": _try(lambda: os.unlink(victim)),
            "chmod": _try(lambda: os.chmod(store, 0o777))}


def _process_attacks(pid: int) -> dict:
    def read(what):
        with open(f"/proc/{pid}/{what}", "rb") as f:
            if what != "mem":  # (opening mem is the check: offset 0 is mapped in no process)
                f.read(1)

    def signal_it():
        os.kill(pid, 0)  # the permission check of any signal (SIGCONT aside): SIGKILL would pass or fail alike

    out = {"signal": _try(signal_it), "environ": _try(lambda: read("environ")), "mem": _try(lambda: read("mem")),
           "cwd": _try(lambda: os.listdir(f"/proc/{pid}/cwd"))}
    if not out["signal"]:  # refused: so SIGKILL is refused too (sent only then: this must never end a test run)
        out["sigkill"] = _try(lambda: os.kill(pid, signal.SIGKILL))
    return out


class PrivDrop(Decoder):
    name = "adv_privdrop"
    kind = "filtering"
    description = f"imported as {_who()}"  # in the describing worker: reported by `plugins`

    def fit(self, train):
        forkserver, harness = (_ancestors() + [0, 0])[:2]
        home = os.environ.get("HOME", "")
        return {"who": _who(), "harness": harness, "forkserver": forkserver, "home": home,
                "regain_root": _try(lambda: os.setuid(0)),
                "no_new_privs": "NoNewPrivs:\t1" in open("/proc/self/status").read(),
                "tmpdir": os.environ.get("TMPDIR", ""),
                "home_writable": _try(lambda: open(os.path.join(home, "cache-file"), "w").close()),
                "store": _store_attacks(os.environ["ADV_STORE"]) if os.environ.get("ADV_STORE") else {},
                "processes": {"harness": _process_attacks(harness), "forkserver": _process_attacks(forkserver)}}

    def decode(self, z):
        return torch.zeros_like(z)


@hookimpl
def decoderbench_register_decoders(register):
    register(PrivDrop)
