"""Speed of the scalar-channel denoiser ``channel.conditional_moments``, against baselines measured
in the same run.

Run: ``pytest benchmarks/test_bench_channel.py --benchmark-enable`` (well under a minute). One thread
(``torch.set_num_threads(1)`` for this module only) for stable figures on a shared machine.
Nothing is asserted about time.

Input: ``y`` of shape ``(256, 4096)`` (about 1M entries), float64 unless said otherwise,
``sigma = 0.2``, ``p = 0.05``, ``mu = 0``.  Divide a time by ``extra_info["entries"]`` for the time
per entry, and compare it with the baselines' rows of the same run.

* ``baseline_exp`` / ``baseline_log_ndtr``: one ``torch.exp`` / ``torch.special.log_ndtr`` of ``y``;
* ``main``: ``y = x + noise`` drawn from the model (``x = c u``): the direct branch, as in a decode;
* ``tail``: every ``t`` between ``-18 sigma`` and ``-8 sigma`` (the continued-fraction branch);
* ``mixed_5pct_tail``: ``main`` with 5% of the entries replaced by ``tail`` entries;
* ``tensor_sigma``: ``main`` with a per-row ``sigma`` of shape ``(256, 1)`` (as the AMP/VAMP decoders
  call it);
* ``float32``: ``main`` in float32 (computed in float64 inside, cast back);
* ``small_sigma``: ``sigma = 1e-3``, ``t`` around ``-10 sigma`` (half the entries on each branch).
"""

from __future__ import annotations

import pytest
import torch

from decoderbench.model.channel import conditional_moments

B, N, SIGMA, P = 256, 4096, 0.2, 0.05


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, N, generator=g) < P).double() * torch.rand(B, N, generator=g, dtype=torch.float64)
    main = x + SIGMA * torch.randn(B, N, generator=g, dtype=torch.float64)
    tail = -SIGMA * (8.0 + 10.0 * torch.rand(B, N, generator=g, dtype=torch.float64))
    mixed = torch.where(torch.rand(B, N, generator=g) < 0.05, tail, main)
    sig = SIGMA * (1.0 + 0.1 * torch.rand(B, 1, generator=g, dtype=torch.float64))
    small = 1e-3 * (torch.randn(B, N, generator=g, dtype=torch.float64) - 10.0)
    return {"main": main, "tail": tail, "mixed": mixed, "sig": sig, "small": small}


def _run(benchmark, fn, *args):
    benchmark.group = "channel"
    benchmark.extra_info["entries"] = B * N
    return benchmark.pedantic(fn, args=args, rounds=5, iterations=1, warmup_rounds=1)


def test_baseline_exp(benchmark, inputs):
    _run(benchmark, torch.exp, inputs["main"])


def test_baseline_log_ndtr(benchmark, inputs):
    _run(benchmark, torch.special.log_ndtr, inputs["main"])


def test_main(benchmark, inputs):
    mean, var = _run(benchmark, conditional_moments, inputs["main"], P, 0.0, SIGMA)
    assert mean.shape == (B, N) and var.dtype == torch.float64


def test_tail(benchmark, inputs):
    _run(benchmark, conditional_moments, inputs["tail"], P, 0.0, SIGMA)


def test_mixed_5pct_tail(benchmark, inputs):
    _run(benchmark, conditional_moments, inputs["mixed"], P, 0.0, SIGMA)


def test_tensor_sigma(benchmark, inputs):
    _run(benchmark, conditional_moments, inputs["main"], P, 0.0, inputs["sig"])


def test_float32(benchmark, inputs):
    y32 = inputs["main"].float()
    mean, _ = _run(benchmark, conditional_moments, y32, P, 0.0, SIGMA)
    assert mean.dtype == torch.float32


def test_small_sigma(benchmark, inputs):
    _run(benchmark, conditional_moments, inputs["small"], P, 0.0, 1e-3)
