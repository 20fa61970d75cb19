"""Declared decoder options: each decoder states its options once, as a pydantic model.

A decoder sets ``Options`` to a subclass of :class:`Options` (a ``pydantic.BaseModel`` with unknown keys
forbidden, as simonw/llm's per-model ``Options``); every field has a type, a default and a description::

    class MyDecoder(Decoder):
        class Options(db.Options):
            steps: PosInt = Field(10, description="gradient steps")

The harness checks every unit's options against the schema before a sweep starts (:func:`check`, from
``plugins.check_unit_options``), so a misspelt, unknown or ill-typed option is refused in one line
``decoder.option: message`` (exit 2 in the CLI) before anything is fitted, instead of an error row
mid-sweep; ``decoderbench plugins`` lists each decoder's options (:func:`describe`); and the decoder reads
the validated values, defaults filled in, as ``self.opts`` (set by ``Decoder.__init__``). A check that
depends on the cell (``k <= n_s``) is a pydantic validator reading ``info.context["cell"]``.

Why pydantic (not attrs/cattrs): one class gives the types, the defaults, the descriptions, the refusal of
unknown keys (``extra="forbid"``), readable messages with the failing field's name, and a JSON schema for
the listing; attrs would need cattrs for structuring plus hand-written messages and descriptions.

Decoders that declare no ``Options`` keep the older protocol (their own ``validate_options`` classmethod and
``ctx.check_options``), so third-party plugins written before it still work.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..errors import BadInput


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("must be a number, not true/false")
    return v


#: A positive integer (an integral float such as 2.0 is accepted; true/false is not).
PosInt = Annotated[int, BeforeValidator(_no_bool), Field(gt=0)]
#: A positive finite number (true/false is not one).
PosNumber = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]
#: A non-negative finite number.
NonNegNumber = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
#: A number in (0, 1] (a fraction such as a damping factor; 1 included, 0 not).
UnitFraction = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1, allow_inf_nan=False)]
#: true or false, nothing else (not 0/1, not "yes").
Flag = pydantic.StrictBool


class Options(BaseModel):
    """Base class of a decoder's declared options: unknown keys are refused, values are checked and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _message(name: str, err: pydantic.ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e.get("loc", ()) if x != "__root__")
    msg = e.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    if e.get("type") == "extra_forbidden":
        return f"{name}.{loc}: unknown option {loc!r}"
    if loc:
        return f"{name}.{loc}: {msg}, got {e.get('input')!r}"
    return msg if msg.startswith(name) else f"{name}: {msg}"  # a check across options names its decoder itself


def check(decoder_cls, options: dict | None, cell=None, name: str | None = None):
    """The validated options of ``decoder_cls`` (an ``Options`` instance), or ``None`` when it declares none.

    Bad options raise ``BadInput`` (a ValueError) with one line ``decoder.option: message``, naming the known
    options when the key is unknown."""
    schema = getattr(decoder_cls, "Options", None)
    if schema is None:
        return None
    name = name or getattr(decoder_cls, "name", "") or decoder_cls.__name__
    if not isinstance(options, dict):
        raise BadInput(f"{name}: options must be a table of option = value, got {options!r}")
    try:
        return schema.model_validate(options, context={"cell": cell})
    except pydantic.ValidationError as err:
        line = _message(name, err)
        if err.errors()[0].get("type") == "extra_forbidden":
            line += f"; {name} takes: {', '.join(schema.model_fields) or '(no options)'}"
        raise BadInput(line) from None


def describe(decoder_cls) -> list[dict]:
    """``[{name, type, default, description}]`` of a decoder's declared options (empty when it declares none)."""
    schema = getattr(decoder_cls, "Options", None)
    if schema is None:
        return []
    out = []
    for key, f in schema.model_fields.items():
        ann = f.annotation
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        for meta in getattr(f, "metadata", ()):
            if getattr(meta, "gt", None) is not None:
                tname += f" > {meta.gt}"
            if getattr(meta, "ge", None) is not None:
                tname += f" >= {meta.ge}"
        out.append({"name": key, "type": tname, "default": f.default if f.default is not pydantic.fields.PydanticUndefined
                    else None, "description": f.description or ""})
    return out


def describe_text(decoder_cls) -> str:
    """One line: ``name=default, ...`` (names alone when that is long; ``-`` when none are declared; ``?`` for a
    decoder that declares no schema)."""
    if getattr(decoder_cls, "Options", None) is None:
        return "?"
    items = describe(decoder_cls)
    full = ", ".join(f"{o['name']}={o['default']!r}" for o in items)
    return (full if len(full) <= 60 else ", ".join(o["name"] for o in items)) or "-"
