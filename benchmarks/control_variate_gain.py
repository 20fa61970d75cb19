"""What the control-variate estimator saves on a grid: samples per row, and time as a ratio, in one process.

Run: ``python benchmarks/control_variate_gain.py [--grid default] [--decoders all] [--threads 1] [--rounds 1]
[--json OUT]``.

Scores the grid with the plain mean (``scoring.CONTROL_VARIATE = False``) and with the control variate, in this
order, ``--rounds`` times, in one process, with no store (nothing reused). Prints, per row: the samples each
estimator needed (``n_eval``), its stop, whether its precision was met, its loss and SE and the time it spent
scoring; then the totals: samples, and the sums of the rows' own ``eval_time_s`` and ``wall_time_s`` as a ratio
(control variate / plain mean). Times are compared only as ratios within this process; the machine's load
average is printed beside them. The first round also pays the cells' exact references (cached after): compare
``eval_time_s``, or use ``--rounds 2`` and the second round's ``wall_time_s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

import decoderbench as db
from decoderbench import api
from decoderbench.run import scoring


def run(grid, decoders):
    return api.records(db.evaluate(decoders, grid=grid, device="cpu", progress=False))


def ident(r):
    return (r["n_s"], r["n_d"], r["p"], r["seed"], r["decoder"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="default")
    ap.add_argument("--decoders", default="all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = []
    for rnd in range(a.rounds):
        for cv in (False, True):
            scoring.CONTROL_VARIATE = cv
            load0 = os.getloadavg()[0]
            rows = run(a.grid, a.decoders)
            out.append({"round": rnd, "control_variate": cv, "load_before": load0, "load_after": os.getloadavg()[0],
                        "rows": rows})
    scoring.CONTROL_VARIATE = True
    for rnd in range(a.rounds):
        plain = {ident(r): r for r in out[2 * rnd]["rows"]}
        cvr = {ident(r): r for r in out[2 * rnd + 1]["rows"]}
        print(f"round {rnd}: load {out[2 * rnd]['load_before']:.1f} -> {out[2 * rnd + 1]['load_after']:.1f}")
        print(f"{'cell':>22} {'decoder':>30} | {'n plain':>7} {'n cv':>6} | {'stop plain':>11} {'stop cv':>11} | "
              f"{'loss plain':>11} {'se':>9} | {'loss cv':>11} {'se':>9} | {'diff/se':>7} | {'eval s ratio':>12}")
        tot = {"n_plain": 0, "n_cv": 0, "eval_plain": 0.0, "eval_cv": 0.0, "wall_plain": 0.0, "wall_cv": 0.0}
        for k, p in plain.items():
            c = cvr[k]
            if p["status"] != "ok":
                continue
            diff = (c["loss"] - p["loss"]) / math.hypot(c["loss_se"], p["loss_se"]) if p["loss_se"] else float("nan")
            ratio = c["eval_time_s"] / p["eval_time_s"] if p["eval_time_s"] else float("nan")
            cell = f"{k[0]} {k[1]} {k[2]}"
            stop_p = p["sampling_stop"] + ("" if p["precision_met"] else "!")
            stop_c = c["sampling_stop"] + ("" if c["precision_met"] else "!")
            print(f"{cell:>22} {k[4]:>30} | {p['n_eval']:>7} {c['n_eval']:>6} | {stop_p:>11} {stop_c:>11} | "
                  f"{p['loss']:11.5g} {p['loss_se']:9.2g} | {c['loss']:11.5g} {c['loss_se']:9.2g} | {diff:7.2f} | "
                  f"{ratio:12.2f}")
            tot["n_plain"] += p["n_eval"]
            tot["n_cv"] += c["n_eval"]
            tot["eval_plain"] += p["eval_time_s"]
            tot["eval_cv"] += c["eval_time_s"]
            tot["wall_plain"] += p["wall_time_s"]
            tot["wall_cv"] += c["wall_time_s"]
        n_ok = sum(r["status"] == "ok" for r in plain.values())
        met = (sum(bool(r.get("precision_met")) for r in plain.values() if r["status"] == "ok"),
               sum(bool(r.get("precision_met")) for r in cvr.values() if r["status"] == "ok"))
        print(f"rows: {len(plain)} ({n_ok} ok); precision met: plain {met[0]}, cv {met[1]}")
        print(f"samples: plain {tot['n_plain']}, cv {tot['n_cv']} (ratio {tot['n_cv'] / tot['n_plain']:.3f})")
        print(f"sum eval_time_s ratio cv/plain: {tot['eval_cv'] / tot['eval_plain']:.3f}; "
              f"sum wall_time_s ratio: {tot['wall_cv'] / tot['wall_plain']:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, default=str)


if __name__ == "__main__":
    main()
