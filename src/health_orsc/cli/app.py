"""`orsc`: build, validate, evaluate and audit benchmark snapshots.

One parser (a module per command group registers its commands) and one error handler for
every command. Exit codes: 0 success; 1 the work failed (a snapshot failed verification, a
build or evaluation stopped, or anything unexpected: one message and the log's path, never
a traceback on the terminal); 2 bad input (config, seeds, templates, arguments), with
nothing written; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

from health_orsc import __version__
from health_orsc.cli import audit, build, cache, evaluate, project, validate
from health_orsc.cli.common import CommandFailed, describe_failure
from health_orsc.core.errors import InputError

GROUPS = (project, build, evaluate, validate, audit, cache)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orsc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def crash_log(command: str) -> Path:
    """Where an unexpected failure's traceback goes: a file of its own under the system's
    temporary directory (the command may have no outputs directory)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.gettempdir()) / "health-orsc" / f"{command.replace(' ', '-')}-{stamp}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "cache_command", None)]))
    for noisy in ("httpx", "aiohttp"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CommandFailed as err:
        log, resumable, message = err.log_path, err.resumable, str(err)
    except Exception as err:  # a defect, a failed endpoint, a file the checks did not foresee:
        log = crash_log(command)  # no traceback here
        message, resumable = describe_failure(err)
    print(f"{command} failed: {message}", file=sys.stderr)
    if resumable:
        print("  completed model calls are cached; run the same command again to resume", file=sys.stderr)
    print(f"  details (tracebacks, every task's log): {log}", file=sys.stderr)
    return 1
