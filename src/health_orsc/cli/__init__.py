"""cli: the `orsc` command (and `python -m health_orsc`): one module per command group
(project, build, evaluate, validate, audit, cache), the options they share (common), one
renderer per result (render) and one error handler (app)."""

from health_orsc.cli.app import main

__all__ = ["main"]
