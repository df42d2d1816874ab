"""diff: what changed between two snapshots, per category.

Kept prompts added / removed / changed / unchanged (by content-addressed id; a row
whose id stays but whose votes or decision fields differ is *changed*), removed prompts
that b rejected (and why), and which fingerprint inputs (taxonomy entry, seeds,
templates, roles, settings, code) differ, read from each snapshot's MANIFEST.json.
A category only in b is *new*; one only in a is *retired*.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from health_orsc.build.fingerprint import changed_inputs
from health_orsc.core.records import SnapshotRow
from health_orsc.snapshot.handle import read_rows
from health_orsc.snapshot.store import load_manifest


class CategoryDiff(BaseModel):
    category: str
    status: Literal["new", "retired", "changed", "unchanged"]
    added: list[str]
    removed: list[str]
    now_rejected: dict[str, str]  # removed ids that b holds as rejected -> b's reason
    changed: dict[str, list[str]]  # kept in both, but the row differs -> the fields that differ
    unchanged: int
    fingerprint_changed: bool
    changed_inputs: list[str]  # e.g. ["seeds", "templates"]


class SnapshotDiff(BaseModel):
    """Schema of `orsc diff --json`."""

    a: str
    b: str
    a_digest: str
    b_digest: str
    categories: list[CategoryDiff]


def _by_id(rows: list[SnapshotRow], category: str, kept: bool) -> dict[str, SnapshotRow]:
    return {r.id: r for r in rows if r.category == category and (r.reason is None) == kept}


def _fields_that_differ(a: SnapshotRow, b: SnapshotRow) -> list[str]:
    return [f for f in SnapshotRow.model_fields if getattr(a, f) != getattr(b, f)]


def diff_snapshots(a: Path, b: Path) -> SnapshotDiff:
    ma, mb = load_manifest(a), load_manifest(b)
    rows_a, rows_b = read_rows(a), read_rows(b)
    cats = [*mb.categories, *(c for c in ma.categories if c not in mb.categories)]
    out = []
    for cat in cats:
        ka, kb = _by_id(rows_a, cat, kept=True), _by_id(rows_b, cat, kept=True)
        rejected_b = _by_id(rows_b, cat, kept=False)
        both = ka.keys() & kb.keys()
        changed = {i: _fields_that_differ(ka[i], kb[i]) for i in sorted(both) if ka[i] != kb[i]}
        removed = sorted(ka.keys() - kb.keys())
        fingerprint_changed = ma.fingerprints.get(cat) != mb.fingerprints.get(cat)
        if cat not in ma.categories:
            status, inputs = "new", []
        elif cat not in mb.categories:
            status, inputs = "retired", []
        else:
            inputs = changed_inputs(ma.fingerprint_components[cat], mb.fingerprint_components[cat])
            differs = fingerprint_changed or changed or removed or kb.keys() - ka.keys()
            status = "changed" if differs else "unchanged"
        out.append(CategoryDiff(
            category=cat, status=status, added=sorted(kb.keys() - ka.keys()), removed=removed,
            now_rejected={i: rejected_b[i].reason for i in removed if i in rejected_b},
            changed=changed, unchanged=len(both) - len(changed),
            fingerprint_changed=fingerprint_changed, changed_inputs=inputs))
    return SnapshotDiff(a=str(a), b=str(b), a_digest=ma.digest, b_digest=mb.digest, categories=out)
