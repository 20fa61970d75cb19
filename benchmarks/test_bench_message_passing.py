"""Speed of the message-passing decoders at n_s = 65536, B = 256 (float32, CPU), as ratios against
baselines measured in the same run.

Run: ``pytest benchmarks/test_bench_message_passing.py --benchmark-enable`` (about two minutes on two
busy cores). Nothing is asserted about time.

Baselines: ``apply`` (one ``R x`` of the batch: two fast Walsh-Hadamard transforms) and ``denoiser``
(one call of the conditional-mean denoiser, ``channel.conditional_moments``, on the whole batch).
A full decode at this size takes tens of iterations, each costing about one denoiser call, which is
too slow to repeat here; so ``test_iterations[vamp|amp]`` time a decode capped at ``K = 1``
iteration (``max_iter = K``, ``tol = 0``; it includes the set-up, a few transforms, about 2% of an
iteration) and the time per decode is about ``iterations x (that time / K)``, with the iteration
count measured at the same cell on four samples (``extra_info["iterations_full_decode"]``; samples
that stop early drop out of later iterations, so this slightly overestimates). The number of fast
transforms per iteration is counted (``extra_info["fwht_per_iteration"]``) by wrapping the transforms the encoder and the decoder call
(``fwht``, the in-place ``fwht_`` and ``fwht_owned``).

``test_iteration_over_apply[vamp|amp]`` records the ratio the target is stated in: one iteration (the
difference of decodes capped at 3 and 1 iterations, halved, so the set-up cancels) over one
``PersianRug.apply``, both timed in the same process (``extra_info["ratio"]``); ``benchmarks/vamp_cost.py``
prints the same ratios and a cProfile of one decode without pytest.

Before and after the rework of the message-passing loop (buffers once per batch, in-place projection in the
transform domain, rare compaction, the posterior into preallocated outputs without a per-entry float64 copy
of sigma), measured by ``python benchmarks/vamp_cost.py`` (threads 1, n_s 65536, B 256, on a shared 2-core
machine, load average 5.6-6.2 in both runs):

=====================  ========  =======
one iteration / apply  before    after
=====================  ========  =======
vamp                   25.9x     3.5x
amp                    11.3x     6.7x
one VAMP decode        0.960 s   0.246 s  (n_s 4096, B 64, 14.7 iterations)
=====================  ========  =======

A later round (the posterior's blocks writing into work buffers allocated once per call, its reference entries
marked in one mask, the decoders' (B, n_s) buffers zeroed when made, AMP's adjoint into its own buffer), same
script on an idle machine, all rows bit-identical; the posterior alone 16.7 -> 12.4 ms per call at n_s 4096,
B 256 (two threads):

=====================  ===================  ==================
one iteration / apply  2 threads: before    1 thread: before
                       -> after             -> after
=====================  ===================  ==================
vamp                   13.9x -> 6.3x        7.6x -> 6.0x
amp                    9.6x -> 6.7x         7.3x -> 7.4x
=====================  ===================  ==================

(2 threads "before": the parent commit, measured the same day; 1 thread "before": the previous round's figure.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import decoderbench.model.encoders as encoders_mod
from decoderbench import PersianRug, SparseSampler
from decoderbench.model.channel import conditional_moments
from decoderbench.contract.decoder import Cell, DecoderContext
from decoderbench_plugins.message_passing import AMP, VAMP

sys.path.insert(0, str(Path(__file__).parent))
from vamp_cost import iteration_ratio  # noqa: E402

N_S, B, P = 65536, 256, 0.045
N_D = N_S // 4
K = 1  # timed iterations


@pytest.fixture(scope="module")
def setup():
    rug = PersianRug(N_S, N_D, seed=0)
    x = SparseSampler(N_S, P, 0, "bench").sample(B)
    return rug, x, rug.encode(x)


def _ctx(rug, options):
    return DecoderContext(cell=Cell(rug.n_s, rug.n_d, P), seed=0, encoder=rug, options=options)


def _fwht_per_iteration(cls, monkeypatch) -> float:
    """Fast transforms per iteration: count them in runs of 1 and 3 iterations on a small rug."""
    calls = [0]
    import decoderbench_plugins.message_passing as mp_mod

    # every transform name the encoder and the decoder call (out of place, in place, on an owned buffer)
    targets = [(mod, n) for mod in (encoders_mod, mp_mod) for n in ("fwht", "fwht_", "fwht_owned") if hasattr(mod, n)]
    real = {(mod, n): getattr(mod, n) for mod, n in targets}

    def counting(fn):
        def wrapped(x):
            calls[0] += 1
            return fn(x)
        return wrapped

    for mod, n in targets:
        monkeypatch.setattr(mod, n, counting(real[(mod, n)]))
    small = PersianRug(1024, 256, seed=0)
    h = small.encode(SparseSampler(1024, P, 0, "bench").sample(4))
    counts = []
    for k in (1, 3):
        calls[0] = 0
        cls(_ctx(small, {"max_iter": k, "tol": 0})).decode(h)
        counts.append(calls[0])
    for mod, n in targets:
        monkeypatch.setattr(mod, n, real[(mod, n)])
    return (counts[1] - counts[0]) / 2


def _iterations_full_decode(cls, rug, h) -> float:
    dec = cls(_ctx(rug, {}))
    dec.decode(h[:4])
    return dec.info["iterations_mean"]


def test_apply(benchmark, setup):
    rug, x, _ = setup
    benchmark.group = "message_passing n_s=65536 B=256"
    benchmark.extra_info["fwht"] = 2
    benchmark.pedantic(rug.apply, args=(x,), rounds=5, iterations=1, warmup_rounds=1)


def test_denoiser(benchmark, setup):
    rug, x, _ = setup
    benchmark.group = "message_passing n_s=65536 B=256"
    g = torch.Generator().manual_seed(0)
    r1 = x + 0.05 * torch.randn(x.shape, generator=g)
    sigma = torch.full((B, 1), 0.05)
    benchmark.pedantic(conditional_moments, args=(r1, P, 0.0, sigma), rounds=1, iterations=1)


@pytest.mark.parametrize("cls", [VAMP, AMP], ids=["vamp", "amp"])
def test_iterations(benchmark, setup, cls, monkeypatch):
    rug, _, h = setup
    benchmark.group = "message_passing n_s=65536 B=256"
    benchmark.extra_info["timed_iterations"] = K
    benchmark.extra_info["fwht_per_iteration"] = _fwht_per_iteration(cls, monkeypatch)
    benchmark.extra_info["iterations_full_decode"] = _iterations_full_decode(cls, rug, h)
    dec = cls(_ctx(rug, {"max_iter": K, "tol": 0}))
    out = benchmark.pedantic(dec.decode, args=(h,), rounds=1, iterations=1)
    assert out.shape == (B, N_S) and bool(torch.isfinite(out).all())
    assert dec.info["iterations_max"] == K


@pytest.mark.parametrize("cls", [VAMP, AMP], ids=["vamp", "amp"])
def test_iteration_over_apply(benchmark, setup, cls):
    rug, x, h = setup
    benchmark.group = "message_passing n_s=65536 B=256 ratio"
    per_it, ratio = benchmark.pedantic(iteration_ratio, args=(cls, rug, x, h, 1), rounds=1, iterations=1)
    benchmark.extra_info["seconds_per_iteration"] = per_it
    benchmark.extra_info["ratio"] = ratio
    benchmark.extra_info["load_average"] = __import__("os").getloadavg()[0]
