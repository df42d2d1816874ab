"""Errors the user can fix: each one names the file, the field and what to do."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class InputError(Exception):
    """Bad input: config, taxonomy, seeds, templates, CLI arguments. Exit code 2."""

    def __init__(self, file: str | Path | None, field: str | None, problem: str, fix: str):
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, f"field '{self.field}'" if self.field else None) if p)
        head = f"{where}: {self.problem}" if where else self.problem
        return f"{head}\n  fix: {self.fix}"


def from_validation_error(file: str | Path, err: ValidationError, prefix: str = "") -> InputError:
    """Turn pydantic's first error into one InputError naming the field's dotted path."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
    kind = first["type"]
    if kind == "missing":
        problem, fix = "is missing", f"add '{field}' to {Path(file).name}"
    elif kind == "extra_forbidden":
        problem, fix = "is not a known field", f"remove '{field}' or check its spelling"
    else:
        given = first.get("input")
        problem = f"{first['msg']} (got {given!r})"
        fix = f"correct '{field}' in {Path(file).name}"
    return InputError(file, field, problem, fix)
