"""`orsc verify`, `orsc provenance` and `orsc diff`: what a user checks after the fact."""

from __future__ import annotations

import argparse
from pathlib import Path

from health_orsc.cli import render
from health_orsc.cli.common import add_config, add_json, command, emit
from health_orsc.core.config import CacheConfig, load_config


def cmd_verify(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import verify_snapshot

    report = verify_snapshot(Path(args.snapshot), args.digest)
    emit(args, report, lambda r: render.verify(r, args.digest is not None))
    return 1 if report.problems else 0


def outputs_and_cache(args: argparse.Namespace) -> tuple[Path, CacheConfig]:
    """The outputs directory and cache setting a command reads: --outputs (with the SQLite
    cache under it), or else those of --config (which may name a `cache.url` database)."""
    if args.outputs:
        return Path(args.outputs), CacheConfig()
    config = load_config(args.config)
    return config.outputs_dir, config.cache


def cmd_provenance(args: argparse.Namespace) -> int:
    from health_orsc.audit.provenance import trace

    outputs_dir, cache = outputs_and_cache(args)
    report = trace(args.id, outputs_dir, Path(args.snapshot) if args.snapshot else None, cache)
    emit(args, report, render.provenance)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from health_orsc.audit.diff import diff_snapshots

    emit(args, diff_snapshots(Path(args.a), Path(args.b)), render.diff)
    return 0


def register(sub) -> None:
    v = command(sub, "verify", cmd_verify, "re-check a snapshot's files and MANIFEST.json; print its digest",
                "Re-derive everything a snapshot's (or an evaluation run's) MANIFEST.json claims: every"
                " file's checksum, the counts, fingerprints, sample and reports. Exit 1 on any problem."
                " --json prints a VerifyReport.",
                "orsc verify outputs/snapshots/v1 --digest sha256:...")
    v.add_argument("snapshot", help="snapshot (or evaluation run) directory")
    v.add_argument("--digest", help="the digest the snapshot must have (e.g. as published)")
    add_json(v)

    p = command(sub, "provenance", cmd_provenance, "print where a prompt came from",
                "The full chain behind one prompt id: its seed, template, generation call, dedup, every"
                " juror's vote and call, people's labels and every evaluation's answers and grades."
                " --json prints a Provenance.", "orsc provenance 3f2a9c1e0b7d4a55 --json")
    p.add_argument("id", help="prompt id (kept or rejected)")
    add_config(p, help="config whose outputs_dir to search")
    p.add_argument("--outputs", help="outputs directory to search (overrides --config)")
    p.add_argument("--snapshot", help="look in this snapshot first (default: newest)")
    add_json(p)

    d = command(sub, "diff", cmd_diff, "prompts added / removed / changed per category, and why",
                "Per category, the kept prompts added, removed and changed from snapshot A to B, and which"
                " fingerprint inputs changed. --json prints a SnapshotDiff.",
                "orsc diff outputs/snapshots/v1 outputs/snapshots/v2")
    d.add_argument("a", help="older snapshot directory")
    d.add_argument("b", help="newer snapshot directory")
    add_json(d)
