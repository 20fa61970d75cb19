"""Speed of the transform and the rug, as ratios against baselines measured in the same run.

Run: ``pytest benchmarks/test_bench_hadamard.py --benchmark-enable`` (float32, B = 1024, n_s = 16384,
n_d = n_s/4). Compare ``apply`` with ``dense_R`` (x @ R) and ``dense_factored`` ((x @ H_S) @ H_S^T),
and ``fwht`` with ``clone``. Nothing is asserted about time.
"""

import numpy as np
import pytest
import scipy.linalg
import torch

from decoderbench import PersianRug, fwht
from decoderbench.model.hadamard import _fwht_torch

N_S, B = 16384, 1024


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N_S, generator=g)
    rug = PersianRug(N_S, N_S // 4, seed=0)
    return x, rug


@pytest.fixture(scope="module")
def dense(setup):
    x, rug = setup
    H = torch.from_numpy(scipy.linalg.hadamard(N_S).astype(np.float32))
    HS = (H[:, rug.S] / rug.n_d**0.5).contiguous()
    R = HS @ HS.T
    return HS, R


def test_clone(benchmark, setup):
    x, _ = setup
    benchmark.group = "fwht"
    benchmark(x.clone)


def test_fwht(benchmark, setup):
    x, _ = setup
    benchmark.group = "fwht"
    benchmark(fwht, x)


def test_fwht_torch_backend(benchmark, setup):
    x, _ = setup
    benchmark.group = "fwht"
    benchmark(_fwht_torch, x)


def test_apply(benchmark, setup):
    x, rug = setup
    benchmark.group = "apply"
    benchmark(rug.apply, x)


def test_dense_factored(benchmark, setup, dense):
    x, _ = setup
    HS, _ = dense
    benchmark.group = "apply"
    benchmark.pedantic(lambda: (x @ HS) @ HS.T, rounds=3, iterations=1)


def test_dense_R(benchmark, setup, dense):
    x, _ = setup
    _, R = dense
    benchmark.group = "apply"
    benchmark.pedantic(lambda: x @ R, rounds=3, iterations=1)
