"""What the rug's operations cost against the transforms they contain, as ratios timed in one process.

Run on an idle machine: ``python benchmarks/encoder_cost.py`` (about a minute; ``--json FILE`` writes the
figures). It prints, per (n_s, B) and float32 on CPU with 2 torch threads:

- per fwht backend (``fht_cpu`` when the ``fast`` extra is installed, ``torch`` always): ``fwht(x)`` against
  ``x.clone()`` of the same batch;
- ``encode``, ``decode``, ``adjoint`` against one ``fwht`` of a (B, n_s) batch, and ``apply`` against two:
  the transforms each of them needs (``encode`` one, ``decode``/``adjoint`` one, ``apply`` two);

next to the figures measured before the encoder and the torch transform were reworked (``BEFORE`` below,
measured with this script on the parent commit, load average beside them). Each time is the least of
15 rounds, the operations taken in turn within each round; a ratio is the median over rounds of the two
times of one round (moments apart), so a change of load between rounds cancels. The load average is
printed beside them: on a shared machine only the ratios mean anything, and those only roughly.
The ``BEFORE`` figures were the least time of each operation over the rounds, divided (min / min).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

# measured before the rework (parent commit of the encoder/transform change), same script, 2 threads
BEFORE: dict = {
 "default": {
  "load_before": "5.59 3.14 1.42",
  "load_after": "5.83 3.54 1.64",
  "sizes": {
   "4096x1024": {
    "ratios": {
     "fwht/clone": 3.01,
     "fwht_torch/clone": 13.95,
     "encode/fwht": 1.76,
     "decode/fwht": 2.25,
     "adjoint/fwht": 2.16,
     "apply/2fwht": 1.32,
     "apply/clone": 7.97
    }
   },
   "16384x1024": {
    "ratios": {
     "fwht/clone": 1.42,
     "fwht_torch/clone": 5.93,
     "encode/fwht": 1.44,
     "decode/fwht": 2.01,
     "adjoint/fwht": 2.24,
     "apply/2fwht": 1.18,
     "apply/clone": 3.33
    }
   },
   "65536x256": {
    "ratios": {
     "fwht/clone": 1.7,
     "fwht_torch/clone": 10.04,
     "encode/fwht": 1.4,
     "decode/fwht": 2.08,
     "adjoint/fwht": 1.92,
     "apply/2fwht": 1.17,
     "apply/clone": 3.99
    }
   }
  }
 },
 "torch": {
  "load_before": "5.83 3.54 1.64",
  "load_after": "5.74 4.30 2.17",
  "sizes": {
   "4096x1024": {
    "ratios": {
     "fwht/clone": 9.6,
     "fwht_torch/clone": 12.27,
     "encode/fwht": 1.48,
     "decode/fwht": 1.54,
     "adjoint/fwht": 1.59,
     "apply/2fwht": 1.36,
     "apply/clone": 26.05
    }
   },
   "16384x1024": {
    "ratios": {
     "fwht/clone": 6.16,
     "fwht_torch/clone": 5.95,
     "encode/fwht": 1.11,
     "decode/fwht": 1.27,
     "adjoint/fwht": 1.26,
     "apply/2fwht": 1.04,
     "apply/clone": 12.79
    }
   },
   "65536x256": {
    "ratios": {
     "fwht/clone": 9.83,
     "fwht_torch/clone": 9.5,
     "encode/fwht": 1.09,
     "decode/fwht": 1.13,
     "adjoint/fwht": 1.18,
     "apply/2fwht": 0.98,
     "apply/clone": 19.3
    }
   }
  }
 }
}

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


def _ratio(times: dict, a: str, b: str, scale: float = 1.0) -> float:
    """Median over rounds of time(a) / (scale * time(b)), both from the same round (moments apart)."""
    rs = sorted(x / (scale * y) for x, y in zip(times[a], times[b]))
    return rs[len(rs) // 2]


def load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:  # pragma: no cover
        return "?"


def measure(sizes=SIZES, threads: int = 2) -> dict:
    from decoderbench import PersianRug, SparseSampler
    from decoderbench.model import hadamard
    from decoderbench.model.hadamard import _fwht_torch, fwht

    torch.set_num_threads(threads)
    out: dict = {"threads": threads, "load_before": load(), "fht_cpu": hadamard._fht_cpu is not None, "sizes": {}}
    for n_s, batch in sizes:
        x = SparseSampler(n_s, P, seed=0).sample(batch)
        rug = PersianRug(n_s, n_s // 4, seed=0)
        h = rug.encode(x)
        times = _interleaved({
            "clone": x.clone, "fwht": lambda: fwht(x), "fwht_torch": lambda: _fwht_torch(x),
            "encode": lambda: rug.encode(x), "decode": lambda: rug.decode(h), "adjoint": lambda: rug.adjoint(h),
            "apply": lambda: rug.apply(x),
        })
        t = {k: min(v) for k, v in times.items()}
        ratios = {
            "fwht/clone": _ratio(times, "fwht", "clone"),
            "fwht_torch/clone": _ratio(times, "fwht_torch", "clone"),
            "encode/fwht": _ratio(times, "encode", "fwht"),
            "decode/fwht": _ratio(times, "decode", "fwht"),
            "adjoint/fwht": _ratio(times, "adjoint", "fwht"),
            "apply/2fwht": _ratio(times, "apply", "fwht", 2.0),
            "apply/clone": _ratio(times, "apply", "clone"),
        }
        out["sizes"][f"{n_s}x{batch}"] = {"seconds": t, "ratios": ratios}
    out["load_after"] = load()
    return out


def show(res: dict, before: dict | None) -> None:
    print(f"threads {res['threads']}  fht_cpu installed: {res['fht_cpu']}  "
          f"load {res['load_before']} -> {res['load_after']}")
    if before:
        print(f"before: load {before.get('load_before')} -> {before.get('load_after')}")
    for key, v in res["sizes"].items():
        print(f"n_s x B = {key}  (least clone {v['seconds']['clone'] * 1e3:.2f} ms, fwht {v['seconds']['fwht'] * 1e3:.2f} ms)")
        for name, ratio in v["ratios"].items():
            b = (before or {}).get("sizes", {}).get(key, {}).get("ratios", {}).get(name)
            was = f"   before {b:6.2f}" if b is not None else ""
            print(f"  {name:18s} {ratio:6.2f}{was}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--disable-fht-cpu", action="store_true",
                    help="measure with DECODERBENCH_FWHT_DISABLE=fht_cpu (the pure-torch transform everywhere)")
    args = ap.parse_args(argv)
    if args.disable_fht_cpu:
        os.environ["DECODERBENCH_FWHT_DISABLE"] = "fht_cpu"
    res = measure(threads=args.threads)
    key = "torch" if args.disable_fht_cpu else "default"
    show(res, BEFORE.get(key))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
