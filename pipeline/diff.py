"""diff: what changed between two snapshots, per category.

Prompts added / removed / unchanged (by content-addressed id), and which
fingerprint inputs (taxonomy entry, seeds, templates, roles, settings, code)
differ, read from each snapshot's MANIFEST.json.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from pipeline.fingerprint import changed_inputs
from pipeline.records import CATEGORIES
from pipeline.store import read_jsonl_rows, read_manifest


class CategoryDiff(BaseModel):
    category: str
    added: list[str]
    removed: list[str]
    unchanged: int
    fingerprint_changed: bool
    changed_inputs: list[str]  # e.g. ["seeds", "templates"]; ["(category only in a)"]


class SnapshotDiff(BaseModel):
    """Schema of `orsc diff --json`."""

    a: str
    b: str
    categories: list[CategoryDiff]


def _ids_by_category(snapshot: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in read_jsonl_rows(snapshot / "prompts.jsonl"):
        out.setdefault(row["category"], set()).add(row["id"])
    return out


def diff_snapshots(a: Path, b: Path) -> SnapshotDiff:
    ma, mb = read_manifest(a), read_manifest(b)
    ids_a, ids_b = _ids_by_category(a), _ids_by_category(b)
    cats = sorted(set(ma.get("categories", [])) | set(mb.get("categories", [])),
                  key=lambda c: (CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES), c))
    rows = []
    for cat in cats:
        in_a, in_b = cat in ma.get("categories", []), cat in mb.get("categories", [])
        comp_a = ma.get("fingerprint_components", {}).get(cat, {})
        comp_b = mb.get("fingerprint_components", {}).get(cat, {})
        if not (in_a and in_b):
            changed = [f"(category only in {'a' if in_a else 'b'})"]
        else:
            changed = changed_inputs(comp_a, comp_b)
        sa, sb = ids_a.get(cat, set()), ids_b.get(cat, set())
        rows.append(CategoryDiff(
            category=cat, added=sorted(sb - sa), removed=sorted(sa - sb), unchanged=len(sa & sb),
            fingerprint_changed=ma.get("fingerprints", {}).get(cat) != mb.get("fingerprints", {}).get(cat),
            changed_inputs=changed,
        ))
    return SnapshotDiff(a=str(a), b=str(b), categories=rows)
