"""Guarded execution: one ``WorkUnit`` whatever its decoder does, one row out.

``run_guarded(unit, guard)`` is what every executor calls. It returns the unit's row and never
raises for the decoder's fault, nor lets the decoder end the run:

* **in-process** (built-in decoders by default, or every decoder with ``isolate=False``): the
  decoder runs in this process, wrapped so that ``sys.exit`` in ``fit``/``decode`` becomes an error
  row, its input is a fresh copy of what the harness holds, and (in the main thread) a ``SIGALRM``
  deadline stops a decoder that sleeps past ``timeout_s`` (a decoder stuck inside C code cannot be
  stopped in-process: isolate it);
* **isolated** (third-party decoders by default: any whose distribution is not decoderbench, or
  every decoder with ``isolate=True``): the decoder object lives in a child process (multiprocessing
  ``forkserver``, torch preloaded), with an optional address-space limit (``RLIMIT_AS``,
  ``memory_limit_mb``). The harness keeps the cell's evaluation samples, the eval loop and the
  scoring in *this* process and sends the child only what the decoder's kind may see (its context,
  its own training stream, then one input batch at a time); the child answers with ``x_hat``. So a
  decoder that raises, returns NaN or a wrong shape, calls ``sys.exit`` or ``os._exit``, segfaults,
  exhausts memory or sleeps past the deadline costs one row (status ``error``, or ``timeout``, with
  the reason), and it can neither read the harness's frames nor touch the samples it is scored on.

Hand-registered plugins (``plugins.register_plugin``, source ``local:...``) run in-process under
``isolate="auto"``: whoever registered them in this process vouches for them (``isolate=True`` sends
them to a child too when their class can be imported by name there).

Where the harness runs as root, a worker that imports third-party code this process has not imported (the
describing worker; an isolated third-party decoder's worker) becomes an unprivileged user before that code runs
(:func:`worker_user`: ``nobody``, or ``DECODERBENCH_WORKER_USER``; :func:`_become`): no groups, its gid, its
real, effective and saved uid, ``no_new_privs``, not dumpable, a private HOME and TMPDIR that the harness makes
and removes. Code this process runs itself (built-ins, hand-registered classes, trusted entry points) keeps
its user: a worker gains nothing from changing user for code the harness has already run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

from ..errors import BadInput

DEFAULT_TIMEOUT_S = 3600.0  # generous: the slowest built-in unit of the shipped grids takes minutes on a CPU
START_METHOD = "forkserver" if sys.platform != "win32" else "spawn"
TIMEOUT = "timeout"
_PRELOAD = ["torch", "torch.optim", "torch._dynamo", "decoderbench.run.runner", "decoderbench.model.theory", "decoderbench.contract.registry",
            "decoderbench.run.scoring"]


@dataclass(frozen=True)
class Guard:
    """How units run: ``isolate`` is ``"auto"`` (third-party decoders only), True (all) or False (none);
    ``timeout_s`` the per-unit deadline (``timeouts`` per decoder, e.g. from a grid's ``[timeout]``);
    ``memory_limit_mb`` an address-space limit of the isolated worker (None: none)."""

    isolate: object = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_limit_mb: float | None = None
    timeouts: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.isolate not in ("auto", True, False):
            raise BadInput(f"isolate must be 'auto', True or False, got {self.isolate!r}")
        check_timeout(self.timeout_s, "--timeout")
        for name, t in self.timeouts.items():
            check_timeout(t, f"timeout.{name}")
        if self.memory_limit_mb is not None:
            check_memory_limit(self.memory_limit_mb)
        worker_user()  # a DECODERBENCH_WORKER_USER that names no user is refused before anything runs

    def timeout_for(self, decoder: str) -> float:
        return float(self.timeouts.get(decoder, self.timeout_s))

    def isolates(self, reg) -> bool:
        if self.isolate == "auto":
            return is_third_party(reg)
        return bool(self.isolate)


#: Bounds of the execution options: a deadline past a week, an address-space limit under what a worker that
#: imports torch needs (about 900 MB measured with torch 2.13 on Linux) or past 1 TB is refused at parse time.
MAX_TIMEOUT_S = 604800.0
MIN_MEMORY_MB = 1024
MAX_MEMORY_MB = 1 << 20


def check_timeout(v, name: str = "--timeout") -> float:
    import math

    if isinstance(v, bool):
        raise BadInput(f"{name} must be a positive number of seconds, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a positive number of seconds, got {v!r}") from None
    if not (math.isfinite(f) and 0 < f <= MAX_TIMEOUT_S):
        raise BadInput(f"{name} must be a positive number of seconds, at most {MAX_TIMEOUT_S:g} (a week), got {v!r}")
    return f


def check_memory_limit(v) -> float:
    import math

    try:
        f = float(v)
    except (TypeError, ValueError):
        raise BadInput(f"--memory-limit must be a number of megabytes in {MIN_MEMORY_MB}..{MAX_MEMORY_MB}, "
                       f"got {v!r}") from None
    if not (math.isfinite(f) and MIN_MEMORY_MB <= f <= MAX_MEMORY_MB):
        raise BadInput(f"--memory-limit must be a number of megabytes in {MIN_MEMORY_MB}..{MAX_MEMORY_MB} (a worker "
                       f"that imports torch needs about 900 MB of address space), got {v!r}")
    return f


def is_third_party(reg) -> bool:
    """A decoder from an installed distribution other than decoderbench itself."""
    src = str(reg.source or "")
    return not (src.startswith("decoderbench==") or src.startswith("local:"))


# ----------------------------------------------------------------------------- environment handed to children


def child_env() -> dict:
    """What a child process needs to find the same plugins as this one (sys.path, the plugin switch, threads),
    and this process's other ``DECODERBENCH_*`` settings as they are now (e.g. ``DECODERBENCH_CACHE``): children
    fork from a server started earlier, whose environment may be older (a notebook that sets a variable after
    its first isolated run)."""
    from ..model.evalkey import ENV, configured

    from ..contract import registry as plugins

    settings = {k: v for k, v in os.environ.items()
                if k.startswith("DECODERBENCH_") and k not in (ENV, "DECODERBENCH_PLUGINS")}
    trusted = plugins._trusted
    return {"sys_path": list(sys.path), "plugins_env": os.environ.get("DECODERBENCH_PLUGINS"),
            "threads": torch.get_num_threads(), "eval_key": configured(), "settings": settings,
            # what this process imports, and what it was told about the rest (so a child starts no describer)
            "trusted": sorted(trusted) if isinstance(trusted, (set, frozenset)) else trusted,
            "described": [[list(k), v] for k, v in plugins._descriptions.items()]}


def apply_child_env(env: dict) -> None:
    for p in reversed(env.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    if env.get("plugins_env") is None:
        os.environ.pop("DECODERBENCH_PLUGINS", None)
    else:
        os.environ["DECODERBENCH_PLUGINS"] = env["plugins_env"]
    from ..model.evalkey import ENV

    if env.get("eval_key"):  # a unit's worker (the harness side) scores with the run's key
        os.environ[ENV] = env["eval_key"]
    else:
        os.environ.pop(ENV, None)
    if env.get("threads"):
        torch.set_num_threads(int(env["threads"]))
    if "settings" in env:  # the parent's DECODERBENCH_* settings, exactly (the key and plugin switch above)
        for k in [k for k in os.environ if k.startswith("DECODERBENCH_") and k not in (ENV, "DECODERBENCH_PLUGINS")]:
            if k not in env["settings"]:
                os.environ.pop(k, None)
        os.environ.update(env["settings"])
    from ..contract import registry as plugins

    plugins.reset()
    plugins._may_describe = False  # a child never starts a describer: it imports, or knows, what it runs
    if env.get("trusted") is not None:
        plugins._trusted = env["trusted"] if env["trusted"] == "all" else set(env["trusted"])
    for k, v in env.get("described") or []:
        plugins._descriptions[tuple(k)] = v


class stdout_to_stderr:
    """Send everything written to standard output, by Python (``sys.stdout``) or at file descriptor 1 (C code,
    ``os.write(1, ...)``, children started meanwhile), to standard error until the block ends: a decoder's
    prints never mix into what a command prints on stdout (``--json``)."""

    def __enter__(self):
        sys.stdout.flush()
        self.saved_fd = os.dup(1)
        os.dup2(2, 1)
        self.saved = sys.stdout
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc):
        try:
            sys.stdout.flush()
        finally:
            sys.stdout = self.saved
            os.dup2(self.saved_fd, 1)
            os.close(self.saved_fd)
        return False


def _own_session() -> None:
    """In a worker: lead a session and process group of its own (pgid = pid), so that the harness can kill the
    worker together with every process it starts (:func:`kill_group`), and a signal sent to the harness's
    group does not reach it."""
    try:
        os.setsid()
    except OSError:  # pragma: no cover (already a leader)
        pass


def kill_group(pid: int | None) -> None:
    """SIGKILL the process group a worker leads (its descendants included, unless they left it with their
    own ``setsid``); nothing when it is gone."""
    if pid is None or not hasattr(os, "killpg"):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _quiet_stdout() -> None:
    """In a worker: stdout goes to stderr for the process's life (it answers through its pipe only)."""
    try:
        sys.stdout.flush()
        os.dup2(2, 1)
    except OSError:  # pragma: no cover
        pass
    sys.stdout = sys.stderr


def harden_harness() -> bool:
    """Make this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): processes of the same user, such as
    a decoder's worker, can then neither read its ``/proc/<pid>/environ`` (which still holds a key given in the
    environment at start) nor its memory, nor attach a debugger. Root (CAP_SYS_PTRACE) is not stopped by it.
    Called by ``decoderbench run`` when an evaluation key is set; True where it took effect."""
    return _prctl(4, 0)  # PR_SET_DUMPABLE = 4


# ----------------------------------------------------------------------------- the worker's user (a root harness)


WORKER_USER_ENV = "DECODERBENCH_WORKER_USER"
DEFAULT_WORKER_USER = "nobody"
NOBODY_ID = 65534  # the default where no user is named nobody


@dataclass(frozen=True)
class WorkerUser:
    """The unprivileged user a worker that imports untrusted code runs as."""

    name: str
    uid: int
    gid: int

    def __str__(self):
        return f"{self.name} (uid {self.uid})"


def worker_user() -> WorkerUser | None:
    """Who a worker importing third-party code the harness has not imported runs as: None (no change) where
    the harness is not root, or ``DECODERBENCH_WORKER_USER`` names root; else that variable's user (a name or
    a uid), by default ``nobody`` (uid 65534 where no user has that name). BadInput (one line; the CLI exits
    2) when the variable names no user, or names another user while the harness is not root."""
    if not hasattr(os, "geteuid"):  # pragma: no cover (not POSIX)
        return None
    import pwd

    raw = os.environ.get(WORKER_USER_ENV, "").strip()
    euid = os.geteuid()
    if not raw:
        if euid != 0:
            return None
        try:
            pw = pwd.getpwnam(DEFAULT_WORKER_USER)
        except KeyError:
            return WorkerUser(f"uid {NOBODY_ID}", NOBODY_ID, NOBODY_ID)
        return WorkerUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
    try:
        pw = pwd.getpwuid(int(raw)) if raw.isdigit() else pwd.getpwnam(raw)
    except (KeyError, OverflowError):
        raise BadInput(f"{WORKER_USER_ENV}={raw!r} names no user of this system (give a user name or uid, e.g. "
                       f"{DEFAULT_WORKER_USER}, or unset it)") from None
    if pw.pw_uid == euid:  # the harness's own user: nothing to change (root: workers stay root, as asked)
        return None
    if euid != 0:
        raise BadInput(f"{WORKER_USER_ENV}={raw!r}: only a harness running as root runs its workers as another "
                       f"user (this one runs as uid {euid}); unset it")
    return WorkerUser(pw.pw_name, pw.pw_uid, pw.pw_gid)


_homes: set = set()  # private homes of dropped workers not yet removed (removed at exit at the latest)


def _make_home(user: WorkerUser) -> str:
    """A fresh folder owned by ``user`` (mode 0700): the worker's HOME and TMPDIR, removed when it ends."""
    import tempfile

    home = tempfile.mkdtemp(prefix="decoderbench-worker-")
    try:
        os.chown(home, user.uid, user.gid)
    except OSError:
        os.rmdir(home)
        raise
    if not _homes:
        import atexit

        atexit.register(_remove_homes)
    _homes.add(home)
    return home


def _remove_home(home: str | None) -> None:
    if home:
        import shutil

        shutil.rmtree(home, ignore_errors=True)  # (fd-based on Linux: never follows a link the worker made)
        _homes.discard(home)


def _remove_homes() -> None:
    for home in list(_homes):
        _remove_home(home)


_plugin_paths_cache: dict = {}


def plugin_paths(r: dict) -> list[str]:
    """Where third-party entry point ``r`` (``{name, value, dist}``) lives, found without importing anything:
    its distribution's metadata folder and its top-level module (the first ``sys.path`` entry holding a package
    folder or a module file of that name). A worker that runs as another user checks that it can read them
    before it imports the entry point (:func:`_check_readable`). Empty where not found (an editable install's
    own finder, say): the worker's import then fails as it fails."""
    import importlib.metadata as md

    from ..contract.registry import ENTRY_POINT_GROUP, _dist_label

    key = (r["name"], r["value"], r["dist"], tuple(sys.path))
    if key in _plugin_paths_cache:
        return _plugin_paths_cache[key]
    out: list[str] = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == r["name"] and ep.value == r["value"] and _dist_label(getattr(ep, "dist", None)) == r["dist"]:
            info = getattr(getattr(ep, "dist", None), "_path", None)  # a PathDistribution's .dist-info folder
            if info is not None:
                out.append(os.path.abspath(str(info)))
            break
    top = r["value"].split(":")[0].split(".")[0].strip()
    for entry in sys.path if top else []:
        base = os.path.abspath(entry or os.curdir)
        hits = [p for p in (os.path.join(base, top), os.path.join(base, top + ".py")) if os.path.exists(p)]
        if not hits and os.path.isdir(base):  # an extension module (top.cpython-311-x86_64-linux-gnu.so)
            try:
                hits = sorted(os.path.join(base, n) for n in os.listdir(base)
                              if n.startswith(top + ".") and n.endswith((".so", ".pyd")))
            except OSError:
                continue
        if hits:
            out.append(hits[0])
            break
    _plugin_paths_cache[key] = out
    return out


def drop_spec(user: WorkerUser | None) -> dict | None:
    """What a worker needs to become ``user`` (None: it does not change user): the user and a fresh home."""
    if user is None:
        return None
    return {"name": user.name, "uid": user.uid, "gid": user.gid, "home": _make_home(user)}


def _may_change(st, user: WorkerUser) -> bool:
    """Whether ``user`` (no supplementary groups: a dropped worker has none) may write in a folder with stat ``st``."""
    if st.st_uid == user.uid:
        return True
    return bool(st.st_mode & 0o002 or (st.st_gid == user.gid and st.st_mode & 0o020))


def store_exposed_to(path, user: WorkerUser) -> str | None:
    """The first folder through which ``user`` could change results store ``path`` (None: none): the store's own
    folders (``rows/``, ``locks/``, the store) if it may write in them, or a folder above the store it may write
    in without the sticky bit (it could rename the store away and put its own in its place). Links are followed
    (the real path is checked); folders not made yet are skipped (the store makes them 0775)."""
    import stat

    from ..results.store import LOCKS_DIR, ROWS_DIR

    real = os.path.realpath(os.fspath(path))
    own = [os.path.join(real, ROWS_DIR), os.path.join(real, LOCKS_DIR), real]
    above = []
    p = real
    while os.path.dirname(p) != p:
        p = os.path.dirname(p)
        above.append(p)
    for folder in own + above:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or not _may_change(st, user):
            continue
        if folder in above and st.st_mode & stat.S_ISVTX and st.st_uid != user.uid:
            continue  # sticky (/tmp): it may not rename or delete what it does not own
        return f"{folder} (mode {st.st_mode & 0o7777:04o}, owner {_owner(st.st_uid)})"
    return None


def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_store_private(path) -> None:
    """BadInput (one line) where this harness runs third-party workers as another user (a root harness with
    third-party entry points) and that user could change results store ``path`` (:func:`store_exposed_to`):
    before anything runs, and before the store is made."""
    user = worker_user()
    if user is None:
        return
    from ..contract import registry as plugins

    plugins.get_plugin_manager()
    if not plugins._remote:  # no third-party code runs as that user in this process
        return
    where = store_exposed_to(path, user)
    if where is not None:
        raise BadInput(f"results store {path}: third-party decoders' workers run as {user} (the harness runs as "
                       f"root) and could change the store through {where}: make it writable by its owner only "
                       f"(chmod go-w), or choose another --out")


def _remote_entry(plugin: str) -> dict | None:
    """The harness's record (``{name, value, dist}``) of third-party entry point ``plugin`` when it is not imported
    in this process (None: imported here, so trusted: a built-in, or named in DECODERBENCH_TRUSTED_PLUGINS)."""
    from ..contract import registry as plugins

    return next((r for r in plugins._remote if r["name"] == plugin), None)


def _environment_roots() -> list[str]:
    """The folders of the Python environment a worker imports from: the interpreter's and the environment's
    ``sys.path`` entries (standard library, lib-dynload, site-packages) and the package folders of decoderbench
    and its built-in plugins. Other entries (the working directory, ``PYTHONPATH``, a test's folder) are not
    part of it: a plugin there must be readable by the worker's user."""
    prefixes = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    try:
        import site

        sites = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    except Exception:  # noqa: BLE001 (an embedded interpreter may lack them)
        sites = set()
    out = []
    for entry in sys.path:
        if not entry:
            continue
        e = os.path.abspath(entry)
        if e in sites or any(e == p or e.startswith(p + os.sep) for p in prefixes):
            out.append(e)
    for pkg in ("decoderbench", "decoderbench_plugins"):  # an editable install's folders are on no sys.path entry
        out += [os.path.abspath(p) for p in getattr(sys.modules.get(pkg), "__path__", [])]
    return list(dict.fromkeys(p for p in out if os.path.isdir(p)))


def _blocked_at(path: str) -> str:
    """The first folder on the way to ``path``, or ``path`` itself, that this process may not search or read:
    named with its mode and owner (for the one-line error)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        last = i == len(parts)
        want = (os.R_OK | (os.X_OK if os.path.isdir(p) else 0)) if last else os.X_OK
        if not os.access(p, want):
            try:
                st = os.stat(p)
            except OSError:
                return p
            return f"{p} (mode {st.st_mode & 0o7777:04o}, owner {_owner(st.st_uid)})"
    return os.path.abspath(path)


class CannotRead(PermissionError):
    """A worker that runs as another user cannot read what it must import (one line naming the path)."""


def _unreadable(path: str) -> bool:
    want = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    return not os.access(path, want)


def _become(drop: dict) -> dict:
    """In a worker, before any third-party code runs: become ``drop``'s user for good (no supplementary groups,
    its group, real, effective and saved uid), with its private home as HOME and TMPDIR. The folders of the
    Python environment that the user can read but not reach (a parent folder such as ``/root`` is closed to
    it, as with an interpreter installed under root's home) are reached through descriptors opened before the
    change (``/proc/self/fd/N``): the standard library and site-packages stay importable; through ``..`` the
    descriptors also reach what others may read below that parent (all of ``/root/.pyenv``), never the parent
    itself nor its other entries. Returns ``{folder: the path it is reached by}``; CannotRead when the
    environment cannot be read at all."""
    import pwd  # noqa: F401 (what runs after the change imports nothing it might not read)
    import tempfile

    roots = {}
    for root in _environment_roots():
        try:
            roots[root] = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid program it runs later gives it privileges back
    try:
        os.setgroups([])
        os.setgid(drop["gid"])
        os.setuid(drop["uid"])  # as root: real, effective and saved uid (so it can never come back)
    except OSError as exc:  # e.g. a user namespace that maps no such uid, or root without CAP_SETUID
        raise PermissionError(f"the worker could not become {drop['name']} (uid {drop['uid']}): {exc}; name a user "
                              f"this system can switch to in {WORKER_USER_ENV} (root keeps workers as root)") from None
    uids = os.getresuid() if hasattr(os, "getresuid") else (os.getuid(), os.geteuid(), os.geteuid())
    gids = os.getresgid() if hasattr(os, "getresgid") else (os.getgid(), os.getegid(), os.getegid())
    if uids != (drop["uid"],) * 3 or gids != (drop["gid"],) * 3:  # pragma: no cover
        raise PermissionError("the worker could not change its user")
    _prctl(4, 0)  # PR_SET_DUMPABLE 0: other processes of its user cannot trace it or read its memory
    home = drop["home"]
    os.environ.update(HOME=home, TMPDIR=home, TMP=home, TEMP=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
                      USER=drop["name"], LOGNAME=drop["name"])
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    via = {}
    for root, fd in roots.items():
        if not _unreadable(root):
            os.close(fd)
            continue
        alias = f"/proc/self/fd/{fd}"
        if os.path.isdir(alias) and not _unreadable(alias):
            via[root] = alias
        else:
            os.close(fd)
            raise CannotRead(f"the worker runs as {drop['name']} (uid {drop['uid']}, since the harness runs as "
                             f"root) and cannot read the Python environment at {_blocked_at(root)}: make it readable "
                             f"by other users, or name a user who can in {WORKER_USER_ENV}")
    if via:
        _reroute_imports(via)
    if _unreadable(home):  # pragma: no cover (a TMPDIR of the harness that others cannot reach)
        raise CannotRead(f"the worker runs as {drop['name']} and cannot use its home {_blocked_at(home)}: set "
                         "TMPDIR to a folder other users can reach")
    return via


def _prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)``; False where it is not there or failed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover
        return False


def _reroute_imports(via: dict) -> None:
    """Imports from now on find the modules under each folder of ``via`` through its alias: the entries of
    ``sys.path`` are rewritten (importlib.metadata reads them too), and a path hook serves the search paths of
    the packages imported before (``http`` of the standard library, say), whose finders are forgotten. No
    module is touched (after a fork, touching every module would copy its memory pages)."""
    import importlib
    import importlib.machinery as im

    def alias(p):
        return _reached(p, via) if isinstance(p, str) else None

    details = [(im.ExtensionFileLoader, im.EXTENSION_SUFFIXES), (im.SourceFileLoader, im.SOURCE_SUFFIXES),
               (im.SourcelessFileLoader, im.BYTECODE_SUFFIXES)]

    def hook(path):
        a = alias(path)
        if a is None:
            raise ImportError("not a rerouted folder")
        return im.FileFinder(a, *details)

    sys.path[:] = [alias(p) or p for p in sys.path]
    sys.path_hooks.insert(0, hook)
    for key in [k for k in sys.path_importer_cache if alias(k) is not None]:
        del sys.path_importer_cache[key]
    importlib.invalidate_caches()


def _reached(path: str, via: dict) -> str | None:
    """``path`` as this worker reaches it through the alias of the deepest folder of ``via`` holding it
    (:func:`_become`), or None when no folder of ``via`` holds it."""
    for root in sorted(via, key=len, reverse=True):
        if path == root or path.startswith(root + os.sep):
            return via[root] + path[len(root):]
    return None


def _check_readable(drop: dict, plugin: str, paths, via: dict) -> None:
    """CannotRead (one line naming the folder or file) when this worker cannot read plugin ``plugin``'s
    distribution metadata or module, ``paths`` as the harness found them (:func:`plugin_paths`)."""
    for path in paths or []:
        reached = _reached(path, via) or path
        if not _unreadable(reached):
            continue
        where = _blocked_at(path) if reached == path else path
        raise CannotRead(f"its worker runs as {drop['name']} (uid {drop['uid']}, since the harness runs as root) "
                         f"and cannot read {where}: make it and the folders above it readable by other users, or "
                         f"name a user who can in {WORKER_USER_ENV}")


_ctx = None
_ctx_lock = threading.Lock()


def _builtin_plugin_modules() -> list[str]:
    """The built-in plugins' modules (trusted: imported once in the forkserver, so each child starts fast)."""
    import importlib.metadata as md

    out = []
    for ep in md.entry_points(group="decoderbench"):
        dist = getattr(ep, "dist", None)
        try:
            if dist is not None and dist.metadata["Name"] == "decoderbench":
                out.append(ep.value.split(":")[0])
        except Exception:  # pragma: no cover
            continue
    return out


def mp_context():
    """The multiprocessing context of guarded children (forkserver with torch and decoderbench preloaded)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            import multiprocessing as mp

            ctx = mp.get_context(START_METHOD)
            if START_METHOD == "forkserver":
                ctx.set_forkserver_preload(_PRELOAD + _builtin_plugin_modules())
            _ctx = ctx
    return _ctx


_start_lock = threading.RLock()


class _main_not_reimported:
    """Start children without re-running the parent's ``__main__`` script (spawn/forkserver would run
    an unguarded script again in the child; nothing the child needs lives there)."""

    def __enter__(self):
        from ..model.evalkey import hidden_from_children

        _start_lock.acquire()  # one child starts at a time (threads of execute_processes start workers too)
        self.key = hidden_from_children().__enter__()  # nor inherit the evaluation key in its environment block
        self.main = sys.modules.get("__main__")
        self.file = None
        if self.main is not None and getattr(getattr(self.main, "__spec__", None), "name", None) is None:
            self.file = getattr(self.main, "__file__", None)
            if self.file is not None:
                del self.main.__file__
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.main.__file__ = self.file
        self.key.__exit__(*exc)
        _start_lock.release()
        return False


# ----------------------------------------------------------------------------- exceptions that become rows


class UnitTimeout(Exception):
    """The unit ran past its deadline (status ``timeout``)."""


class WorkerDied(Exception):
    """The isolated worker process ended without answering (os._exit, a signal, out of memory)."""


def _remote_error(name: str, message: str) -> Exception:
    """An exception that prints as the child's did (``KeyError: 'boom'``), raised in the harness."""
    if name == "Skip":  # the decoder declined the unit (decoderbench.Skip): a skipped row, not an error
        from ..errors import Skip

        return Skip(message)
    safe = name if name.isidentifier() else "DecoderError"
    return type(safe, (RuntimeError,), {"__str__": lambda self: message})()


def describe_exit(code) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if -code == signal.SIGKILL else ""
        return f"was killed by {sig}{hint}"
    return f"exited with code {code}"


# ----------------------------------------------------------------------------- tensors over a pipe


def _pack(t):
    if isinstance(t, torch.Tensor) and type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter):
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return ("tensor", tuple(t.shape), str(t.dtype).replace("torch.", ""), t.contiguous().numpy().tobytes())
    return ("object", f"{type(t).__module__}.{type(t).__qualname__}")  # its type's name only: nothing to unpickle


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only (None, bools, numbers, strings, bytes, tuples, lists, dicts: what pickle
    writes without naming a class); any class or function named in the stream is refused, so an object whose
    ``__reduce__`` would run code in the harness is never rebuilt."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"a worker sent {module}.{name}: only plain data (numbers, strings, bytes, "
                                     "tuples, lists, dicts) may cross from a worker to the harness")


def plain(v):
    """``v`` as plain data (what :class:`_PlainUnpickler` admits): str, int, float subclasses (``TorchVersion``,
    numpy scalars) as their base type, containers element by element, anything else as its ``str``."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return v
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, dict):
        return {plain(k): plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(plain(x) for x in v)
    if isinstance(v, list):
        return [plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        try:
            return plain(v.item())
        except Exception:  # noqa: BLE001
            pass
    return str(v)


def recv_plain(conn):
    """``conn.recv()`` for messages from a worker: plain data only (:class:`_PlainUnpickler`)."""
    data = conn.recv_bytes()
    return _PlainUnpickler(io.BytesIO(data)).load()


def _unpack(obj, device=None):
    if obj[0] == "tensor":
        _, shape, dtype, data = obj
        t = torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).reshape(shape) if data else \
            torch.empty(shape, dtype=getattr(torch, dtype))
        return t.to(device) if device is not None else t
    raise ValueError(f"decode returned a {obj[1]}, not a torch.Tensor")


# ----------------------------------------------------------------------------- the isolated child


def _child_main(conn, spec: dict) -> None:
    """Child process: build the decoder from what its kind may see and answer fit/decode requests."""
    _own_session()
    _quiet_stdout()
    try:
        if spec.get("memory_limit_bytes"):
            import resource

            lim = int(spec["memory_limit_bytes"])
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        apply_child_env(spec["env"])
        from ..model.evalkey import ENV

        os.environ.pop(ENV, None)  # the decoder's process never holds the evaluation key
        from ..model import evalkey

        evalkey._in_decoder_worker()  # and its copy of evalkey draws nothing like the harness's stream
        drop = spec.get("drop")
        if drop is not None:  # it imports third-party code: as an unprivileged user (a root harness)
            via = _become(drop)
            try:
                _check_readable(drop, drop["plugin"], drop["paths"], via)
            except CannotRead as exc:
                raise CannotRead(f"plugin {drop['plugin']!r} failed to load: {exc}") from None
        from ..contract import registry as plugins
        from ..contract.decoder import CellOnlyEncoder, DecoderContext, TrainingSet, json_safe
        from .runner import DTYPES, resolve_device

        unit = spec["unit"]
        cls = spec.get("cls")
        if cls is None:
            cls = plugins.get_decoder(unit.decoder).cls
        device = torch.device(resolve_device(unit.device))
        dtype = DTYPES[unit.dtype]
        cell = unit.cell
        encoder = plugins.get_encoder(unit.encoder).cls(cell.n_s, cell.n_d, seed=unit.seed, device=device, dtype=dtype)
        import json

        ctx = DecoderContext(cell=cell, seed=unit.seed, device=device, dtype=dtype,
                             encoder=CellOnlyEncoder(encoder, unit.decoder) if cls.kind == "elementwise" else encoder,
                             options=json.loads(unit.options), decoder_name=unit.decoder)
        dec = cls(ctx)
        input_kind = cls.input_kind()
        conn.send(("ok", None))
    except BaseException as exc:  # noqa: BLE001 - the child reports everything, SystemExit included
        _send_error(conn, exc)
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg[0]
        if op == "close":
            return
        try:
            if op == "fit":
                params = dec.fit(TrainingSet(ctx, input_kind)) or {}
                conn.send(("ok", plain(json_safe(params))))
            elif op == "encoder_weight":  # a learned decoder's own W_in (the harness encodes with it)
                conn.send(("ok", _pack(dec.encoder_weight())))
            elif op == "decode":
                inp = _unpack(msg[1], device)
                with torch.no_grad():
                    out = dec.decode(inp)
                conn.send(("ok", (_pack(out), plain(json_safe(getattr(dec, "info", {}) or {})))))
            else:  # pragma: no cover
                raise RuntimeError(f"unknown request {op!r}")
        except BaseException as exc:  # noqa: BLE001
            _send_error(conn, exc)


def _send_error(conn, exc: BaseException) -> None:
    if isinstance(exc, SystemExit):
        name, message = "SystemExit", f"the decoder called sys.exit({exc.code!r})"
    elif isinstance(exc, KeyboardInterrupt):
        name, message = "KeyboardInterrupt", "the decoder raised KeyboardInterrupt"
    else:
        name, message = type(exc).__name__, str(exc)
    try:
        conn.send(("raise", name, message, traceback.format_exc(limit=-4)))
    except BaseException:  # noqa: BLE001 - e.g. the pipe is gone
        pass


class Session:
    """The harness's end of one isolated worker: a deadline shared by every request of the unit."""

    def __init__(self, unit, guard: Guard, cls=None, env: dict | None = None, registry: list | None = None,
                 plugin: str | None = None):
        if registry is not None:
            registry.append(self)  # closed by run_guarded even if the construction below fails
        self.unit = unit
        self.timeout_s = guard.timeout_for(unit.decoder)
        self.deadline = time.monotonic() + self.timeout_s
        self.timed_out = False
        self.died = None
        ctx = mp_context()
        self.conn, child = ctx.Pipe()
        env = {k: v for k, v in (env or child_env()).items() if k != "eval_key"}  # never to the decoder
        drop = None
        if plugin is not None:  # the worker imports the one entry point whose decoder it runs (and built-ins)
            env["trusted"] = [plugin]
            remote = _remote_entry(plugin)
            if remote is not None:  # code this process never imported: as an unprivileged user, if root
                drop = drop_spec(worker_user())
                if drop is not None:
                    drop.update(plugin=plugin, paths=plugin_paths(remote))
        self.home = drop["home"] if drop is not None else None
        spec = {"unit": unit, "env": env, "cls": cls, "drop": drop,
                "memory_limit_bytes": int(guard.memory_limit_mb * 2**20) if guard.memory_limit_mb else None}
        self.proc = ctx.Process(target=_child_main, args=(child, spec), daemon=True,
                                name=f"decoderbench-{unit.decoder}")
        with _main_not_reimported():
            self.proc.start()
        child.close()
        self._answer()  # the decoder's construction

    def _answer(self):
        from multiprocessing.connection import wait

        left = self.deadline - time.monotonic()
        try:
            # the worker's end of the pipe may outlive the worker (a process it started holds it): wait for an
            # answer or the worker's exit, whichever comes first
            woke = wait([self.conn, self.proc.sentinel], timeout=max(0.0, left)) if left > 0 else []
            ready = bool(woke) and (self.conn in woke or self.conn.poll(0.2))
            if woke and not ready:  # it exited without answering
                self.proc.join(5)
                kill_group(self.proc.pid)
                self.died = describe_exit(self.proc.exitcode)
                raise WorkerDied(f"the decoder's worker process {self.died} before answering")
        except (EOFError, OSError):
            ready = True
        if not ready:
            self.timed_out = True
            self.kill()
            raise UnitTimeout(f"the unit ran past its time limit of {self.timeout_s:g} s "
                              f"(--timeout, or [timeout] in the grid)")
        try:
            msg = recv_plain(self.conn)
        except (EOFError, OSError):
            self.proc.join(5)
            self.died = describe_exit(self.proc.exitcode)
            raise WorkerDied(f"the decoder's worker process {self.died} before answering") from None
        if msg[0] == "raise":
            err = _remote_error(msg[1], msg[2])
            err.remote_traceback = msg[3]
            raise err
        return msg[1]

    def call(self, *msg):
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            self.proc.join(5)
            self.died = describe_exit(self.proc.exitcode)
            raise WorkerDied(f"the decoder's worker process {self.died}") from None
        return self._answer()

    def kill(self):
        if getattr(self.proc, "_popen", None) is None:  # never started
            _remove_home(getattr(self, "home", None))
            return
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        kill_group(self.proc.pid)  # and whatever the decoder started
        _remove_home(self.home)

    def close(self):
        if getattr(getattr(self, "proc", None), "_popen", None) is None:
            _remove_home(getattr(self, "home", None))
            return
        try:
            if self.proc.is_alive():
                self.conn.send(("close",))
                self.proc.join(2)
        except (BrokenPipeError, OSError):
            pass
        self.kill()
        self.conn.close()


def _isolated_class(reg, unit, sessions: list, guard: Guard, env: dict | None):
    """A stand-in decoder class for the harness: same name, kind and requirements, the real one in a child."""
    from ..contract.decoder import Decoder

    real = reg.cls
    send_cls = real if not _importable_by_name(reg) else None
    can_weigh = callable(getattr(real, "encoder_weight", None))

    class Isolated(Decoder):
        name = real.name
        kind = real.kind
        requires = real.requires
        version = real.version
        description = real.description

        def __init__(self, ctx):
            self.ctx = ctx
            self.info = {}
            self._s = Session(unit, guard, cls=send_cls, env=env, registry=sessions,
                              plugin=reg.plugin if send_cls is None and is_third_party(reg) else None)

        def fit(self, train):
            params = self._s.call("fit")
            if self.kind == "elementwise":
                probe_elementwise(self.decode, self.ctx)
            return params

        def decode(self, inp):
            packed, info = self._s.call("decode", _pack(inp))
            self.info = info
            return _unpack(packed, inp.device)

    if can_weigh:
        def encoder_weight(self):
            return _unpack(self._s.call("encoder_weight"), self.ctx.device)

        Isolated.encoder_weight = encoder_weight
    Isolated.__qualname__ = Isolated.__name__ = f"Isolated[{real.__name__}]"
    return Isolated


def _importable_by_name(reg) -> bool:
    """True when the child finds the class through the entry points (not registered by hand)."""
    return not str(reg.source or "").startswith("local:")


# ----------------------------------------------------------------------------- the elementwise probe


PROBE_ROWS = 4


def probe_elementwise(decode, ctx) -> None:
    """An ``elementwise`` decoder must act on each entry alone. On a probe batch (a stream of its own,
    neither training nor evaluation samples): permuting the entries of every row must permute the output
    the same way; and a row mixed from two rows (each entry from one or the other) must give, entry by
    entry, what that entry gave in its own row (this catches TopK-like rules, which are permutation
    equivariant but compare entries). ValueError (an error row) on a violation."""
    from ..model.data import derive_seed
    from ..contract.decoder import TrainingSet

    z, _ = TrainingSet(ctx, "z", purpose="elementwise-probe").sample(PROBE_ROWS)
    g = torch.Generator().manual_seed(derive_seed("elementwise-probe", ctx.n_s, ctx.seed))
    perm = torch.randperm(ctx.n_s, generator=g).to(z.device)
    mask = (torch.rand(ctx.n_s, generator=g) < 0.5).to(z.device)
    mixed = torch.where(mask, z[0], z[1]).unsqueeze(0)
    with torch.no_grad():
        a = decode(z.clone())
        b = decode(z[:, perm].contiguous())
        c = decode(mixed.clone())
    if not all(isinstance(t, torch.Tensor) for t in (a, b, c)) or a.shape != z.shape or b.shape != z.shape \
            or c.shape != mixed.shape:
        return  # the evaluation's own checks report a wrong type or shape
    a, b, c = a.detach().double(), b.detach().double(), c.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all() and torch.isfinite(c).all()):
        return  # and non-finite output
    tol = 1e-6 * (1.0 + float(a.abs().max()))
    d_perm = float((a[:, perm] - b).abs().max())
    d_mix = float((torch.where(mask, a[0], a[1]) - c[0]).abs().max())
    if d_perm > tol or d_mix > tol:
        what = (f"permuting its input's entries did not permute its output (max difference {d_perm:.3g})"
                if d_perm > tol else "an entry's output changed when the other entries of its row changed "
                                     f"(max difference {d_mix:.3g})")
        raise ValueError(f"kind 'elementwise' but it does not act on each entry alone: {what}; declare kind "
                         f"'filtering' for a decoder that compares entries")


def entrywise_on_scored(decode, inp: torch.Tensor, out: torch.Tensor, secret: str) -> None:
    """The elementwise check on a scored batch itself, so that a decoder cannot act entrywise on the probe's
    calls only: decode once more the batch ``inp`` with every row mixed entry by entry with the next row and
    the columns permuted (both drawn from ``secret``, a string derived from the evaluation key, so that the
    decoder can neither predict nor recognise them: the input is made of genuine inputs' entries); an
    elementwise decoder's output is then ``out`` mixed and permuted the same way. ValueError on a
    violation (the row becomes an error row)."""
    from ..model.data import derive_seed

    B, n = inp.shape
    g = torch.Generator().manual_seed(derive_seed("scored-probe", secret, n, B))
    perm = torch.randperm(n, generator=g).to(inp.device)
    mask = (torch.rand(B, n, generator=g) < 0.5).to(inp.device)
    nxt = torch.roll(torch.arange(B, device=inp.device), -1)
    scrambled = torch.where(mask, inp, inp[nxt])[:, perm].contiguous()
    with torch.no_grad():
        got = decode(scrambled)
    if not isinstance(got, torch.Tensor) or got.shape != out.shape:
        raise ValueError("kind 'elementwise' but its output on a scored batch with mixed and permuted entries "
                         "has another type or shape")
    want = torch.where(mask, out, out[nxt])[:, perm].double()
    got = got.detach().double()
    tol = 1e-6 * (1.0 + float(out.detach().abs().max()))
    diff = float((got - want).abs().max()) if bool(torch.isfinite(got).all()) else math.inf
    if diff > tol:
        raise ValueError(f"kind 'elementwise' but it does not act on each entry alone on the scored batches: "
                         f"mixing and permuting a scored batch's entries changed its outputs (max difference "
                         f"{diff:.3g}); declare kind 'filtering' or 'iterative' for a decoder that compares entries "
                         f"or reads the encoder")


# ----------------------------------------------------------------------------- in-process guard


def _guarded_class(reg):
    """In-process wrapper: the decoder gets a copy of its input, and sys.exit becomes an error."""
    from ..contract.decoder import Decoder

    real = reg.cls

    class Guarded(Decoder):
        name = real.name
        kind = real.kind
        requires = real.requires
        version = real.version
        description = real.description

        def __init__(self, ctx):
            self._inner = _no_exit(real, ctx)
            self.ctx = ctx

        @property
        def info(self):
            return getattr(self._inner, "info", {})

        def fit(self, train):
            params = _no_exit(self._inner.fit, train)
            if self.kind == "elementwise":
                probe_elementwise(self.decode, self.ctx)
            return params

        def decode(self, inp):
            return _no_exit(self._inner.decode, inp.clone())

        def __getattr__(self, name):  # anything else the harness asks of the decoder
            if name == "_inner":
                raise AttributeError(name)
            return getattr(self._inner, name)

    Guarded.__qualname__ = Guarded.__name__ = real.__name__
    return Guarded


def _no_exit(fn, *args):
    try:
        return fn(*args)
    except SystemExit as exc:
        raise _remote_error("SystemExit", f"the decoder called sys.exit({exc.code!r})") from None
    except KeyboardInterrupt:
        raise
    

class _Alarm:
    """A SIGALRM deadline in the main thread (no-op elsewhere)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False
        self.active = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def _handler(self, signum, frame):
        self.fired = True
        raise UnitTimeout(f"the unit ran past its time limit of {self.seconds:g} s (--timeout, or [timeout] in the grid)")

    def __enter__(self):
        if self.active:
            self._old = signal.signal(signal.SIGALRM, self._handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


# ----------------------------------------------------------------------------- the entry point


def run_guarded(unit, guard: Guard | None = None, env: dict | None = None) -> dict:
    """The row of ``unit``, its decoder run under ``guard`` (see the module docstring), with the key
    columns the row is checked against (``eval_batch``, ``transform_backend``, as in ``WorkUnit.key``)."""
    row = _run_guarded(unit, guard, env)
    return with_key_columns(row, unit)


def with_key_columns(row: dict, unit) -> dict:
    """The row with every column its key is made of (the unit's fields, eval batch, transform backend, eval
    stream: ``rows.with_key_columns``)."""
    from ..results import rows
    from ..results.rows import process_key_columns

    u = unit.fields()
    return rows.with_key_columns(row, u, process_key_columns(u))


def _run_guarded(unit, guard: Guard | None = None, env: dict | None = None) -> dict:
    from ..contract import registry as plugins
    from .runner import run_unit

    guard = guard or Guard()
    try:
        reg = plugins.get_decoder(unit.decoder)
    except ValueError:
        return run_unit(unit)  # the plugin failed to load: run_unit writes its error row
    if guard.isolates(reg):
        sessions: list = []
        try:
            row = run_unit(unit, registered=dataclasses.replace(reg, cls=_isolated_class(reg, unit, sessions, guard, env)))
        finally:
            for s in sessions:
                s.close()
        if any(s.timed_out for s in sessions):
            row["status"] = TIMEOUT
        row["isolated"] = True
        return row
    alarm = _Alarm(guard.timeout_for(unit.decoder))
    try:
        with alarm:
            row = run_unit(unit, registered=dataclasses.replace(reg, cls=_guarded_class(reg)))
    except UnitTimeout as exc:  # fired outside run_unit's own try (rare): the row says so
        row = failure_row(unit, reg, f"UnitTimeout: {exc}")
    if alarm.fired and row.get("status") == "error":
        row["status"] = TIMEOUT
    row["isolated"] = False
    return row


def failure_row(unit, reg, message: str, status: str = "error") -> dict:
    """The row of a unit that could not run at all (``runner.error_row``, so its columns are the usual ones)."""
    from .runner import error_row, run_unit

    if reg is None:
        return run_unit(unit)  # the plugin failed to load: run_unit writes its error row
    return error_row(unit, reg, message, status)


# ----------------------------------------------------------------------------- whole units in worker processes


def _unit_child(conn, unit, guard: Guard, env: dict, cell_columns: dict | None = None) -> None:
    """A local worker process running one whole unit. The process itself is the isolation (a crash or a
    hang costs this unit's row, which the parent then writes); inside it the decoder runs in-process
    under the in-process guard, with the memory limit on this process when the decoder is one to isolate.
    ``cell_columns``: the unit's cell columns, computed by the parent (``runner.cell_columns``), or None."""
    _own_session()
    _quiet_stdout()
    try:
        apply_child_env(env)
        if cell_columns is not None:
            from .runner import hand_cell_columns

            hand_cell_columns(unit, cell_columns)
        from ..contract import registry as plugins

        try:
            reg = plugins.get_decoder(unit.decoder)
        except ValueError:
            reg = None
        if reg is not None and guard.isolates(reg) and guard.memory_limit_mb:
            import resource

            lim = int(guard.memory_limit_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        row = run_guarded(unit, dataclasses.replace(guard, isolate=False), env)
        row["isolated"] = reg is not None and guard.isolates(reg)
        conn.send(("ok", plain(row)))
    except BaseException as exc:  # noqa: BLE001
        _send_error(conn, exc)
    finally:
        conn.close()


BACKSTOP_S = 10.0  # a unit's worker process gets its unit's deadline plus this before it is killed


def execute_processes(units, before=None, guard: Guard | None = None, workers: int = 2, threads: int | None = None):
    """Run up to ``workers`` units at once, yielding ``(unit, row)`` as each finishes.

    A unit whose decoder is run in-process (built-ins, by default) gets a fresh process of its own (forked
    from the forkserver), so one that crashes or hangs costs its own row only. A unit whose decoder is
    isolated (third-party, by default) is never run in a process that holds the samples, the scorer or the
    key: its decoder runs in a worker of its own, as in a serial run, and is scored in this process (on a
    thread). ``threads``: torch threads per unit process (default: this process's threads / workers).

    The columns a row takes from its cell alone (theory, exact references: ``runner.cell_columns``) are
    computed here once per cell and handed to its units' processes, which would otherwise each recompute them
    (0.7 s per unit at n_s 4096: what made ``--workers 2`` slower than a serial run, which computes them once
    per cell).
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing import Pipe
    from multiprocessing.connection import wait

    from ..contract import registry as plugins

    guard = guard or Guard()
    env = child_env()
    env["threads"] = threads or max(1, torch.get_num_threads() // max(1, workers))
    ctx = mp_context()
    pending = iter(units)
    running: dict = {}  # conn -> (unit, proc, deadline)
    done: queue.Queue = queue.Queue()  # (unit, row) of the units scored on threads
    wake_r, wake_w = Pipe(duplex=False)  # a thread's unit finished
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decoderbench-unit")
    on_threads = 0
    cells: dict = {}

    def cell_columns_of(u):
        from . import runner

        k = runner.cell_key(u)
        if k not in cells:
            try:
                cells[k] = runner.cell_columns(u)
            except Exception:  # noqa: BLE001 - the unit's own process computes them and makes its row of the failure
                cells[k] = None
        return cells[k]

    exhausted = False

    def isolated(u) -> bool:
        try:
            return guard.isolates(plugins.get_decoder(u.decoder))
        except ValueError:
            return False

    def on_thread(u):
        try:
            row = run_guarded(u, guard)
        except BaseException as exc:  # noqa: BLE001 (run_guarded makes rows of failures; this is a backstop)
            row = failure_row(u, None, f"{type(exc).__name__}: {exc}")
        done.put((u, row))
        wake_w.send_bytes(b"1")

    try:
        while True:
            while not exhausted and len(running) + on_threads < workers:
                try:
                    u = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                if before is not None:
                    before(u)
                if isolated(u):
                    on_threads += 1
                    pool.submit(on_thread, u)
                    continue
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_unit_child, args=(child, u, guard, env, cell_columns_of(u)), daemon=False,
                                   name=f"decoderbench-unit-{u.decoder}")
                with _main_not_reimported():
                    proc.start()
                child.close()
                running[parent] = (u, proc, time.monotonic() + guard.timeout_for(u.decoder) + BACKSTOP_S)
            if not running and not on_threads:
                return
            if not running:  # only threads: wait for one
                ready = wait([wake_r])
            else:
                now = time.monotonic()
                ready = wait(list(running) + [p.sentinel for _, p, _ in running.values()] + [wake_r],
                             timeout=max(0.0, min(d for _, _, d in running.values()) - now))
            while wake_r.poll():
                wake_r.recv_bytes()
            while True:
                try:
                    u, row = done.get_nowait()
                except queue.Empty:
                    break
                on_threads -= 1
                yield u, row
            if not running:
                continue
            yield from _collect_unit_processes(running, set(ready), guard, plugins)
    finally:
        pool.shutdown(wait=True)
        wake_r.close()
        wake_w.close()


def _collect_unit_processes(running: dict, ready: set, guard, plugins):
    """Yield ``(unit, row)`` for every unit process in ``running`` that answered, died or ran out of time;
    ``ready``: what the caller's wait found ready (pipes and process sentinels)."""
    for conn in list(running):
        u, proc, deadline = running[conn]
        # an answer, or the unit's process gone (a process it started may hold the pipe open)
        if conn in ready or (proc.sentinel in ready and conn.poll(0.2)):
            try:
                msg = recv_plain(conn)
            except pickle.UnpicklingError as exc:
                msg = ("raise", "WorkerSentObject", str(exc))
            except (EOFError, OSError):
                proc.join(5)
                msg = ("died", describe_exit(proc.exitcode))
        elif proc.sentinel in ready:
            proc.join(5)
            msg = ("died", describe_exit(proc.exitcode))
        elif time.monotonic() >= deadline:
            proc.kill()
            proc.join(5)
            msg = ("timeout", None)
        else:
            continue
        del running[conn]
        conn.close()
        proc.join(5)
        kill_group(proc.pid)  # whatever the unit's process started dies with it
        if msg[0] == "ok":
            row = msg[1]
        else:
            try:
                reg = plugins.get_decoder(u.decoder)
            except ValueError:
                reg = None
            if msg[0] == "timeout":
                row = failure_row(u, reg, f"UnitTimeout: the unit's worker process ran past its time limit of "
                                          f"{guard.timeout_for(u.decoder) + BACKSTOP_S:g} s", status=TIMEOUT)
            elif msg[0] == "died":
                row = failure_row(u, reg, f"WorkerDied: the unit's worker process {msg[1]}")
            else:
                row = failure_row(u, reg, f"{msg[1]}: {msg[2]}")
            row["isolated"] = reg is not None and guard.isolates(reg)
        yield u, row


# ----------------------------------------------------------------------------- describing third-party plugins


DESCRIBE_TIMEOUT_S = 300.0  # one entry point's import and registration, in the describing worker


def _describe_decoder(cls) -> dict:
    from ..contract.options import describe, describe_text

    declared = getattr(cls, "Options", None) is not None
    legacy = getattr(getattr(cls, "validate_options", None), "__func__", None)
    from ..contract.decoder import Decoder

    return {"name": cls.name, "kind": cls.kind, "requires": sorted(str(x) for x in cls.requires),
            "version": str(getattr(cls, "version", "1")), "description": str(getattr(cls, "description", "") or ""),
            "qualname": f"{cls.__module__}.{cls.__qualname__}",
            "options": describe(cls) if declared else None, "options_text": describe_text(cls),
            "legacy_validate": (not declared) and legacy is not None and legacy is not Decoder.validate_options.__func__,
            "encoder_weight": callable(getattr(cls, "encoder_weight", None))}


def _describe_one(r: dict, loaded: dict, drop: dict | None = None, via: dict | None = None) -> dict:
    """In the describing worker: import entry point ``r`` and run its registration hooks into lists (first, in a
    worker that runs as another user, check that it can read the entry point's files: ``r["paths"]``)."""
    import importlib.metadata as md

    import pluggy

    from ..contract import hookspecs
    from ..contract.decoder import check_decoder_class
    from ..contract.registry import ENTRY_POINT_GROUP, _check_encoder_class, _dist_label

    name = r["name"]
    if drop is not None:
        try:
            _check_readable(drop, name, r.get("paths"), via or {})
        except CannotRead as exc:
            return {"error": f"plugin {name!r} failed to load: {exc}"}
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)
           if ep.name == name and ep.value == r["value"] and _dist_label(getattr(ep, "dist", None)) == r["dist"]]
    if not eps:
        return {"error": f"plugin {name!r} failed to load: its entry point is not installed in the worker"}
    try:
        module = eps[0].load()
        pm = pluggy.PluginManager("decoderbench")
        pm.add_hookspecs(hookspecs)
        pm.register(module, name=name)
    except BaseException as exc:  # noqa: BLE001 (SystemExit at import included)
        return {"error": f"plugin {name!r} failed to load: {type(exc).__name__}: {exc}"}
    out: dict = {"decoders": [], "encoders": [], "commands": []}
    classes: dict = {}
    for hook, field, check in (("decoderbench_register_decoders", "decoders", check_decoder_class),
                               ("decoderbench_register_encoders", "encoders", _check_encoder_class),
                               ("decoderbench_register_commands", "commands", None)):
        def register(obj, _field=field, _check=check):
            if _check is not None:
                _check(obj)
            if _field == "decoders":
                classes.setdefault(obj.name, obj)
                out[_field].append(_describe_decoder(obj))
            elif _field == "encoders":
                out[_field].append({"name": obj.name, "capabilities": sorted(str(c) for c in obj.capabilities),
                                    "description": (obj.__doc__ or "").strip().split("\n")[0],
                                    "qualname": f"{obj.__module__}.{obj.__qualname__}"})
            else:
                out[_field].append(str(getattr(obj, "name", obj)))

        for impl in getattr(pm.hook, hook).get_hookimpls():
            try:
                impl.function(register=register)
            except BaseException as exc:  # noqa: BLE001
                out[f"{field}_error"] = f"plugin {name!r} failed to register: {type(exc).__name__}: {exc}"
    loaded[name] = classes
    return out


def _validate_one(loaded: dict, name: str, decoder: str, options: str, n_s, n_d, p):
    import json
    import warnings

    from ..contract.decoder import Cell
    from ..contract.options import check

    cls = loaded[name][decoder]
    cell = Cell(n_s, n_d, p)
    try:
        if getattr(cls, "Options", None) is not None:
            check(cls, json.loads(options), cell, name=decoder)
        else:
            v = getattr(cls, "validate_options", None)
            if callable(v):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    v(json.loads(options), cell)
    except ValueError as exc:
        return str(exc).splitlines()[0] if str(exc) else f"{decoder}: bad options"
    except BaseException as exc:  # noqa: BLE001
        return f"{decoder}: options check failed: {type(exc).__name__}: {exc}"
    return None


def _describer_main(conn, env: dict, drop: dict | None = None) -> None:
    """The describing worker: imports third-party entry points (never the harness), answers in plain data; as
    an unprivileged user where the harness is root (``drop``)."""
    _own_session()
    _quiet_stdout()
    via: dict = {}
    try:
        apply_child_env(env)
        from ..model import evalkey

        os.environ.pop(evalkey.ENV, None)
        evalkey._in_decoder_worker()
        if drop is not None:
            via = _become(drop)
    except BaseException as exc:  # noqa: BLE001
        _send_error(conn, exc)
        return
    loaded: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if msg[0] == "describe":
                for r in msg[1]:
                    conn.send(("ep", r["name"], plain(_describe_one(r, loaded, drop, via))))
            elif msg[0] == "validate":
                for r, decoder, options, n_s, n_d, p in msg[1]:
                    if r["name"] not in loaded:
                        _describe_one(r, loaded, drop, via)
                    conn.send(("ok", _validate_one(loaded, r["name"], decoder, options, n_s, n_d, p)))
            else:
                return
        except BaseException as exc:  # noqa: BLE001
            _send_error(conn, exc)


class _Describer:
    """The harness's end of the describing worker (started once, kept for the process until reset)."""

    def __init__(self, stats: dict):
        t0 = time.monotonic()
        ctx = mp_context()
        self.conn, child = ctx.Pipe()
        env = {k: v for k, v in child_env().items() if k not in ("eval_key", "described")}
        env["trusted"] = "all"
        self.drop = drop_spec(worker_user())  # it imports third-party code: as an unprivileged user, if root
        self.proc = ctx.Process(target=_describer_main, args=(child, env, self.drop), daemon=True,
                                name="decoderbench-describe")
        try:
            with _main_not_reimported():
                self.proc.start()
        except BaseException:
            _remove_home(self.drop and self.drop["home"])
            raise
        child.close()
        stats["worker_starts"] = stats.get("worker_starts", 0) + 1
        stats["start_s"] = time.monotonic() - t0

    def send(self, msg) -> None:
        self.conn.send(msg)

    def recv(self, timeout: float):
        """The next plain message, or None when the worker died or ran past ``timeout``."""
        from multiprocessing.connection import wait

        woke = wait([self.conn, self.proc.sentinel], timeout=timeout)
        if not woke or (self.conn not in woke and not self.conn.poll(0.2)):
            self.close()
            return None
        try:
            return recv_plain(self.conn)
        except (EOFError, OSError, pickle.UnpicklingError):
            self.close()
            return None

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        except (OSError, ValueError, AssertionError):
            pass
        kill_group(self.proc.pid)
        _remove_home(self.drop and self.drop["home"])
        try:
            self.conn.close()
        except OSError:
            pass


_describer: _Describer | None = None


def close_describer() -> None:
    global _describer
    if _describer is not None:
        _describer.close()
        _describer = None


def _get_describer(stats: dict) -> _Describer:
    global _describer
    if _describer is None or not _describer.proc.is_alive():
        close_describer()
        _describer = _Describer(stats)
    return _describer


def describe_entry_points(remote: list, stats: dict) -> dict:
    """``{entry point name: description}`` of third-party entry points ``remote`` (``{name, value, dist}``),
    each imported in the describing worker, never here. One worker describes them all; an entry point that
    kills it or hangs (past ``DESCRIBE_TIMEOUT_S``) is described by that failure, and a fresh worker goes on
    with the rest."""
    t0 = time.monotonic()
    out: dict = {}
    todo = list(remote)
    with stdout_to_stderr():
        while todo:
            d = _get_describer(stats)
            if d.drop is not None:  # where each entry point's files are, for the worker to check it can read them
                todo = [dict(r, paths=plugin_paths(r)) for r in todo]
            try:
                d.send(("describe", todo))
            except (BrokenPipeError, OSError):
                close_describer()
                d = _get_describer(stats)
                d.send(("describe", todo))
            while todo:
                msg = d.recv(DESCRIBE_TIMEOUT_S)
                if msg is None:  # the worker died (or hung) on todo[0]: that plugin's failure, the rest go on
                    r = todo.pop(0)
                    why = describe_exit(d.proc.exitcode) if d.proc.exitcode is not None else "ran past its time limit"
                    out[r["name"]] = {"error": f"plugin {r['name']!r} failed to load: the worker importing it {why}"}
                    close_describer()
                    break
                if msg[0] == "ep" and todo and msg[1] == todo[0]["name"]:
                    out[msg[1]] = msg[2] if isinstance(msg[2], dict) else {"error": f"plugin {msg[1]!r}: bad description"}
                    todo.pop(0)
                elif msg[0] == "raise":
                    r = todo.pop(0)
                    out[r["name"]] = {"error": f"plugin {r['name']!r} failed to load: {msg[1]}: {msg[2]}"}
                    close_describer()
                    break
    stats["seconds"] = stats.get("seconds", 0.0) + time.monotonic() - t0
    return out


def validate_described_options(todo: list, stats: dict) -> list:
    """The options check of described decoders, in the describing worker: ``todo`` holds ``(entry point,
    decoder, options JSON, n_s, n_d, p)``; one ``None`` or one-line refusal per item."""
    out = []
    with stdout_to_stderr():
        for item in todo:
            d = _get_describer(stats)
            if d.drop is not None:
                item = (dict(item[0], paths=plugin_paths(item[0])), *item[1:])
            try:
                d.send(("validate", [item]))
                msg = d.recv(DESCRIBE_TIMEOUT_S)
            except (BrokenPipeError, OSError):
                msg = None
            if msg is None or msg[0] != "ok":
                out.append(f"{item[1]}: its options could not be checked: the describing worker failed"
                           + (f" ({msg[1]}: {msg[2]})" if msg is not None and msg[0] == "raise" else ""))
                close_describer()
            else:
                out.append(msg[1] if msg[1] is None else str(msg[1]))
    return out
