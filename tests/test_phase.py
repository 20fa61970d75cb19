"""The recovery phase diagram (decoderbench.board.phase): points pooled from rows, and the figure."""

from __future__ import annotations

import pytest

from decoderbench.board import phase


def _row(decoder, n_s, r, p, frac, n=1000, seed=0, status="ok"):
    return {"key": f"{decoder}-{n_s}-{r}-{p}-{seed}".replace(".", "_"), "decoder": decoder, "kind": "iterative",
            "encoder": "rug", "dtype": "float32", "n_s": n_s, "n_d": round(r * n_s), "p": p, "seed": seed,
            "status": status, "loss": 1e-4, "loss_se": 1e-5, "n_eval": n, "recovered_frac": frac,
            "finished_at": "2026-01-01T00:00:00+00:00", "params": {}, "decoder_version": "2"}


def test_points_pool_seeds_by_samples_and_skip_other_rows():
    rows = [_row("vamp", 1024, 0.25, 0.045, 1.0, n=100), _row("vamp", 1024, 0.25, 0.045, 0.5, n=300, seed=1),
            _row("relu", 1024, 0.25, 0.045, 0.0), _row("amp", 1024, 0.25, 0.045, 0.2, status="error"),
            {**_row("amp", 1024, 0.1, 0.045, 0.0), "recovered_frac": None}]
    pts = phase.phase_points(rows)
    assert list(pts) == ["vamp"]
    (r, f, se), = pts["vamp"][(1024, 0.045)]
    assert r == 0.25 and f == pytest.approx(0.625) and se == pytest.approx((0.625 * 0.375 / 400) ** 0.5)


def test_figure_is_drawn_with_the_threshold(tmp_path):
    rows = [_row(d, n, r, p, f) for d in ("vamp", "amp") for n in (1024, 4096) for p in (0.01, 0.045)
            for r, f in ((0.05, 0.1), (0.1, 0.5), (0.15, 0.9), (0.25, 1.0))]
    seen = []

    def threshold(p):
        seen.append(p)
        return 0.1

    path = phase.plot_phase_diagram(rows, tmp_path / "phase.png", threshold=threshold)
    assert path.exists() and path.with_suffix(".svg").exists()
    assert sorted(seen) == [0.01, 0.045]
    assert phase.plot_phase_diagram([_row("relu", 1024, 0.1, 0.01, 0.0)], tmp_path / "none.png") is None
