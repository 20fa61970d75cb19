"""The Ray executor: each ``WorkUnit`` a Ray task, rows gathered on the driver (the store's only writer).

``decoderbench run --executor ray`` starts a local Ray instance (``--workers N``: its number of CPUs,
default all), ``--address HOST:PORT`` (or ``auto``) joins an existing cluster instead. Each task runs
:func:`decoderbench.run.worker.run_guarded` on its unit with the run's guard (so a third-party decoder is
isolated in a child process of the Ray worker, exactly as locally) and returns the row; a unit on a
CUDA device asks Ray for one GPU. The row's numbers do not depend on where it ran (runs are
deterministic on CPU), so a Ray run's rows equal a local run's. Ray is an optional extra:
``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import socket
import time

from ..errors import BadInput

INSTALL_HINT = 'pip install -e ".[ray]" (or pip install "decoderbench[ray]")'


def _import_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BadInput(f"--executor ray: Ray is not installed; install the extra: {INSTALL_HINT}") from None
    return ray


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """``HOST:PORT`` must accept a TCP connection (the cluster's GCS port); ``auto`` and ``ray://`` are left to Ray."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"--address must be HOST:PORT of a Ray cluster (or auto), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise BadInput(f"--address {address}: no Ray cluster reachable there ({exc.strerror or exc})") from None


def _ray_unit(unit, guard, env):
    from .worker import apply_child_env, run_guarded

    apply_child_env(env)
    return run_guarded(unit, guard, env)


class RayExecutor:
    """``executor(units, before)`` yielding ``(unit, row)`` as Ray tasks finish."""

    def __init__(self, guard, address: str | None = None, workers: int = 1):
        ray = _import_ray()
        if address is not None:
            check_address(address)
        self.ray = ray
        self.guard = guard
        if not ray.is_initialized():
            kw = {"address": address} if address is not None else ({"num_cpus": workers} if workers > 1 else {})
            try:
                ray.init(ignore_reinit_error=True, include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False, **kw)
            except ConnectionError as exc:
                raise BadInput(f"--address {address}: cannot join a Ray cluster there ({exc})") from None
        self.task = ray.remote(_ray_unit)

    def __call__(self, units, before=None):
        from ..contract import registry as plugins
        from .worker import BACKSTOP_S, TIMEOUT, child_env, failure_row

        ray = self.ray
        env = child_env()
        env["threads"] = 1
        refs = {}
        for u in units:
            if before is not None:
                before(u)
            opts = {"num_cpus": 1}
            if str(u.device).startswith("cuda"):
                opts["num_gpus"] = 1
            refs[self.task.options(**opts).remote(u, self.guard, env)] = (
                u, time.monotonic() + self.guard.timeout_for(u.decoder) + BACKSTOP_S)
        while refs:
            soonest = min(d for _, d in refs.values())
            done, _ = ray.wait(list(refs), num_returns=1, timeout=max(0.1, soonest - time.monotonic()))
            now = time.monotonic()
            finished = list(done) + [r for r, (_, d) in refs.items() if r not in done and now >= d]
            for ref in finished:
                u, _ = refs.pop(ref)
                try:
                    reg = plugins.get_decoder(u.decoder)
                except ValueError:
                    reg = None
                if ref in done:
                    try:
                        row = ray.get(ref)
                    except Exception as exc:  # the task's worker died, or Ray failed it
                        row = failure_row(u, reg, f"WorkerDied: the Ray task failed: {type(exc).__name__}: "
                                                  f"{str(exc).splitlines()[0] if str(exc) else ''}")
                else:
                    ray.cancel(ref, force=True)
                    row = failure_row(u, reg, f"UnitTimeout: the Ray task ran past its time limit of "
                                              f"{self.guard.timeout_for(u.decoder) + BACKSTOP_S:g} s", status=TIMEOUT)
                yield u, row
