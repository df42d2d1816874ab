"""Errors the user can fix: each one names the file, the field and what to do."""

from __future__ import annotations

import errno
import reprlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

# A message quotes what it refuses, but never more than a line of it: a 10 MB seed
# list or a YAML alias bomb must not become 10 MB of stderr.
_SHORT = reprlib.Repr()  # (Python 3.11's Repr takes no keyword arguments)
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 120, 120, 40
MESSAGE_MAX_CHARS = 2_000


def short_repr(value: Any) -> str:
    """repr() cut to a readable length, without building the whole repr first."""
    return _SHORT.repr(value)


def shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class Resumable(RuntimeError):
    """A failure after which running the same command again resumes from what the caches
    hold: an endpoint that failed for good, the embedded model server, the cache database.
    Exit code 1, with a message that says so."""


RERUN_WITH_ROOM = "free space and run the same command again: what the caches hold is not asked again"


class DiskFull(Resumable):
    """The disk filled while writing: what was being written is removed, what the caches
    committed stays."""


def disk_full(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is a full disk or an exhausted quota."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(err):  # SQLite's way of saying it
            return True
        err = err.__cause__ or err.__context__
    return False


class InputError(Exception):
    """Bad input: config, taxonomy, seeds, templates, CLI arguments. Exit code 2."""

    def __init__(self, file: str | Path | None, field: str | None, problem: str, fix: str):
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = shorten(problem, MESSAGE_MAX_CHARS)
        self.fix = shorten(fix, MESSAGE_MAX_CHARS)
        super().__init__(str(self))

    def __str__(self) -> str:
        field = f"field '{shorten(self.field, 200)}'" if self.field else None
        where = ": ".join(p for p in (self.file, field) if p)
        head = f"{where}: {self.problem}" if where else self.problem
        return f"{head}\n  fix: {self.fix}"


def from_validation_error(file: str | Path, err: ValidationError, prefix: str = "",
                          fix: str | None = None) -> InputError:
    """Turn pydantic's first error into one InputError naming the field's dotted path."""
    first = err.errors(include_url=False, include_context=False, include_input=True)[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
    kind = first["type"]
    if kind == "missing":
        problem, default_fix = "is missing", f"add '{field}' to {Path(file).name}"
    elif kind == "extra_forbidden":
        problem, default_fix = "is not a known field", f"remove '{field}' or check its spelling"
    else:
        problem = f"{shorten(first['msg'])} (got {short_repr(first.get('input'))})"
        default_fix = f"correct '{field}' in {Path(file).name}"
    return InputError(file, field, problem, fix or default_fix)
