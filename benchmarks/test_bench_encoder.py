"""The rug's operations against the transforms they contain, and fwht against clone per backend.

Run: ``pytest benchmarks/test_bench_encoder.py --benchmark-enable`` (float32, CPU, 2 threads). One group
per size (n_s, B) = (4096, 1024) and (65536, 256): ``clone`` of the batch, ``fwht`` (the backend the
tensor gets: fht-cpu with the ``fast`` extra), ``fwht_torch`` (the pure-torch backend), ``encode``,
``decode``, ``adjoint``, ``apply``. ``encode``, ``decode`` and ``adjoint`` contain one transform each and
``apply`` two. Nothing is asserted about time; ``python benchmarks/encoder_cost.py`` prints the same
comparisons as ratios beside the figures measured before the encoder was reworked.
"""

import pytest
import torch

from decoderbench import PersianRug, SparseSampler, fwht
from decoderbench.model.hadamard import _fwht_torch

SIZES = {"4096x1024": (4096, 1024), "65536x256": (65536, 256)}


@pytest.fixture(scope="module", params=list(SIZES))
def case(request):
    n_s, batch = SIZES[request.param]
    x = SparseSampler(n_s, 0.01, seed=0).sample(batch)
    rug = PersianRug(n_s, n_s // 4, seed=0)
    return request.param, x, rug, rug.encode(x)


OPS = {
    "clone": lambda x, rug, h: x.clone(),
    "fwht": lambda x, rug, h: fwht(x),
    "fwht_torch": lambda x, rug, h: _fwht_torch(x),
    "encode": lambda x, rug, h: rug.encode(x),
    "decode": lambda x, rug, h: rug.decode(h),
    "adjoint": lambda x, rug, h: rug.adjoint(h),
    "apply": lambda x, rug, h: rug.apply(x),
}


@pytest.mark.parametrize("op", list(OPS))
def test_rug_op(benchmark, case, op):
    name, x, rug, h = case
    benchmark.group = f"rug {name}"
    torch.set_num_threads(2)
    benchmark(OPS[op], x, rug, h)
