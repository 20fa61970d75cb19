"""Speed of one training step of the `trained` plugin (Adam, batch 1024, r = 1/4), fp32 against bf16 autocast.

Run: ``pytest benchmarks/test_bench_trained.py --benchmark-enable`` (10 steps per round). On this project's
2-core AVX2 CPU (no native bf16) bf16 autocast was always slower than fp32: 1.4-2x here with 2 threads
(10 steps, n_s = 256: 4.2 vs 2.1 s; n_s = 512: 7.2 vs 5.0 s, on a heavily loaded machine) and 7-9x in a
one-thread check (n_s = 256: 48 vs 5.2 ms; n_s = 512: 214 vs 29 ms per step), which is why it is off by
default on the CPU. Nothing is asserted about time.
"""

import math

import pytest
import torch

from decoderbench.model.data import SparseSampler
from decoderbench_plugins.trained import Settings, _Trainer


@pytest.mark.parametrize("autocast", ["none", "bf16"])
@pytest.mark.parametrize("n_s", [256, 512])
def test_train_step(benchmark, n_s, autocast):
    settings = Settings(lr=3e-3 / math.sqrt(n_s), autocast=autocast)
    trainer = _Trainer(n_s, n_s // 4, 0.045, settings, torch.device("cpu"), torch.float32,
                       torch.Generator().manual_seed(0))
    sampler = SparseSampler(n_s, 0.045, 0, "bench")

    def sample(b):
        x = sampler.sample(b)
        return x, x

    def ten_steps():
        for prm in trainer.params:
            prm.requires_grad_(True)
        trainer.train(sample, trainer.step + 10, None)

    benchmark.group = f"train-step n_s={n_s}"
    benchmark.pedantic(ten_steps, rounds=3, warmup_rounds=1)
