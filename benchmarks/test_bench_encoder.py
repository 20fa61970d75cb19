"""The rug's operations against the transforms they contain, and fwht against clone per backend.

Run: ``pytest benchmarks/test_bench_encoder.py --benchmark-enable`` (float32, CPU, 2 threads). One group
per size (n_s, B) = (4096, 1024) and (65536, 256): ``clone`` of the batch, ``fwht`` (the backend the
tensor gets: the AVX2 kernel where it was built, else fht-cpu with the ``fast`` extra, else torch),
``fwht_fht_cpu`` and ``fwht_torch`` (those backends by name), ``encode``, ``decode``, ``adjoint``, ``apply``
(each with a new output), and into buffers the caller owns: ``fwht_inplace``, ``adjoint_out``,
``apply_inplace``. ``encode``, ``decode`` and ``adjoint`` contain one transform each and ``apply`` two.
Nothing is asserted about time; ``python benchmarks/encoder_cost.py [--steady]`` prints the same comparisons
as ratios, with and without the kernel in the same process.
"""

import pytest
import torch

from decoderbench import PersianRug, SparseSampler, fwht
from decoderbench.model import hadamard
from decoderbench.model.hadamard import _fwht_fht_cpu, _fwht_torch, fwht_

SIZES = {"4096x1024": (4096, 1024), "65536x256": (65536, 256)}


@pytest.fixture(scope="module", params=list(SIZES))
def case(request):
    n_s, batch = SIZES[request.param]
    x = SparseSampler(n_s, 0.01, seed=0).sample(batch)
    rug = PersianRug(n_s, n_s // 4, seed=0)
    return request.param, x, rug, rug.encode(x), x.clone()


OPS = {
    "clone": lambda x, rug, h, buf: x.clone(),
    "fwht": lambda x, rug, h, buf: fwht(x),
    "fwht_fht_cpu": lambda x, rug, h, buf: _fwht_fht_cpu(x),
    "fwht_torch": lambda x, rug, h, buf: _fwht_torch(x),
    "encode": lambda x, rug, h, buf: rug.encode(x),
    "decode": lambda x, rug, h, buf: rug.decode(h),
    "adjoint": lambda x, rug, h, buf: rug.adjoint(h),
    "apply": lambda x, rug, h, buf: rug.apply(x),
    "fwht_inplace": lambda x, rug, h, buf: fwht_(buf),
    "adjoint_out": lambda x, rug, h, buf: rug.adjoint(h, out=buf),
    "apply_inplace": lambda x, rug, h, buf: rug.apply(buf, inplace=True),
}


@pytest.mark.parametrize("op", list(OPS))
def test_rug_op(benchmark, case, op):
    name, x, rug, h, buf = case
    if op == "fwht_fht_cpu" and hadamard._fht_cpu is None:
        pytest.skip("fht-cpu (the `fast` extra) is not installed")
    benchmark.group = f"rug {name}"
    torch.set_num_threads(2)
    benchmark(OPS[op], x, rug, h, buf)
