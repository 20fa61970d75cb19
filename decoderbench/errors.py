"""The project's own error classes.

``BadInput`` is what a check raises when the user gave something that is not allowed (an argument,
a grid file, a results folder): one line naming the argument and what is allowed. The CLI turns it,
and only it, into ``error: <line>`` and exit code 2; any other exception is a bug (or a plugin's
fault) and keeps its traceback. It subclasses ``ValueError`` so that callers catching ``ValueError``
keep working.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Bad input from the user: one line that names the argument and what is allowed (CLI: exit 2)."""


class Skip(Exception):
    """A decoder declines a unit: raised from its ``__init__`` or ``fit`` with the reason (one line, naming what
    would make it run). The unit's row gets status ``skipped`` and the reason in ``error``; the sweep goes on.

    The trained models use it on the default grid: a model that cannot converge in the run's budget is not
    trained there (its row names the grid that trains it), unless a converged one is already cached.
    """
