"""Regenerating from a base snapshot: which categories to rebuild, and the rows to carry over.

A category is rebuilt when it is named with --categories, or when its fingerprint
(taxonomy entry, seeds, templates, roles, settings, code) differs from the base
snapshot's. Every other category of the base is carried over row for row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError
from pipeline.export import decision_from_row
from pipeline.fingerprint import changed_inputs, fingerprint_components, fingerprint_of
from pipeline.inputs import BuildInputs
from pipeline.records import CATEGORIES, CalibrationVote, Decision
from pipeline.store import read_jsonl_rows, read_manifest, verify_snapshot


@dataclass(frozen=True)
class BaseSnapshot:
    path: Path
    manifest: dict

    def decisions(self, categories: list[str]) -> list[Decision]:
        rows = (read_jsonl_rows(self.path / "prompts.jsonl")
                + read_jsonl_rows(self.path / "rejected.jsonl"))
        return [decision_from_row(r) for r in rows if r["category"] in categories]

    def fingerprints(self, categories: list[str]) -> dict[str, str]:
        return {c: self.manifest["fingerprints"][c] for c in categories}

    def fingerprint_components(self, categories: list[str]) -> dict[str, dict[str, str]]:
        return {c: self.manifest.get("fingerprint_components", {}).get(c, {}) for c in categories}

    def calibration(self, categories: list[str]) -> list[CalibrationVote]:
        path = self.path / "jury_calibration.jsonl"
        rows = read_jsonl_rows(path) if path.is_file() else []
        return [CalibrationVote.model_validate(r) for r in rows if r["category"] in categories]


def open_base(path: Path, verify: bool = True) -> BaseSnapshot:
    """A base must be a snapshot that verifies; otherwise InputError (exit 2).
    `verify=False` is for tasks of a flow that has already verified it."""
    manifest = read_manifest(path)
    problems = verify_snapshot(path) if verify else []
    if problems:
        raise InputError(path, "--base", f"fails verify ({'; '.join(problems[:3])})",
                         "pass an intact snapshot (`orsc verify` shows what is wrong)")
    return BaseSnapshot(path.resolve(), manifest)


@dataclass(frozen=True)
class RebuildPlan:
    rebuild: list[str]
    carry: list[str]
    reasons: dict[str, str]  # category -> why it is rebuilt or carried


def plan_rebuild(inputs: BuildInputs, base: BaseSnapshot | None, named: bool) -> RebuildPlan:
    """`named`: the categories were named with --categories (rebuild exactly those)."""
    if base is None:
        return RebuildPlan(list(inputs.categories), [], {})
    base_fps = base.manifest.get("fingerprints", {})
    base_parts = base.manifest.get("fingerprint_components", {})
    reasons: dict[str, str] = {}
    rebuild = []
    for cat in inputs.categories:
        if cat not in base_fps:
            why = "not in the base snapshot"
        elif fingerprint_of(now := fingerprint_components(inputs, cat)) != base_fps[cat]:
            changed = changed_inputs(now, base_parts.get(cat, {}))
            why = f"changed: {', '.join(changed) or 'fingerprint'}"
        else:
            why = "unchanged"
        if named or why != "unchanged":
            rebuild.append(cat)
            reasons[cat] = f"rebuilt ({'named with --categories; ' if named else ''}{why})"
    pool = base.manifest.get("categories", []) if named else inputs.categories
    carry = [c for c in pool if c not in rebuild and c in base_fps]
    for cat in carry:
        reasons[cat] = "carried over from the base snapshot"
    order = sorted(reasons, key=CATEGORIES.index)
    return RebuildPlan(rebuild, sorted(carry, key=CATEGORIES.index), {c: reasons[c] for c in order})
