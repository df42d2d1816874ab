"""The `Snapshot` handle: one built snapshot directory and its MANIFEST, read.

It is storage only: it reads rows and records, and does not judge whether the files are
intact. "Must verify first" is a gate of the commands and flows that take a snapshot
(`audit.verify.open_verified`), so this module needs nothing above the snapshot layer.

Example:
    snap = Snapshot.open(Path("outputs/snapshots/my-run"))
    kept = [row for row in snap.read_rows() if row.id in wanted]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from health_orsc.core.records import CalibrationVote, Candidate, Decision, SnapshotRow, iter_jsonl
from health_orsc.snapshot.store import (
    CALIBRATION,
    PROMPTS,
    REJECTED,
    BaseRef,
    Manifest,
    load_manifest,
    read_jsonl_rows,
)


def read_rows(snapshot: Path, categories: list[str] | None = None) -> list[SnapshotRow]:
    """A snapshot's kept then rejected rows (of `categories`, or all)."""
    return [SnapshotRow.model_validate(r) for stem in (PROMPTS, REJECTED)
            for r in read_jsonl_rows(snapshot / f"{stem}.jsonl")
            if categories is None or r["category"] in categories]


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path) -> Snapshot:
        """The snapshot at `path` (its MANIFEST read and validated; InputError if it is not one)."""
        return cls(path.resolve(), load_manifest(path))

    @property
    def ref(self) -> BaseRef:
        return BaseRef(name=self.path.name, digest=self.manifest.digest)

    def read_rows(self, categories: list[str] | None = None) -> list[SnapshotRow]:
        """Kept then rejected rows (of `categories`, or all)."""
        return read_rows(self.path, categories)

    def decisions(self, categories: list[str]) -> list[Decision]:
        """Kept and rejected rows of these categories, as they are in the snapshot."""
        return [row.to_decision() for row in self.read_rows(categories)]

    def keepers(self, categories: list[str]) -> list[Candidate]:
        """The kept prompts of these categories: fixed keepers for dedup."""
        return [SnapshotRow.model_validate(r).to_decision().candidate
                for r in read_jsonl_rows(self.path / f"{PROMPTS}.jsonl") if r["category"] in categories]

    def calibration(self, categories: list[str]) -> Iterator[CalibrationVote]:
        """The jury check's votes on these categories' seeds, a line at a time."""
        path = self.path / CALIBRATION
        if path.is_file():
            yield from (v for v in iter_jsonl(path, CalibrationVote) if v.category in categories)
