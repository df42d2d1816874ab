"""Where things live under outputs/, and reading/verifying snapshots.

    outputs/cache/llm.sqlite         request cache (raw record of every model call)
    outputs/cache/embeddings.sqlite  dedup's embeddings by (model, text)
    outputs/stages/<stage>/<key>.jsonl   stage outputs, content-addressed
                                     (dedup: a <key>/ directory, one file per category)
    outputs/snapshots/<name>/        immutable, checksummed snapshots
    outputs/logs/                    embedded server log
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

MANIFEST = "MANIFEST.json"


def snapshots_dir(outputs_dir: Path) -> Path:
    return outputs_dir / "snapshots"


def default_snapshot_name() -> str:
    return datetime.now(UTC).strftime("build-%Y%m%d-%H%M%S")


def check_snapshot_name(outputs_dir: Path, name: str) -> str:
    """A snapshot name must be a plain directory name that is not taken yet."""
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise InputError(None, "--name", f"'{name}' is not a valid snapshot name",
                         "use letters, digits, '-', '_' and '.' only")
    if (snapshots_dir(outputs_dir) / name).exists():
        raise InputError(snapshots_dir(outputs_dir) / name, "--name",
                         "a snapshot with this name already exists",
                         "pass a new --name; snapshots are never overwritten")
    return name


def stage_path(outputs_dir: Path, stage: str, key: str) -> Path:
    return outputs_dir / "stages" / stage / f"{key}.jsonl"


def open_cache_db(path: Path, schema: str) -> sqlite3.Connection:
    """A cache database under outputs/cache/, shared by threads and processes (WAL).
    No fsync per commit: a committed row survives the process being killed
    (crash-resume); only an OS crash can lose the last few."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(schema)
    db.commit()
    return db


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(snapshot: Path) -> dict[str, Any]:
    path = snapshot / MANIFEST
    if not path.is_file():
        raise InputError(snapshot, None, f"is not a snapshot (no {MANIFEST})",
                         "pass a directory under outputs/snapshots/")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, None, f"is not valid JSON ({err.msg})",
                         "the snapshot is damaged; rebuild it") from err


def verify_snapshot(snapshot: Path) -> list[str]:
    """Re-check every checksum in MANIFEST.json. Returns one line per problem."""
    manifest = read_manifest(snapshot)
    problems = []
    listed = manifest.get("files", {})
    for rel, meta in sorted(listed.items()):
        path = snapshot / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif not isinstance(meta, dict) or file_sha256(path) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 differs from MANIFEST.json")
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not listed in MANIFEST.json")
    return problems


def list_snapshots(outputs_dir: Path) -> list[Path]:
    """Snapshots under outputs/, newest first. A snapshot whose MANIFEST.json cannot be
    read is skipped with a warning (`orsc verify` says what is wrong with it)."""
    root = snapshots_dir(outputs_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file():
            try:
                created = str(json.loads((d / MANIFEST).read_text(encoding="utf-8"))["created_at"])
            except (json.JSONDecodeError, KeyError, TypeError):
                print(f"warning: skipping {d}: unreadable {MANIFEST}; run `orsc verify {d}`",
                      file=sys.stderr)
                continue
            found.append((created, d.name, d))
    return [d for _, _, d in sorted(found, reverse=True)]


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
