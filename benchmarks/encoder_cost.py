"""What the rug's operations cost against the transforms they contain, as ratios timed in one process.

Run on an idle machine: ``python benchmarks/encoder_cost.py`` (a few minutes; ``--json FILE`` writes the
figures). Per (n_s, B), float32 on CPU, 2 torch threads, it times:

- ``fwht(x)`` (the backend the batch gets: ``avx2`` where the kernel is built, else ``fht_cpu`` with the
  ``fast`` extra, else ``torch``), the pure-torch transform, and ``x.clone()``;
- ``encode``, ``decode`` (each: one transform, a new output) against one ``fwht(x)`` (a new output), ``apply``
  against two;
- into buffers the caller owns (no allocation, so the allocator's state does not enter): ``adjoint(h, out=)``
  against one ``fwht_`` (in place), ``apply(x, inplace=True)`` against two;
- where the AVX2 kernel is built, the same operations as an install without it runs them (fht-cpu or torch,
  the rug unfused), in the same rounds: "(no kernel)", and each operation's time with the kernel over without.

Each time is the least of ``--rounds`` rounds, the operations taken in turn within each round; a ratio is the
median over rounds of the two times of one round (moments apart), so a change of load between rounds cancels.
``--steady`` times each operation alone instead, ``--rounds`` calls in a row, and divides medians: the
operations' own cost, without what the others leave in the caches and the allocator.
A new (B, n_s) output costs what the allocator makes it cost: at (4096, 1024), 16 MB, glibc sometimes reuses a
freed block and sometimes maps fresh pages (2-3 ms of page faults), so the ratios of operations with new outputs
move between runs there; those into owned buffers do not. The load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

SIZES = [(4096, 1024), (16384, 1024), (65536, 256)]
P = 0.01


def _interleaved(fns: dict, rounds: int = 15) -> dict:
    """Times of each function over ``rounds`` rounds, the functions taken in turn within a round, so a
    change in the machine's load touches every one of them alike: ``{name: [seconds per round]}``."""
    for fn in fns.values():
        fn()  # warm up (caches, lazily built buffers)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _alone(fns: dict, rounds: int = 15) -> dict:
    """Times of each function over ``rounds`` calls in a row (its buffers warm, the allocator handing back the
    block it just freed): ``{name: [seconds per call]}``; the ratios of these medians are the operations' own
    cost, free of what the others leave in the caches and the allocator."""
    times = {}
    for k, fn in fns.items():
        fn()
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        times[k] = ts
    return times


def _ratio(times: dict, a: str, b: str, scale: float = 1.0) -> float:
    """Median over rounds of time(a) / (scale * time(b)), both from the same round (moments apart)."""
    rs = sorted(x / (scale * y) for x, y in zip(times[a], times[b]))
    return rs[len(rs) // 2]


def load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:  # pragma: no cover
        return "?"


def _without_kernel(fn):
    """fn run as an install without the AVX2 kernel runs it (fht-cpu or torch transform, the rug unfused)."""
    from decoderbench.model import hadamard

    def run():
        saved, hadamard._AVX2 = hadamard._AVX2, None
        try:
            return fn()
        finally:
            hadamard._AVX2 = saved
    return run


def _ops(rug, x, h) -> dict:
    """The timed operations of one rug on batch x (and h = encode(x)); the in-place ones get copies of x."""
    from decoderbench.model.hadamard import fwht, fwht_

    b1, b2, b3 = (x.clone() for _ in range(3))
    return {
        "fwht": lambda: fwht(x), "encode": lambda: rug.encode(x), "decode": lambda: rug.decode(h),
        "apply": lambda: rug.apply(x),
        # into buffers the caller owns (no allocation): the operations' own cost
        "fwht_": lambda: fwht_(b1), "adjoint_out": lambda: rug.adjoint(h, out=b2),
        "apply_": lambda: rug.apply(b3, inplace=True),
    }


RATIOS = [("encode/fwht", "encode", "fwht", 1.0), ("decode/fwht", "decode", "fwht", 1.0),
          ("apply/2fwht", "apply", "fwht", 2.0), ("adjoint_out/fwht_", "adjoint_out", "fwht_", 1.0),
          ("apply_/2fwht_", "apply_", "fwht_", 2.0)]


def _synced(fns: dict, device: str) -> dict:
    """On CUDA each timed call waits for the device (kernels are queued, not run, when the call returns)."""
    if device != "cuda":
        return fns

    def wrap(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run
    return {k: wrap(f) for k, f in fns.items()}


def measure(sizes=SIZES, threads: int = 2, rounds: int = 25, steady: bool = False, device: str = "cpu") -> dict:
    from decoderbench import PersianRug, SparseSampler
    from decoderbench.model import hadamard
    from decoderbench.model.hadamard import _fwht_torch, backend

    torch.set_num_threads(threads)
    kernel = hadamard._AVX2 is not None and device == "cpu"
    out: dict = {"threads": threads, "load_before": load(), "fht_cpu": hadamard._fht_cpu is not None,
                 "avx2": kernel, "rounds": rounds, "steady": steady, "device": device, "sizes": {}, "backends": {}}
    if device == "cuda":
        out["device_name"] = torch.cuda.get_device_name(0)
    for n_s, batch in sizes:
        x = SparseSampler(n_s, P, seed=0).sample(batch).to(device)
        key = f"{n_s}x{batch}"
        rug = PersianRug(n_s, n_s // 4, seed=0, device=device)
        h = rug.encode(x)
        fns = {"clone": x.clone, "fwht_torch": lambda: _fwht_torch(x)}
        fns.update(_ops(rug, x, h))
        out["backends"][key] = backend(x)
        if kernel:  # the same operations as an install without the kernel runs them, in the same rounds
            plain = PersianRug(n_s, n_s // 4, seed=0)
            ops = _ops(plain, x, h)
            fns.update({f"{k} (no kernel)": _without_kernel(f) for k, f in ops.items()})
            out["backends"][key + " (no kernel)"] = _without_kernel(lambda: backend(x))()
        fns = _synced(fns, device)
        times = _interleaved(fns, rounds) if not steady else _alone(fns, rounds)
        if steady:  # medians of calls in a row: the ratio of two operations is the ratio of their medians
            times = {k: [sorted(v)[len(v) // 2]] for k, v in times.items()}
        t = {k: min(v) for k, v in times.items()}
        ratios = {"fwht/clone": _ratio(times, "fwht", "clone"), "fwht_torch/clone": _ratio(times, "fwht_torch", "clone")}
        for name, a, b, sc in RATIOS:
            ratios[name] = _ratio(times, a, b, sc)
        if kernel:
            ratios["fwht/clone (no kernel)"] = _ratio(times, "fwht (no kernel)", "clone")
            for name, a, b, sc in RATIOS:
                ratios[f"{name} (no kernel)"] = _ratio(times, f"{a} (no kernel)", f"{b} (no kernel)", sc)
            for op in ("fwht", "encode", "decode", "apply", "fwht_", "adjoint_out", "apply_"):
                ratios[f"{op}: kernel/no kernel"] = _ratio(times, op, f"{op} (no kernel)")
        out["sizes"][key] = {"seconds": t, "ratios": ratios}
    out["load_after"] = load()
    return out


def show(res: dict) -> None:
    print(f"device {res['device']} {res.get('device_name', '')}  threads {res['threads']}  "
          f"fht-cpu installed: {res['fht_cpu']}  AVX2 kernel: {res['avx2']}  "
          f"rounds {res['rounds']}{' (steady: each operation alone)' if res['steady'] else ''}  "
          f"load {res['load_before']} -> {res['load_after']}")
    print(f"backends: {res['backends']}")
    for key, v in res["sizes"].items():
        sec = v["seconds"]
        print(f"n_s x B = {key}  (least: clone {sec['clone'] * 1e3:.2f} ms, fwht {sec['fwht'] * 1e3:.2f} ms"
              + (f", without the kernel {sec['fwht (no kernel)'] * 1e3:.2f} ms)" if "fwht (no kernel)" in sec else ")"))
        for name, ratio in v["ratios"].items():
            print(f"  {name:34s} {ratio:6.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where the batch and the rug live (cuda: each call timed to the device's completion)")
    ap.add_argument("--sizes", default=None,
                    help="n_s x B pairs, comma-separated (default: " + ",".join(f"{a}x{b}" for a, b in SIZES) + ")")
    ap.add_argument("--steady", action="store_true",
                    help="time each operation alone, calls in a row (its own cost), instead of in turn")
    ap.add_argument("--disable-fht-cpu", action="store_true",
                    help="measure with DECODERBENCH_FWHT_DISABLE=fht_cpu,avx2 (the pure-torch transform everywhere)")
    args = ap.parse_args(argv)
    if args.disable_fht_cpu:  # before decoderbench is imported: the backends are chosen at import
        os.environ["DECODERBENCH_FWHT_DISABLE"] = "fht_cpu,avx2"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here", file=sys.stderr)
        return 2
    try:
        sizes = SIZES if args.sizes is None else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        assert all(len(t) == 2 and t[0] >= 8 and t[0] & (t[0] - 1) == 0 and t[1] >= 1 for t in sizes)
    except (ValueError, AssertionError):
        print(f"--sizes: n_sxB pairs with n_s a power of two >= 8, e.g. 4096x1024,65536x256; got {args.sizes!r}",
              file=sys.stderr)
        return 2
    res = measure(sizes=sizes, threads=args.threads, rounds=args.rounds, steady=args.steady, device=args.device)
    show(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
