"""decoderbench: a benchmark for sparse decoders on the Persian Rug toy model of superposition.

Public API: ``fwht``, ``PersianRug``, ``Encoder``, ``SparseSampler``, ``Decoder``, ``DecoderContext``,
``TrainingSet``, ``Cell``, ``hookimpl``, ``cell_theory``, ``conditional_moments``, ``WorkUnit``,
``run_unit``, ``Skip`` (a decoder declines a unit, with its reason), ``BadInput``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .hadamard import fwht  # noqa: E402
from .data import SparseSampler, derive_seed  # noqa: E402
from .encoders import Encoder, PersianRug  # noqa: E402
from .decoder import Cell, Decoder, DecoderContext, TrainingSet, KINDS  # noqa: E402
from .plugins import hookimpl  # noqa: E402
from .errors import BadInput, Skip  # noqa: E402


def __getattr__(name):  # lazy: theory pulls in scipy
    if name == "cell_theory":
        from .theory import cell_theory

        return cell_theory
    if name in ("conditional_moments", "conditional_mean"):
        from . import channel

        return getattr(channel, name)
    if name in ("WorkUnit", "run_unit"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'decoderbench' has no attribute {name!r}")


__all__ = ["__version__", "fwht", "SparseSampler", "derive_seed", "Encoder", "PersianRug", "Cell", "Decoder",
           "DecoderContext", "TrainingSet", "KINDS", "hookimpl", "cell_theory", "conditional_moments",
           "conditional_mean", "WorkUnit", "run_unit", "BadInput", "Skip"]
