"""Jinja2 templates, sandboxed: a seed file or template must not be able to run code,
read files outside the templates directory, or exhaust memory.

SandboxedEnvironment blocks attribute access to Python internals; StrictUndefined
turns a missing variable into an error instead of an empty string. On top of that,
`LimitedEnvironment` bounds what one render may build: no value or output longer
than MAX_TEXT_CHARS (`{{ 'a' * 10**13 }}` is refused before it is computed), and at
most MAX_RANGE_ITEMS items from `range()` per render.
"""

from __future__ import annotations

import contextvars
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, safe_range

from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import inside, read_text
from health_orsc.core.records import sha256_hex

_ROLE_LINE = re.compile(r"^### (system|user|assistant)[ \t]*$", re.M)
MAX_TEXT_CHARS = 100_000      # longest value or rendered text a template may produce
MAX_RANGE_ITEMS = 100_000     # range() items per render, all loops together
_MAX_POW_BITS = 4_096         # largest integer `**` may produce
_BIG_WIDTH = re.compile(r"\d{6,}")  # a width or precision of 100,000+ in a format string
_range_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_budget")


class RenderLimitError(SecurityError):
    """A template tried to build something larger than the render limits allow."""


def to_messages(text: str) -> list[dict[str, str]]:
    """Split rendered text into chat messages at `### system|user|assistant` lines.

    Text without such lines is one user message. This lets a template carry a
    system prompt and few-shot turns, which small models need.
    """
    parts = _ROLE_LINE.split(text)
    if len(parts) == 1:
        return [{"role": "user", "content": text.strip()}]
    return [{"role": role, "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2], strict=True)]


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def _check_numbers(args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TEXT_CHARS:
            raise RenderLimitError(f"the number {shorten(str(value), 40)} is above the limit of"
                                   f" {MAX_TEXT_CHARS:,} for widths, lengths and counts")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _BIG_WIDTH.search(fmt):
        raise RenderLimitError(f"a format width or precision above {MAX_TEXT_CHARS:,}")


def _check_result(value: Any) -> Any:
    size = _size(value)
    if size is not None and size > MAX_TEXT_CHARS:
        raise RenderLimitError(f"a value of {size:,} items or characters (limit {MAX_TEXT_CHARS:,})")
    return value


def _check_replace(text: Any, old: Any, new: Any) -> None:
    """str.replace grows its input by (occurrences x growth): refuse before computing it."""
    if isinstance(text, str):
        old, new = str(old), str(new)
        occurrences = text.count(old) if old else len(text) + 1
        if len(text) + occurrences * (len(new) - len(old)) > MAX_TEXT_CHARS:
            raise RenderLimitError(f"a replace() result above {MAX_TEXT_CHARS:,} characters")


def _limited_filter(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _check_numbers(args, kwargs)
        plain = [a for a in args if not hasattr(a, "environment")]  # without a passed env/context
        if name == "format" and plain:
            _check_format(plain[0])
        if name == "replace" and len(plain) >= 3:
            _check_replace(*plain[:3])
        return _check_result(fn(*args, **kwargs))
    return wrapper


def _limited_range(*args: int) -> range:
    rng = safe_range(*args)
    budget = _range_budget.get(None)
    if budget is not None:
        budget[0] -= len(rng)
        if budget[0] < 0:
            raise RenderLimitError(f"loops over more than {MAX_RANGE_ITEMS:,} range() items in one render")
    return rng


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox, plus bounds on the size of what a template can build."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.globals["range"] = _limited_range
        self.filters = {name: _limited_filter(name, fn) for name, fn in self.filters.items()}

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(n, int) and size * n > MAX_TEXT_CHARS:
                    raise RenderLimitError(f"repeating {size:,} characters or items {shorten(str(n), 40)}"
                                           f" times is above the limit of {MAX_TEXT_CHARS:,}")
        elif op == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * math.log2(abs(left)) > _MAX_POW_BITS:
                raise RenderLimitError(f"{left} ** {right} is too large a number")
        elif op == "%":
            _check_format(left)
        return _check_result(self.binop_table[op](left, right))

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_numbers(args, kwargs)
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        if isinstance(getattr(target, "__self__", None), str):
            if target.__name__ in ("format", "format_map"):
                _check_format(target.__self__)
            if target.__name__ == "replace" and len(args) >= 2:
                _check_replace(target.__self__, *args[:2])
        return _check_result(super().call(__context, __obj, *args, **kwargs))


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # path relative to the templates directory, e.g. generate/easy.j2
    path: Path
    source: str
    sha: str
    _compiled: Template  # compiled once: compiling costs ~100x a render

    def render(self, context: dict[str, Any], used_for: str = "") -> str:
        """Render, turning undefined variables, sandbox violations and render limits into
        InputError. The output is streamed and cut off at MAX_TEXT_CHARS."""
        token = _range_budget.set([MAX_RANGE_ITEMS])
        try:
            parts, size = [], 0
            for part in self._compiled.generate(**context):
                size += len(part)
                if size > MAX_TEXT_CHARS:
                    raise RenderLimitError(f"renders more than {MAX_TEXT_CHARS:,} characters")
                parts.append(part)
            text = "".join(parts)
        except RenderLimitError as err:
            raise InputError(self.path, None, f"exceeds a render limit: {err}{used_for}",
                             "make the template build shorter text; templates render a prompt,"
                             " not bulk data") from err
        except UndefinedError as err:
            raise InputError(
                self.path, None, f"uses an undefined variable: {err.message}{used_for}",
                f"use only the variables available here: {sorted(context)}",
            ) from err
        except SecurityError as err:
            raise InputError(
                self.path, None, f"tries to reach Python internals, which the sandbox forbids ({err})",
                "remove the attribute access; templates may only use the variables they are given",
            ) from err
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as err:
            raise InputError(self.path, None, f"failed to render: {type(err).__name__}: {err}{used_for}",
                             "fix the template") from err
        finally:
            _range_budget.reset(token)
        return text.strip()

    @functools.cached_property
    def variables(self) -> frozenset[str] | None:
        """The context variables a render reads, or None when its source alone cannot tell
        (it includes, imports or extends another template) or a render may differ from the
        last with the same context (the `random` filter, `lipsum`)."""
        ast = self._compiled.environment.parse(self.source)
        if (next(meta.find_referenced_templates(ast), None) is not None
                or any(f.name == "random" for f in ast.find_all(nodes.Filter))
                or any(n.name == "lipsum" for n in ast.find_all(nodes.Name))):
            return None
        return frozenset(meta.find_undeclared_variables(ast))

    def render_messages(self, context: dict[str, Any], used_for: str = "") -> list[dict[str, str]]:
        return to_messages(self.render(context, used_for))


class TemplateLibrary:
    """Loads templates from one directory into one sandboxed environment. A name may
    not leave the directory: `../` and absolute names are refused, and `{% include %}`
    resolves inside it too (Jinja's loader refuses `..`)."""

    def __init__(self, root: Path):
        self.root = root
        self._env = LimitedEnvironment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, rel: Path, field: str, config_file: Path | None) -> PromptTemplate:
        """The template at `rel` under the root (`Path("judges", name)`: an absolute
        `name` replaces the whole path, and is refused as outside the root)."""
        name = rel.as_posix()
        if name in self._cache:
            return self._cache[name]
        path = inside(self.root, rel, field, config_file)
        if not path.is_file():
            raise InputError(
                config_file, field, f"template '{shorten(name, 200)}' not found under {self.root}",
                "create the file or name an existing template",
            )
        source = read_text(path, "template")
        try:
            compiled = self._env.from_string(source)
        except TemplateSyntaxError as err:
            raise InputError(path, f"line {err.lineno}", f"is not a valid Jinja2 template: {err.message}",
                             "fix the template syntax") from err
        tpl = PromptTemplate(name=name, path=path, source=source, sha=sha256_hex(source)[:16],
                             _compiled=compiled)
        self._cache[name] = tpl
        return tpl
