"""mkdocs hook: the CLI reference and the config reference are generated at build time from
the code (the argparse parser and the pydantic config models), so they cannot go stale.
A page asks for one with a line `<!-- generated: cli -->` or `<!-- generated: config -->`."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic import BaseModel


def _cli() -> str:
    from health_orsc.cli.app import parser

    out = []

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        if name != "orsc" and not subs:
            out.append(f"## `{name}`\n\n```text\n{p.format_help().rstrip()}\n```\n")
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}")

    top = parser()
    out.append(f"```text\n{top.format_help().rstrip()}\n```\n")
    walk(top, "orsc")
    return "\n".join(out)


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    text = text or str(annotation)
    for prefix in ("typing.", "pathlib.", "health_orsc.core.config."):
        text = text.replace(prefix, "")
    return text.replace("|", "\\|")  # a table cell


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return f"see `{type(value).__name__}`"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{value!r}`".replace("|", "\\|")


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every config model its fields hold, in the order they appear."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for arg in (field.annotation, *typing.get_args(field.annotation)):
                for inner in (arg, *typing.get_args(arg)):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        visit(inner)

    visit(root)
    return seen


def _config() -> str:
    from health_orsc.core.config import BuildConfig

    out = []
    for model in _models(BuildConfig):
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append(f"## `{model.__name__}`\n\n{doc}\n\n| field | type | default |\n|---|---|---|")
        for name, field in model.model_fields.items():
            if field.exclude:
                continue  # set by load_config, not by the file
            out.append(f"| `{name}` | `{_type(field.annotation)}` | {_default(field)} |")
        out.append("")
    return "\n".join(out)


GENERATED = {"<!-- generated: cli -->": _cli, "<!-- generated: config -->": _config}


def on_page_markdown(markdown: str, **kwargs) -> str:
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
