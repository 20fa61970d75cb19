"""The memory check before a sweep: the estimate against measured peaks, the refusal line, the CLI's exit 2."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from decoderbench.run import memcheck
from decoderbench.cli import main
from decoderbench.errors import BadInput


@pytest.mark.parametrize("e", range(1, 31))
def test_fit_pairs_is_the_builtin_fits_rule(e):
    from decoderbench_plugins import _fit

    n_s = 2**e
    ctx = SimpleNamespace(n_s=n_s, options={})
    assert memcheck.fit_pairs(n_s) == _fit.n_fit_samples(ctx) * n_s
    assert (memcheck._FIT_DEFAULT_PAIRS, memcheck._FIT_MIN_SAMPLES, memcheck._FIT_MAX_PAIRS) == (
        _fit.DEFAULT_PAIRS, _fit.MIN_SAMPLES, _fit.MAX_PAIRS)


def test_estimate_matches_the_measured_peaks():
    """The model (without its margin) within 10% of every peak RSS it was fitted to, and the margin above."""
    for n_s, peak in memcheck.MEASURED.items():
        est = memcheck.need_bytes(n_s)["host"]
        assert abs(est - peak) <= 0.10 * peak, (n_s, est / 2**20, peak / 2**20)
        assert memcheck.MARGIN * est >= peak
    # grows with n_s, and doubles the batch term in float64
    needs = [memcheck.need_bytes(2**e)["host"] for e in range(10, 31)]
    assert all(b >= a for a, b in zip(needs, needs[1:]))
    assert memcheck.need_bytes(2**24, "float64")["host"] > memcheck.need_bytes(2**24)["host"]


def test_refusal_names_ns_need_and_found():
    with pytest.raises(BadInput) as exc:
        memcheck.check_cell(2**20, ram=512 * 2**20)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("n_s = 1048576 needs about ") and "found 512 MB available" in msg
    ok = memcheck.check_cell(2**20, ram=64 * 2**30)
    assert ok["host_need"] < 4 * 2**30  # the 2^20 cell fits in 4 GB with the margin
    # more workers, more RAM
    with pytest.raises(BadInput, match=r"\(8 workers\)"):
        memcheck.check_cell(2**20, workers=8, ram=4 * 2**30)
    # CUDA: the batch on the device, the fits on the host
    with pytest.raises(BadInput, match="n_s = 1073741824 needs about .* of cuda memory, found 1.00 GB free"):
        memcheck.check_cell(2**30, device="cuda", ram=math.inf, device_free=2**30)


def test_available_ram_is_positive():
    ram = memcheck.available_ram()
    assert ram > 0


def test_units_largest_decides_and_switch_off(monkeypatch):
    units = [SimpleNamespace(n_s=2**e, dtype="float32", device="cpu") for e in (10, 30, 12)]
    with pytest.raises(BadInput, match="n_s = 1073741824"):
        memcheck.check_units(units)
    monkeypatch.setenv("DECODERBENCH_MEMORY_CHECK", "0")
    assert memcheck.check_units(units) is None
    monkeypatch.delenv("DECODERBENCH_MEMORY_CHECK")
    assert memcheck.check_units(units[:1])["n_s"] == 1024


def test_cli_refuses_a_cell_too_large_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--plugins", "relu", "--ns", str(2**30), "--r", "0.01", "--p", "0.001", "--out", "res",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: n_s = 1073741824 needs about "), err
    assert "GB available" in lines[0] or "MB available" in lines[0]
    assert not (tmp_path / "res").exists()  # nothing ran, no store
