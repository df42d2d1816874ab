"""cli: the `orsc` command (and `python -m health_orsc`)."""

from health_orsc.cli.main import main

__all__ = ["main"]
