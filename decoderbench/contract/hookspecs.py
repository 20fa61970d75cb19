"""The hooks a decoderbench plugin may implement.

Collection hooks take a ``register`` callback (the style of simonw/llm), so one plugin module can
offer several things. Built-in plugins (the top-level ``plugins/`` folder, importable as
``decoderbench_plugins``) use exactly these hooks through the same entry-point group,
``decoderbench``, as third-party ones.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("decoderbench")


@hookspec
def decoderbench_register_decoders(register):
    """Register decoders: call ``register(DecoderSubclass)`` once per decoder class.

    The class must subclass ``decoderbench.Decoder`` with a unique ``name`` and a ``kind``; a
    duplicate name or a malformed class is refused and reported, the others still load.
    """


@hookspec
def decoderbench_register_encoders(register):
    """Register encoders: call ``register(EncoderSubclass)`` once per encoder class.

    The class subclasses ``decoderbench.Encoder`` with a unique ``name`` and ``capabilities``, and is
    built as ``cls(n_s, n_d, seed=..., device=..., dtype=...)``. The Persian Rug is the built-in
    ``rug``, the default encoder.
    """


@hookspec
def decoderbench_register_commands(register):
    """Register command-line sub-commands: call ``register(click_command)`` once per ``click.Command``.

    They appear beside the built-in ones (``decoderbench <name>``); a name that is already taken, or
    something that is not a click command, is refused and reported, the others still load. The
    trained plugin registers ``trained-board`` this way.
    """


@hookspec
def decoderbench_register_grids(register):
    """Register grids: call ``register(name, source)`` once per grid, ``source`` its TOML file (a path, or an
    ``importlib.resources`` file of the plugin's package).

    ``--grid NAME`` then loads it as it loads a built-in grid (``decoderbench.run.grids.load_grid``), and
    ``grids.builtin_grids()`` lists it. The harness's own grids (``decoderbench/run/grids/*.toml``) keep their
    names: a plugin grid of a taken name is refused and reported, the plugin's others still load. The trained
    plugin registers ``trained`` this way.
    """
