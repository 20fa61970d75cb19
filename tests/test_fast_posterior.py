"""The fast float32 posterior changes no decoder's loss by more than a tenth of its standard error.

Each decoder that calls the denoiser (oracle, amp, vamp) is scored twice on the same samples (same
unit, same seed): once with the fast path and once with it switched off (every entry through the
float64 reference). Cells: a VAMP stall cell (loss near the elementwise MMSE) and AMP's regime on the
Gaussian encoder.
"""

from __future__ import annotations

import pytest

from decoderbench.model import channel
from decoderbench.run.runner import WorkUnit, run_unit

CASES = [
    ("oracle", "rug", 1024, 102, 0.05),
    ("vamp", "rug", 1024, 102, 0.05),
    ("amp", "gaussian", 1024, 204, 0.1),
]


@pytest.mark.parametrize("decoder,encoder,n_s,n_d,p", CASES, ids=[c[0] for c in CASES])
def test_fast_posterior_moves_no_loss_by_a_tenth_of_its_se(monkeypatch, decoder, encoder, n_s, n_d, p):
    unit = WorkUnit(n_s=n_s, n_d=n_d, p=p, decoder=decoder, encoder=encoder, seed=0,
                    min_samples=128, max_samples=128)
    fast = run_unit(unit)
    monkeypatch.setattr(channel, "_fast_moments", lambda *a, **k: None)
    ref = run_unit(unit)
    assert fast["status"] == ref["status"] == "ok", (fast["error"], ref["error"])
    assert fast["n_eval"] == ref["n_eval"]
    assert abs(fast["loss"] - ref["loss"]) <= 0.1 * ref["loss_se"], (fast["loss"], ref["loss"], ref["loss_se"])
