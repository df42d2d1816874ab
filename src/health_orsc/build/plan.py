"""Regenerating from a base snapshot: which categories to rebuild, carry over or drop,
and the rows to carry over.

A category is rebuilt when it is named with --categories, when it is new (not in
the base), or when its fingerprint (taxonomy entry, seeds, templates, roles,
settings, code) differs from the base snapshot's. Every other category of the base
that is still in the taxonomy is carried over row for row, with the taxonomy version
it was built under. A category the taxonomy no longer lists is retired: dropped,
and `orsc diff` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from health_orsc.build.fingerprint import changed_inputs, fingerprint_components, fingerprint_of
from health_orsc.cache.requests import RequestCache
from health_orsc.core.errors import InputError
from health_orsc.inputs.load import BuildInputs
from health_orsc.snapshot.handle import Snapshot


def _evicted_calls(base: Snapshot, category: str, cache: RequestCache | None) -> int:
    if cache is None or not cache.has_evictions():
        return 0
    return len(cache.evicted([k for row in base.read_rows([category]) for k in row.call_keys()]))


@dataclass(frozen=True)
class RebuildPlan:
    categories: list[str]  # the snapshot's: rebuilt and carried, in taxonomy order
    rebuild: list[str]
    carry: list[str]
    dropped: list[str]
    reasons: dict[str, str]  # category -> why it is rebuilt, carried or dropped


def plan_rebuild(inputs: BuildInputs, base: Snapshot | None, named: bool,
                 cache: RequestCache | None = None) -> RebuildPlan:
    """`named`: the categories were named with --categories (rebuild exactly those and carry
    every other category of the base that the taxonomy still lists). With `cache`, a
    category whose rows used a call evicted from it (`orsc cache evict`) is rebuilt too."""
    if base is None:
        return RebuildPlan(list(inputs.categories), list(inputs.categories), [], [], {})
    m = base.manifest
    if m.source is not None:
        raise InputError(base.path, "--base", "is a snapshot imported with `orsc import`: a build cannot"
                         " carry its rows over", "pass a snapshot that `orsc build` made, or no --base")
    reasons: dict[str, str] = {}
    rebuild, carry = [], []
    pool = set(m.categories) if named else set(inputs.categories)
    for cat in inputs.taxonomy.ids:
        if cat in inputs.categories:
            if cat not in m.fingerprints:
                why = "new: not in the base snapshot"
            elif fingerprint_of(now := fingerprint_components(inputs, cat)) != m.fingerprints[cat]:
                why = f"changed: {', '.join(changed_inputs(now, m.fingerprint_components.get(cat, {})))}"
            elif evicted := _evicted_calls(base, cat, cache):
                why = f"{evicted} of its calls were evicted from the request cache"
            else:
                why = "unchanged"
            if named or why != "unchanged":
                rebuild.append(cat)
                reasons[cat] = f"rebuilt ({'named with --categories; ' if named else ''}{why})"
                continue
        if cat in pool and cat in m.fingerprints:
            carry.append(cat)
            reasons[cat] = ("carried over from the base snapshot"
                            f" (taxonomy version {m.taxonomy_versions[cat]})")
    dropped = [c for c in m.categories if c not in reasons]
    for cat in dropped:
        reasons[cat] = ("retired: no longer in the taxonomy, dropped" if cat not in inputs.taxonomy.ids
                        else "dropped: not among this build's categories")
    categories = [c for c in inputs.taxonomy.ids if c in rebuild or c in carry]
    return RebuildPlan(categories, rebuild, carry, dropped, reasons)
