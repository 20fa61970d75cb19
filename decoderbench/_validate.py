"""Argument checks shared by the Python API and the CLI.

Every check raises ``ValueError`` with one line that names the argument and what is allowed;
the CLI turns that line into ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import math

from .errors import BadInput

MAX_LOG2_NS = 30
#: The evaluation's floating-point types, by name (``runner.DTYPES`` maps them to torch's).
DTYPE_NAMES = ("float32", "float64")
#: How many evaluation samples a row draws when nothing says otherwise (a grid without ``[sampling]``, an
#: ad-hoc cell, a ``runner.WorkUnit`` built by hand): until the standard error is 1% of the loss, between
#: 2048 and 131072 samples.
SAMPLING_DEFAULTS = {"target_rel_se": 0.01, "min_samples": 2048, "max_samples": 131072}
#: The absolute SE floor, as a fraction of the trivial loss p/3 (``scoring.SE_FLOOR``; a unit's ``se_floor``).
SE_FLOOR = 1e-3


def _finite(name: str, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(f):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    return f


def check_ns(n_s) -> int:
    """n_s: a power of two, 2 <= n_s <= 2**30."""
    f = _finite("n_s", n_s)
    if f != int(f) or int(f) < 2 or (int(f) & (int(f) - 1)) != 0 or int(f) > 2**MAX_LOG2_NS:
        raise BadInput(f"n_s must be a power of two between 2 and 2**{MAX_LOG2_NS}, got {n_s!r}")
    return int(f)


def check_nd(n_d, n_s: int) -> int:
    """n_d: an integer in 1..n_s-1."""
    f = _finite("n_d", n_d)
    if f != int(f) or not 1 <= int(f) <= n_s - 1:
        raise BadInput(f"n_d must be an integer in 1..n_s-1 = 1..{n_s - 1}, got {n_d!r}")
    return int(f)


def check_r(r) -> float:
    """r = n_d / n_s: strictly between 0 and 1."""
    f = _finite("r", r)
    if not 0.0 < f < 1.0:
        raise BadInput(f"r must be in the open interval (0, 1), got {r!r}")
    return f


def check_p(p) -> float:
    """p: the probability that a feature is on, in (0, 1]."""
    f = _finite("p", p)
    if not 0.0 < f <= 1.0:
        raise BadInput(f"p must be in (0, 1], got {p!r}")
    return f


def check_sigma(sigma) -> float:
    """sigma: a noise standard deviation, > 0."""
    f = _finite("sigma", sigma)
    if not f > 0.0:
        raise BadInput(f"sigma must be > 0, got {sigma!r}")
    return f


#: Seeds and sample counts are stored as int64: larger values are refused when parsed, not after the run.
MAX_SEED = 2**63 - 1
MAX_SAMPLES = 2**40


def check_seed(seed) -> int:
    f = _finite("seed", seed)
    if isinstance(seed, int) and not isinstance(seed, bool):
        f = seed  # exact, whatever its size
    if f != int(f) or not 0 <= int(f) <= MAX_SEED:
        raise BadInput(f"seed must be an integer in 0..2^63-1, got {seed!r}")
    return int(f)


def nd_from_r(n_s: int, r) -> int:
    """n_d = round(r n_s), checked to lie in 1..n_s-1."""
    r = check_r(r)
    n_d = int(round(r * n_s))
    if not 1 <= n_d <= n_s - 1:
        raise BadInput(f"r must give n_d = round(r n_s) in 1..{n_s - 1} at n_s = {n_s}, got r = {r!r}")
    return n_d


def nominal_r(n_s: int, n_d: int) -> float:
    """The r a cell was asked for: the shortest decimal r (at most 6 significant digits) whose
    ``round(r n_s)`` is ``n_d`` (so ``r = 0.1`` at ``n_s = 4096``, ``n_d = 410``, not 0.1000977); rows store it
    as ``r`` beside the exact ``r_exact = n_d / n_s``, so that ``df[df.r == 0.1]`` finds the cells of r = 0.1."""
    exact = n_d / n_s
    for digits in range(1, 7):
        r = float(f"{exact:.{digits}g}")
        if int(round(r * n_s)) == n_d:
            return r
    return exact
