"""sample: a stratified sample (category x level) of kept prompts for human validation.

Input: kept Decisions. Output: the sampled Decisions, in stratum order.
Each stratum draws with its own seeded RNG (seed, category, level), so adding
or regenerating one category never changes another category's sample.

Example:
    picked = stratified_sample(kept, SampleConfig(per_stratum=2, seed=0), ["self_harm", "drug_abuse"])
"""

from __future__ import annotations

import random
from collections import defaultdict

from pipeline.config import SampleConfig
from pipeline.records import LEVELS, Decision


def stratified_sample(kept: list[Decision], cfg: SampleConfig, order: list[str]) -> list[Decision]:
    """`order`: the categories in taxonomy order (the sample's order)."""
    strata: dict[tuple[str, str], list[Decision]] = defaultdict(list)
    for d in kept:
        strata[(d.candidate.category, d.candidate.level)].append(d)
    picked: list[Decision] = []
    for key in sorted(strata, key=lambda k: (order.index(k[0]), LEVELS.index(k[1]))):
        members = sorted(strata[key], key=lambda d: d.candidate.id)
        rng = random.Random(f"{cfg.seed}:{key[0]}:{key[1]}")
        chosen = rng.sample(members, min(cfg.per_stratum, len(members)))
        picked.extend(sorted(chosen, key=lambda d: d.candidate.id))
    return picked
