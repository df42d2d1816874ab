"""Jinja2 templates, sandboxed: a seed file or template must not be able to run code.

SandboxedEnvironment blocks attribute access to Python internals; StrictUndefined
turns a missing variable into an error instead of an empty string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from pipeline.errors import InputError
from pipeline.records import sha256_hex

_ROLE_LINE = re.compile(r"^### (system|user|assistant)[ \t]*$", re.M)


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


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # path relative to the templates directory, e.g. generate/easy.j2
    path: Path
    source: str
    sha: str
    _compiled: Template  # compiled once: compiling costs ~100x a render

    def render(self, context: dict[str, Any], used_for: str = "") -> str:
        """Render, turning undefined variables and sandbox violations into InputError."""
        try:
            text = self._compiled.render(**context)
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
        return text.strip()

    def render_messages(self, context: dict[str, Any], used_for: str = "") -> list[dict[str, str]]:
        return to_messages(self.render(context, used_for))


class TemplateLibrary:
    """Loads templates from one directory into one sandboxed environment."""

    def __init__(self, root: Path):
        self.root = root
        self._env = SandboxedEnvironment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, name: str, field: str, config_file: Path | None) -> PromptTemplate:
        if name in self._cache:
            return self._cache[name]
        path = self.root / name
        if not path.is_file():
            raise InputError(
                config_file, field, f"template '{name}' not found under {self.root}",
                "create the file or name an existing template",
            )
        source = path.read_text(encoding="utf-8")
        try:
            compiled = self._env.from_string(source)
        except TemplateSyntaxError as err:
            raise InputError(path, f"line {err.lineno}", f"is not a valid Jinja2 template: {err.message}",
                             "fix the template syntax") from err
        tpl = PromptTemplate(name=name, path=path, source=source, sha=sha256_hex(source)[:16],
                             _compiled=compiled)
        self._cache[name] = tpl
        return tpl
