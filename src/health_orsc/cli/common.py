"""What every command shares: the console, the common options, printing a typed result as
JSON, the Prefect environment, and running model calls outside a flow."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import Console

from health_orsc.cache.database import connect_postgres
from health_orsc.core.config import DATA_DIR, DEFAULT_CONFIG, BuildConfig
from health_orsc.core.errors import RERUN_WITH_ROOM, InputError, Resumable, disk_full

T = TypeVar("T")


DEFAULT_GOLD = DATA_DIR / "gold" / "jury.csv"
DEFAULT_ANSWERS = DATA_DIR / "gold" / "answers.csv"
DEFAULT_RUBRIC_ANSWERS = DATA_DIR / "gold" / "rubric_answers.csv"

# Prompts may contain [brackets]: no markup. Piped output gets room for the table.
console = Console(markup=False, highlight=False)
if not console.is_terminal:
    console.width = 120


class CommandFailed(Exception):
    """A command that started work and failed: one message for the terminal, details in
    the log; `resumable` when the caches hold what was done."""

    def __init__(self, message: str, log_path: Path, resumable: bool):
        super().__init__(message)
        self.log_path = log_path
        self.resumable = resumable


def describe_failure(err: BaseException) -> tuple[str, bool]:
    """An exception as one line for the terminal, and whether running the same command
    again resumes from the caches (a Resumable failure is its own message; anything else
    is named by its type)."""
    if isinstance(err, Resumable):
        return str(err), True
    if disk_full(err):
        return f"the disk is full ({type(err).__name__}: {err}); {RERUN_WITH_ROOM}", True
    return f"{type(err).__name__}: {err}", False


def run_logged(what: str, log_path: Path, run: Callable[[], T]) -> T:
    """`run()` (a flow, in this process): bad input stays bad input; any other failure is
    logged with its traceback and becomes one CommandFailed naming `log_path`."""
    try:
        return run()
    except InputError:
        raise
    except Exception as err:
        logging.getLogger("orsc").error("%s failed", what, exc_info=True)
        message, resumable = describe_failure(err)
        raise CommandFailed(message, log_path, resumable) from err


def add_config(p: argparse.ArgumentParser, help: str = "config YAML (default: the packaged default config)"
               ) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help=help)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (its model: see --help)")


def emit(args: argparse.Namespace, result: BaseModel, render: Callable[[Any], None]) -> None:
    """The result as JSON with --json, else as `render` shows it."""
    if getattr(args, "json", False):
        print(result.model_dump_json(indent=2))
    else:
        render(result)


def comma_list(value: str | None, option: str, what: str) -> list[str] | None:
    """A comma-separated option as a list (None when not given); one that names nothing is
    bad input."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InputError(None, option, f"{value!r} names no {what}",
                         f"pass comma-separated {what} names, or leave {option} out")
    return items


def prefect_env(outputs_dir: Path, own_home: bool = True) -> None:
    """Keep Prefect quiet and offline unless the user configured it. An in-process build
    keeps Prefect's state (ephemeral DB, task cache) under outputs/ unless PREFECT_HOME
    or PREFECT_API_URL is set; `orsc serve` uses the user's Prefect settings as they are."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK telemetry: offline means offline
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if own_home and "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        home = outputs_dir / "prefect" / "home"
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home)


def check_cache_reachable(config: BuildConfig) -> None:
    """An unreachable cache.url: exit 2 before Prefect starts or any model is called."""
    if config.cache.url is not None:
        connect_postgres(config.cache, config.source).close()


def model_calls(config: BuildConfig, stage: str, what: str, expected: int,
                job: Callable[[Any], Any]) -> tuple[Any, int, int]:
    """Run `job(gateway)` (a coroutine's maker) on a gateway of its own, outside a flow:
    progress on stderr, the log in outputs/logs/<stage>.log. Returns (its result, model
    calls made, request-cache hits)."""
    from health_orsc.llm import Gateway, Usage
    from health_orsc.runtime.progress import tracked
    from health_orsc.runtime.terminal import build_console

    with build_console(config.outputs_dir / "logs" / f"{stage}.log"):
        gateway = Gateway(config)
        try:
            with tracked(stage, what) as progress:
                usage = Usage(progress=progress)
                usage.expect(expected)
                result = gateway.run(job(gateway), usage)
        finally:
            gateway.close()
    return result, sum(usage.calls.values()), sum(usage.cache_hits.values())


def verified(path: Path, purpose: str) -> str:
    """The digest of a snapshot (or evaluation run) that passes verify; InputError otherwise."""
    from health_orsc.audit.verify import require_verified

    return require_verified(path, purpose).digest


def command(sub, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str,
            example: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line help, a description and an example in its --help."""
    p = sub.add_parser(name, help=help, description=description, epilog=f"example:\n  {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p
