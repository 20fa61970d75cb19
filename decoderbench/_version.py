"""The package version: its one home (the stages import it from here, not from the package root)."""

__version__ = "0.1.0"
