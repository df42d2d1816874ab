"""What older snapshots lack, in one place, keyed by the `schema_version` their MANIFEST
records (absent: 1). verify asks here instead of special-casing each difference.

    1  snapshots made before health_orsc was one package (before 2026-12-04): no
       schema_version; taxonomy.json only since taxonomy definitions travelled with the
       snapshot; config sections of later features missing (their recorded defaults
       below)
    2  schema_version recorded; taxonomy.json required
    3  every kept row of a built category carries its rubric (`rubric`); rows of older
       snapshots have none, and their answers are not graded against one (docs/build.md);
       nor do rows imported from a published benchmark (MANIFEST `source`, `orsc import`)
    4  ready to publish (`orsc publish`): data/<category>.parquet beside each category's JSON
       lines (the card's typed configs), croissant.json, a card with a content warning, an
       access prompt for gating and a citation
    5  the validation sample records each item's stratum and inclusion probability
       (`stratum`, `inclusion_probability`); older samples have neither, and the validity
       report derives them from the strata's sizes (a stratified draw: n/N)
"""

from __future__ import annotations

from health_orsc.core.config import BuildConfig
from health_orsc.snapshot.store import (
    CARD,
    CROISSANT,
    LABELS_FILE,
    PROMPTS,
    REJECTED,
    REPORT_FILE,
    SAMPLE,
    TAXONOMY,
    Manifest,
    SnapshotMeta,
    data_file,
)

SCHEMA_VERSION = 5  # what this code writes


def required_files(m: Manifest) -> list[str]:
    """The files a snapshot of its kind and version holds."""
    required = [f"{stem}.{ext}" for stem in (PROMPTS, REJECTED) for ext in ("jsonl", "parquet")]
    required += [SAMPLE, CARD, *(data_file(c) for c in m.categories)]
    if m.schema_version >= 2:
        required.append(TAXONOMY)
    if publishable(m):
        required += [CROISSANT, *(data_file(c, "parquet") for c in m.categories)]
    if m.kind == "validation":
        required += [LABELS_FILE, REPORT_FILE]
    return required


def publishable(m: SnapshotMeta) -> bool:
    """Whether the snapshot has what `orsc publish` uploads: parquet per category,
    croissant.json and a card with a content warning, access prompt and citation."""
    return m.schema_version >= 4


def rubrics_required(m: Manifest, category: str) -> bool:
    """Whether the kept rows of `category` must carry rubrics: built since they existed (a
    category carried over from an older base keeps its rows as they were)."""
    return m.schema_version >= 3 and category in m.built and m.source is None


def recorded_config(m: Manifest) -> BuildConfig:
    """The config a MANIFEST records, with the settings of features newer than the snapshot
    set as it was built (a default added later must not make an older snapshot fail)."""
    cfg = BuildConfig.model_validate(m.config)
    if "rejected" not in m.config.get("sample", {}):
        cfg.sample.rejected = False  # built before rejected candidates were sampled
    if "min_similarity" not in m.config.get("generation", {}):
        cfg.generation.min_similarity = None  # built before the off-topic check
    return cfg


def sample_design_recorded(m: SnapshotMeta) -> bool:
    """Whether the validation sample records each item's stratum and inclusion probability."""
    return m.schema_version >= 5
