"""The checks of cell parameters, seeds and sample counts, for plugins and scripts (one line naming the
argument and what is allowed, as :class:`decoderbench.BadInput`)."""

from ._validate import MAX_SAMPLES, check_nd, check_ns, check_p, check_seed, nd_from_r, nominal_r

__all__ = ["MAX_SAMPLES", "check_nd", "check_ns", "check_p", "check_seed", "nd_from_r", "nominal_r"]
