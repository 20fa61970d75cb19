"""The sparse sampler: seeded, streamed, and with the right moments."""

import math

import pytest
import torch

from decoderbench import SparseSampler
from decoderbench.model.data import derive_seed, variance


def test_moments_within_standard_error():
    p, n_s = 0.1, 1024
    x = SparseSampler(n_s, p, seed=0, dtype=torch.float64).sample(2048).reshape(-1)
    n = x.numel()
    assert abs(float(x.mean()) - p / 2) < 4 * math.sqrt(variance(p) / n)
    m2 = x**2
    assert abs(float(m2.mean()) - p / 3) < 4 * float(m2.std()) / math.sqrt(n)
    assert abs(float((x > 0).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_seeded_and_streams_independent():
    a = SparseSampler(256, 0.2, seed=1).sample(10)
    b = SparseSampler(256, 0.2, seed=1).sample(10)
    c = SparseSampler(256, 0.2, seed=1, purpose="train").sample(10)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    s = SparseSampler(256, 0.2, seed=1)
    chunks = list(s.stream(25, batch_size=10))
    assert [t.shape[0] for t in chunks] == [10, 10, 5]
    assert torch.equal(chunks[0], a)


def test_dtype_and_p_one():
    x = SparseSampler(64, 1.0, seed=0, dtype=torch.float64).sample(4)
    assert x.dtype == torch.float64 and bool((x > 0).all())


def test_derive_seed_stable():
    assert derive_seed("a", 1, 0.5) == derive_seed("a", 1, 0.5)
    assert derive_seed("a", 1, 0.5) != derive_seed("a", 1, 0.25)
    assert 0 <= derive_seed("x") < 2**63


@pytest.mark.parametrize("kwargs,arg", [(dict(n_s=100, p=0.1), "n_s"), (dict(n_s=64, p=0), "p"),
                                        (dict(n_s=64, p=1.5), "p"), (dict(n_s=64, p=float("inf")), "p")])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg} "):
        SparseSampler(**kwargs)
