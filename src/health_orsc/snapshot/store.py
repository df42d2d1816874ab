"""Where things live under outputs/, the names of a snapshot's files, and its MANIFEST.

    outputs/cache/llm.sqlite         request cache (raw record of every model call)
    outputs/cache/embeddings.sqlite  dedup's embeddings by (model, text)
    outputs/stages/<stage>/<key>.jsonl   stage outputs, content-addressed
                                     (dedup: a <key>/ directory, one file per category)
    outputs/snapshots/<name>/        immutable, checksummed snapshots
    outputs/logs/                    build logs, embedded server log
    outputs/run/                     records of the processes a build started (for clean-up)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer

from health_orsc.core.errors import RERUN_WITH_ROOM, DiskFull, InputError, disk_full, from_validation_error
from health_orsc.core.records import RejectReason, StratumLevel, canonical_json, sha256_hex, without_none

# The files of a snapshot (relative to its directory).
MANIFEST = "MANIFEST.json"
PROMPTS = "prompts"              # .parquet and .jsonl: the kept rows
REJECTED = "rejected"            # .parquet and .jsonl: the rejected rows
CALIBRATION = "jury_calibration.jsonl"
SAMPLE = "validation_sample.csv"
CARD = "README.md"
LABELS_FILE = "validation/labels.jsonl"   # a validation snapshot's human labels
REPORT_FILE = "validation/report.json"    # and its validity report
ROUND_SAMPLE = "validation/round_{}_sample.csv"  # round N's further items (N >= 2; validation/rounds.py)
RUBRIC_REVIEWS_FILE = "validation/rubric_reviews.jsonl"  # people's reviews of rubrics, when given
TAXONOMY = "taxonomy.json"       # the categories' definitions the build used (annotation guidance)
CROISSANT = "croissant.json"     # Croissant (MLCommons) metadata of the parquet files (schema 4 on)
SNAPSHOT_NAME_MAX = 200          # leaves room for the temp dir's suffix within NAME_MAX (255)
_TMP_DIR = re.compile(r"^\.tmp-(?P<name>.+)-(?P<pid>\d+)$")


def read_sample(snapshot: Path) -> list[dict[str, str]]:
    """The rows of the snapshot's validation sample (id, category, level, source, ...).
    Samples written before jury rejections were sampled hold kept prompts only."""
    with (snapshot / SAMPLE).open(encoding="utf-8", newline="") as fh:
        return [{"source": "kept", **row} for row in csv.DictReader(fh)]


def read_taxonomy(snapshot: Path) -> dict[str, dict[str, str]]:
    """Category id -> its taxonomy entry (name, harm_definition, benign_boundary), in order."""
    path = snapshot / TAXONOMY
    if not path.is_file():
        raise InputError(snapshot, TAXONOMY, "missing: the snapshot was built before snapshots kept"
                         " their categories' definitions", "rebuild it with the current orsc")
    return {entry["id"]: entry for entry in json.loads(path.read_text(encoding="utf-8"))}


def data_file(category: str, ext: str = "jsonl") -> str:
    """The kept rows of one category (JSON lines, and from schema 4 on parquet): one Hugging
    Face config each."""
    return f"data/{category}.{ext}"


def snapshots_dir(outputs_dir: Path) -> Path:
    return outputs_dir / "snapshots"


def default_snapshot_name() -> str:
    return datetime.now(UTC).strftime("build-%Y%m%d-%H%M%S")


def evaluations_dir(outputs_dir: Path) -> Path:
    return outputs_dir / "evaluations"


def check_snapshot_name(outputs_dir: Path, name: str, root: Path | None = None) -> str:
    """A snapshot name must be a plain directory name that is not taken yet (in `root`:
    default, the snapshots directory; evaluation runs are named the same way)."""
    root = root or snapshots_dir(outputs_dir)
    if not name:
        raise InputError(None, "--name", "is empty", "pass a name, or leave --name out for a timestamp")
    if len(name) > SNAPSHOT_NAME_MAX:
        raise InputError(None, "--name", f"is {len(name)} characters long",
                         f"use at most {SNAPSHOT_NAME_MAX} characters")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise InputError(None, "--name", f"'{name}' is not a valid snapshot name",
                         "use letters, digits, '-', '_' and '.' only, not starting with '.'")
    if (root / name).exists():
        raise InputError(root / name, "--name", f"a {'run' if root.name == 'evaluations' else 'snapshot'}"
                         " with this name already exists",
                         "pass a new --name; snapshots and evaluation runs are never overwritten")
    return name


def temp_snapshot_dir(outputs_dir: Path, name: str, pid: int, root: Path | None = None) -> Path:
    return (root or snapshots_dir(outputs_dir)) / f".tmp-{name}-{pid}"


@contextmanager
def writing_snapshot(outputs_dir: Path, name: str, root: Path | None = None) -> Iterator[Path]:
    """A temp directory (not yet created) to write snapshot `name` into; renamed to
    outputs/snapshots/<name> (or `root`/<name>) when the block ends, removed if it fails.
    The name is checked first: an existing snapshot is never overwritten."""
    root = root or snapshots_dir(outputs_dir)
    final = root / check_snapshot_name(outputs_dir, name, root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_snapshot_dir(outputs_dir, name, os.getpid(), root)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
        tmp.rename(final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(err):
            raise DiskFull(f"{root}: the disk filled while snapshot '{name}' was being written; nothing of"
                           f" it was kept: {RERUN_WITH_ROOM}") from err
        raise


def write_manifest(snapshot: Path, raw: dict[str, Any]) -> None:
    (snapshot / MANIFEST).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def remove_stale_temp_dirs(outputs_dir: Path) -> list[Path]:
    """Temp dirs of exports whose process is gone (a build killed while exporting)."""
    root = snapshots_dir(outputs_dir)
    removed = []
    for d in sorted(root.glob(".tmp-*")) if root.is_dir() else []:
        match = _TMP_DIR.match(d.name)
        if match and d.is_dir() and not psutil.pid_exists(int(match["pid"])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def stage_path(outputs_dir: Path, stage: str, key: str) -> Path:
    return outputs_dir / "stages" / stage / f"{key}.jsonl"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- MANIFEST.json -------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class BaseRef(_Strict):
    """The snapshot this one was derived from, and its digest when it was read."""

    name: str
    digest: str


class ManifestCounts(_Strict):
    kept: dict[str, dict[StratumLevel, int]]
    rejected: dict[str, dict[RejectReason, int]]
    validation_sample: int


class SourceFile(_Strict):
    """A published file an imported snapshot was made from."""

    name: str     # its file name; each row's `imported_from.file`
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    rows: int = Field(ge=0)  # rows imported from it


ImportFormat = Literal["health-orsc", "xstest", "or-bench"]  # the layouts `orsc import` reads


class ImportSource(_Strict):
    """What `orsc import` made a snapshot from (MANIFEST `source`)."""

    format: ImportFormat
    files: list[SourceFile]
    license: str      # the source's licence, as its card states it (or `orsc import --license`)


class SnapshotMeta(_Strict):
    """What MANIFEST.json says about how the snapshot was built: what the build knows
    before it writes a file (the writer adds the rest, see Manifest)."""

    categories: list[str]         # taxonomy order
    built: list[str]              # built by this build; the others were carried over from `base`
    base: BaseRef | None
    started_at: str
    fingerprints: dict[str, str]
    fingerprint_components: dict[str, dict[str, str]]
    taxonomy_version: int         # of the taxonomy file this build read
    taxonomy_versions: dict[str, int]  # per category: the version it was built under
    models: dict[str, dict[str, Any]]
    config: dict[str, Any]
    jury: dict[str, Any]
    jury_calibration: dict[str, dict[str, Any]]
    jury_agreement: dict[str, Any] | None = None  # Fleiss' kappa among the jurors (health_orsc.build.jury)
    schema_version: int = 1       # absent in snapshots made before it was recorded (snapshot.compat)
    # imported from a published benchmark (`orsc import`), and kept by the validation
    # snapshots derived from it: no fingerprints, models, jury or seeds (absent: built)
    source: ImportSource | None = None

    @model_serializer(mode="wrap")
    def _without_source(self, handler):
        """A built snapshot's MANIFEST has no `source` key (as before imports existed)."""
        return without_none(handler(self), "source")


class Manifest(SnapshotMeta):
    """What MANIFEST.json holds: the build's SnapshotMeta and what writing it added. `digest`
    (not stored in it) is the sha256 of its canonical JSON."""

    name: str
    created_at: str
    package: dict[str, str]
    files: dict[str, FileEntry]
    counts: ManifestCounts
    # "validation": derived from `base` by `orsc validate` (its rows are the base's, plus
    # validation/labels.jsonl and validation/report.json)
    # "import": made by `orsc import` from a published benchmark's files (`source`)
    kind: Literal["build", "validation", "import"] = "build"
    _digest: str = PrivateAttr("")

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def carried(self) -> list[str]:
        return [c for c in self.categories if c not in self.built]


def digest_of(raw: Any) -> str:
    """A snapshot's digest: sha256 of its MANIFEST's canonical JSON (key order and
    whitespace of the file do not matter; any change of content does)."""
    return "sha256:" + sha256_hex(canonical_json(raw))


def load_manifest(snapshot: Path) -> Manifest:
    """Read and validate MANIFEST.json; InputError naming what is wrong (exit 2)."""
    path = snapshot / MANIFEST
    if not path.is_file():
        raise InputError(snapshot, None, f"is not a snapshot (no {MANIFEST})",
                         "pass a directory under outputs/snapshots/")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, None, f"is not valid JSON ({err})",
                         "the snapshot is damaged; rebuild it") from err
    if not isinstance(raw, dict):
        raise InputError(path, None, f"holds a JSON {type(raw).__name__}, not an object",
                         "the snapshot is damaged; rebuild it")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        raise from_validation_error(path, err, fix="the snapshot is damaged or was written by"
                                                   " another version; rebuild it") from err
    manifest._digest = digest_of(raw)
    return manifest


def snapshot_file(snapshot: Path, rel: str) -> Path | None:
    """The file a MANIFEST `files` entry names, or None when the entry is not a plain
    relative path inside the snapshot (absolute, `..`, or through a symlink out of it)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return None
    path = snapshot / pure
    try:
        path.resolve().relative_to(snapshot.resolve())
    except ValueError:
        return None
    return path


# What a git or Hugging Face Hub clone of a snapshot adds beside its files: never listed,
# never checked (only these paths: anything else unlisted fails verify)
CLONE_METADATA_FILES = (".gitattributes", ".git")   # .git is a file in a worktree or submodule
CLONE_METADATA_DIRS = (".git/", ".cache/huggingface/")


def clone_metadata(rel: str) -> bool:
    """Whether `rel` (a path inside a snapshot, '/'-separated) is a clone's own metadata."""
    return rel in CLONE_METADATA_FILES or rel.startswith(CLONE_METADATA_DIRS)


def check_files(snapshot: Path, manifest: Manifest) -> list[str]:
    """Every listed file exists inside the snapshot with its sha256 and size; every file is
    listed, except a git or Hub clone's own metadata (clone_metadata)."""
    problems = []
    for rel, entry in sorted(manifest.files.items()):
        path = snapshot_file(snapshot, rel)
        if path is None:
            problems.append(f"{rel!r}: listed in {MANIFEST} but points outside the snapshot")
        elif not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.bytes or file_sha256(path) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from {MANIFEST}")
    for path in sorted(snapshot.rglob("*")):
        rel = path.relative_to(snapshot).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in manifest.files and not clone_metadata(rel):
            problems.append(f"{rel}: not listed in {MANIFEST}")
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
                created = load_manifest(d).created_at
            except InputError:
                print(f"warning: skipping {d}: unreadable {MANIFEST}; run `orsc verify {d}`",
                      file=sys.stderr)
                continue
            found.append((created, d.name, d))
    return [d for _, _, d in sorted(found, reverse=True)]


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
