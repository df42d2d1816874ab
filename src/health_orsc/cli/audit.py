"""`orsc verify`, `orsc provenance`, `orsc diff`, `orsc import` and `orsc publish`: what a
user checks after the fact, on snapshots this tool built or on published benchmarks it
imported, and how a snapshot reaches the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel

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


def cmd_import(args: argparse.Namespace) -> int:
    from health_orsc.audit.imports import import_snapshot
    from health_orsc.audit.verify import verify_snapshot
    from health_orsc.snapshot.store import check_snapshot_name, load_manifest

    config = load_config(args.config)
    name = check_snapshot_name(config.outputs_dir, args.name)
    path = import_snapshot(args.format, [Path(f) for f in args.files], name, config,
                           Path(args.taxonomy) if args.taxonomy else None, args.license)
    m = load_manifest(path)
    report = verify_snapshot(path)
    result = ImportResult(snapshot=str(path), digest=m.digest, format=args.format,
                          files=[f.model_dump() for f in m.source.files], kept=m.counts.kept,
                          contrast={c: r.get("source_harmful", 0) for c, r in m.counts.rejected.items()},
                          validation_sample=m.counts.validation_sample, problems=report.problems)
    emit(args, result, render.imported)
    return 1 if report.problems else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from health_orsc.audit.publish import publish

    emit(args, publish(Path(args.snapshot), args.repo, args.private, args.gated), render.published)
    return 0


class ImportResult(BaseModel):
    """Schema of `orsc import --json`."""

    snapshot: str
    digest: str
    format: str
    files: list[dict]          # name, sha256, bytes, rows
    kept: dict[str, dict[str, int]]  # benign prompts per category x level (or unleveled)
    contrast: dict[str, int]   # per category: the source's harmful prompts (source_harmful)
    validation_sample: int
    problems: list[str]        # verify's, on the new snapshot (none expected)


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

    i = command(sub, "import", cmd_import, "make a snapshot from a published benchmark's files",
                "Read Health-ORSC-Bench (JSON lines), XSTest or OR-Bench (CSV) release files in their"
                " published layout and write outputs/snapshots/NAME/: the source's benign prompts, its"
                " harmful contrast prompts (rejected as source_harmful), a validation sample, and where"
                " every row came from. Then evaluate, annotate, validate and export it like a built"
                " snapshot. --json prints an ImportResult.",
                "orsc import --format xstest xstest_prompts.csv --name xstest-v2")
    i.add_argument("--format", required=True, choices=("health-orsc", "xstest", "or-bench"),
                   help="the release's layout")
    i.add_argument("files", nargs="+", help="release files (e.g. or-bench-hard-1k.csv or-bench-toxic.csv)")
    i.add_argument("--name", required=True, help="name of the new snapshot")
    add_config(i, help="config whose outputs_dir, sample settings (and, for health-orsc, taxonomy)"
                       " to use (default: the packaged default config)")
    i.add_argument("--taxonomy", help="taxonomy YAML defining the source's categories (default: the"
                                      " config's for health-orsc, a shipped one for xstest and or-bench)")
    i.add_argument("--license", help="the source's licence for the card (default: the release's:"
                                     " cc-by-nc-4.0 for health-orsc, cc-by-4.0 for xstest and or-bench)")
    add_json(i)

    u = command(sub, "publish", cmd_publish, "upload a snapshot to a Hugging Face Hub dataset repo",
                "Upload the snapshot's files unchanged, in one commit, to a new dataset repo (or confirm the"
                " repo already holds it), so a clone verifies with the snapshot's digest. The token is"
                " HF_TOKEN or huggingface_hub's stored login; the Hub is HF_ENDPOINT (default"
                " huggingface.co). --json prints a PublishResult.",
                "orsc publish outputs/snapshots/v1-validated --repo my-org/health-orsc-v1 --gated")
    u.add_argument("snapshot", help="snapshot directory (it must verify)")
    u.add_argument("--repo", required=True, help="dataset repo id, ORG/NAME")
    u.add_argument("--private", action="store_true", help="create the repo private")
    u.add_argument("--gated", action="store_true", help="ask people to request access (the card's access"
                                                        " prompt; granted automatically)")
    add_json(u)
