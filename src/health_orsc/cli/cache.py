"""`orsc cache evict` and `orsc cache migrate`: the request cache and the embedding cache."""

from __future__ import annotations

import argparse
import time

from pydantic import BaseModel

from health_orsc.cli import render
from health_orsc.cli.audit import outputs_and_cache
from health_orsc.cli.common import add_json, command, emit
from health_orsc.core.config import DEFAULT_CONFIG
from health_orsc.core.errors import InputError


class EvictionResult(BaseModel):
    """What `orsc cache evict` dropped (or, with --dry-run, would drop)."""

    matching: str             # the selection, e.g. "--role judge_2"
    keys: list[str]
    evicted: int              # 0 with --dry-run
    dry_run: bool


def cmd_cache_evict(args: argparse.Namespace) -> int:
    """Drop cached calls (a bad reply that was a valid completion stays cached until evicted);
    the next build makes those calls again and re-runs the stages that used them."""
    from health_orsc.audit.provenance import calls_of_prompt
    from health_orsc.cache.requests import existing_request_cache

    if args.key is not None and len(args.key) < 8:
        raise InputError(None, "--key", "is shorter than 8 characters",
                         "pass at least the first 8 characters of a key (`orsc provenance ID` shows them)")
    outputs_dir, cache_config = outputs_and_cache(args)
    cache = existing_request_cache(cache_config, outputs_dir)
    if cache is None:
        raise InputError(outputs_dir / "cache" / "llm.sqlite", None, "no request cache here",
                         "pass the --outputs (or --config) of a build")
    matching = " ".join(f"--{n} {v}" for n, v in (("role", args.role), ("model", args.model),
                                                   ("key", args.key), ("prompt", args.prompt)) if v)
    try:
        if args.prompt:
            keys = [k for k in calls_of_prompt(args.prompt, outputs_dir) if cache.text(k) is not None]
        else:
            keys = cache.find(role=args.role, model=args.model, key_prefix=args.key)
        if not keys:
            raise InputError(cache.path, None, f"no cached call matches {matching}",
                             "check the name; `orsc provenance ID` lists a prompt's calls")
        evicted = 0 if args.dry_run else cache.evict(keys)
    finally:
        cache.close()
    emit(args, EvictionResult(matching=matching, keys=keys, evicted=evicted, dry_run=args.dry_run),
         render.eviction)
    return 0


def cmd_cache_migrate(args: argparse.Namespace) -> int:
    """Copy the request cache and the embedding cache from SRC to DST (each an outputs
    directory or a postgresql:// URL); rows DST already holds are kept."""
    from health_orsc.cache.migrate import CacheLocation, migrate

    src = CacheLocation.parse(args.src, "SRC", args.password_env)
    dst = CacheLocation.parse(args.dst, "DST", args.password_env)
    started = time.monotonic()
    report = migrate(src, dst)
    report.src, report.dst, report.seconds = src.label, dst.label, round(time.monotonic() - started, 3)
    emit(args, report, render.migration)
    return 0


def register(sub) -> None:
    c = sub.add_parser("cache", help="the request cache and the embedding cache",
                       description="The request cache (every model call) and the embedding cache."
                       ).add_subparsers(dest="cache_command", required=True)
    e = command(c, "evict", cmd_cache_evict, "drop cached model calls so the next build makes them again",
                "Drop cached model calls by role, model, key or prompt; the next build makes them again"
                " and, with --base, rebuilds the categories that used them. --json prints an"
                " EvictionResult.", "orsc cache evict --role judge_2 --dry-run")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--config", default=str(DEFAULT_CONFIG), help="config whose outputs_dir to use")
    where.add_argument("--outputs", help="outputs directory (overrides --config)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--role", help="every call a role made (e.g. judge_2)")
    which.add_argument("--model", help="every call to a model (the name sent to the endpoint)")
    which.add_argument("--key", help="one call, by its key or a prefix of at least 8 characters")
    which.add_argument("--prompt", help="every call behind a prompt id (its rewrite and its votes)")
    e.add_argument("--dry-run", action="store_true", help="list the calls, evict nothing")
    add_json(e)

    m = command(c, "migrate", cmd_cache_migrate, "copy the request and embedding caches to another backend",
                "Copy both caches from SRC to DST (each an outputs directory or a postgresql:// URL);"
                " rows DST already holds are kept. --json prints a MigrationReport.",
                "orsc cache migrate outputs postgresql://orsc@db:5432/orsc")
    m.add_argument("src", help="an outputs directory (its cache/*.sqlite) or a postgresql:// URL")
    m.add_argument("dst", help="an outputs directory or a postgresql:// URL (created if missing)")
    m.add_argument("--password-env", help="environment variable holding the database password"
                                          " (default: libpq's PGPASSWORD or ~/.pgpass)")
    add_json(m)
