"""decoderbench: a benchmark for sparse decoders on the Persian Rug toy model of superposition.

From a notebook (``decoderbench.api``)::

    import decoderbench as db
    df = db.evaluate(["relu", "vamp", MyDecoder, torch.nn.functional.gelu], n_s=4096, r=0.25, p=0.045)
    print(db.Board(df).markdown())

``evaluate``, ``theory``, ``load_results``, ``verify``, ``Board``, ``resolve`` (the API, loaded on first use),
``activation_decoder``, ``Options`` (a decoder's declared options); the plugin contract ``Decoder``,
``DecoderContext``, ``TrainingSet``, ``Cell``, ``Encoder``, ``PersianRug``, ``hookimpl``; and ``fwht``, ``SparseSampler``, ``cell_theory``,
``conditional_moments``, ``WorkUnit``, ``run_unit``, ``Skip`` (a decoder declines a unit, with
its reason), ``BadInput``.
"""

from __future__ import annotations

from ._version import __version__  # noqa: E402,F401

from .model.hadamard import fwht  # noqa: E402
from .model.data import SparseSampler, derive_seed  # noqa: E402
from .model.encoders import Encoder, PersianRug  # noqa: E402
from .contract.decoder import Cell, Decoder, DecoderContext, TrainingSet, KINDS  # noqa: E402
from .contract.registry import hookimpl  # noqa: E402
from .errors import BadInput, Skip  # noqa: E402
from . import _compat  # noqa: E402

_compat.install()  # the flat names of 0.1 (decoderbench.store, ...) stay importable, as aliases


def __getattr__(name):  # lazy: theory pulls in scipy
    if name == "cell_theory":
        from .model.theory import cell_theory

        return cell_theory
    if name in ("conditional_moments", "conditional_mean"):
        from .model import channel

        return getattr(channel, name)
    if name in ("evaluate", "load_results", "verify", "Board", "resolve"):
        from . import api

        return getattr(api, name)
    if name == "theory":  # the submodule, callable as the API's theory(n_s, r=, p=)
        import importlib

        return importlib.import_module(".model.theory", __name__)
    if name == "Options":
        from .contract.options import Options

        return Options
    if name == "activation_decoder":
        from .contract.activation import activation_decoder

        return activation_decoder
    if name in ("WorkUnit", "run_unit"):
        from .run import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'decoderbench' has no attribute {name!r}")


__all__ = ["__version__", "fwht", "SparseSampler", "derive_seed", "Encoder", "PersianRug", "Cell", "Decoder",
           "DecoderContext", "TrainingSet", "KINDS", "hookimpl", "cell_theory", "conditional_moments",
           "conditional_mean", "WorkUnit", "run_unit", "BadInput", "Skip", "evaluate", "theory", "load_results",
           "verify", "Board", "resolve", "activation_decoder", "Options"]
