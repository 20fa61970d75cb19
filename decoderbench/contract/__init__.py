"""Stage 2, the contract: what a plugin implements and what the harness hands it.

The ``Decoder`` base class, ``DecoderContext`` and ``TrainingSet`` (:mod:`.decoder`); declared options
(:mod:`.options`); the pluggy hook specifications (:mod:`.hookspecs`) and the registry that loads built-in and
third-party plugins (:mod:`.registry`); any activation as a decoder (:mod:`.activation`). Imports the model
below it; the registry reaches up to the run stage only to start the worker that describes third-party entry
points (a listed back edge in tests/test_layers.py).
"""
