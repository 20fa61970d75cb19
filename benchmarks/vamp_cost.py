"""Cost of one message-passing iteration, as a ratio to one ``PersianRug.apply`` timed in the same process.

Run: ``python benchmarks/vamp_cost.py [--ns 65536] [--batch 256] [--threads 1] [--profile-ns 4096] [--device cuda]``.

Prints, for VAMP and AMP, the time of one iteration divided by the time of one ``R x`` of the batch
(two fast Walsh-Hadamard transforms), the machine's load average beside it, and a cProfile top-15 of one
full VAMP decode at ``--profile-ns`` (B = 64). One iteration is timed as the difference between decodes
capped at ``K2`` and ``K1`` iterations (``tol = 0``, so no sample stops early), divided by ``K2 - K1``:
the set-up (``x_ls``, buffers) cancels. Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time

import torch

from decoderbench import PersianRug, SparseSampler
from decoderbench.contract.decoder import Cell, DecoderContext
from decoderbench_plugins.message_passing import AMP, VAMP

P = 0.045


def _ctx(rug, options):
    return DecoderContext(cell=Cell(rug.n_s, rug.n_d, P), seed=0, encoder=rug, options=options, device=rug.device)


def _median_time(fn, repeat: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()  # on CUDA: to the device's completion
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def iteration_ratio(cls, rug, x, h, repeat: int, k1: int = 1, k2: int = 3) -> tuple[float, float]:
    """(seconds per iteration, that / seconds per apply)."""
    t_apply = _median_time(lambda: rug.apply(x), repeat)
    t1 = _median_time(lambda: cls(_ctx(rug, {"max_iter": k1, "tol": 0})).decode(h), repeat)
    t2 = _median_time(lambda: cls(_ctx(rug, {"max_iter": k2, "tol": 0})).decode(h), repeat)
    per_it = (t2 - t1) / (k2 - k1)
    return per_it, per_it / t_apply


def profile_decode(n_s: int, batch: int = 64, top: int = 15) -> str:
    rug = PersianRug(n_s, n_s // 4, seed=0)
    h = rug.encode(SparseSampler(n_s, P, 0, "bench").sample(batch))
    dec = VAMP(_ctx(rug, {}))
    dec.decode(h)  # warm-up
    dec = VAMP(_ctx(rug, {}))
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    dec.decode(h)
    prof.disable()
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    head = (f"one VAMP decode, n_s={n_s}, B={batch}, r=0.25, p={P}: {wall:.3f} s, "
            f"iterations mean {dec.info['iterations_mean']:.1f}, stop reasons {dec.info['stop_reasons']}\n")
    return head + buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile-ns", type=int, default=4096)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    rug = PersianRug(args.ns, args.ns // 4, seed=0, device=args.device)
    x = SparseSampler(args.ns, P, 0, "bench").sample(args.batch).to(args.device)
    h = rug.encode(x)
    print(f"n_s={args.ns} B={args.batch} r=0.25 p={P} float32 device={args.device} threads={args.threads} "
          f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for cls in (VAMP, AMP):
        per_it, ratio = iteration_ratio(cls, rug, x, h, args.repeat)
        print(f"{cls.name}: one iteration {per_it * 1e3:.1f} ms = {ratio:.1f} x one apply "
              f"(load {os.getloadavg()[0]:.2f})")
    if args.profile_ns:
        print(profile_decode(args.profile_ns))


if __name__ == "__main__":
    main()
