"""The Persian Rug encoder (the default encoder)."""

from decoderbench import PersianRug, hookimpl


@hookimpl
def decoderbench_register_encoders(register):
    register(PersianRug)
