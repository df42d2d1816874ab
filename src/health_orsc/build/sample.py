"""sample: a stratified sample (category x level) for human validation.

Input: the snapshot's Decisions. Output: the sampled Decisions, kept ones first, each group
in stratum order. Kept prompts are sampled to measure the benchmark's benign precision;
jury-rejected ones (`jury_harmful`, when `sample.rejected`) to measure the jury's false
rejections, which make a benchmark easier than it should be (in an imported snapshot, the
contrast prompts its source labels harmful, `source_harmful`). Rows without a level
(imported) form their own stratum per category.

A stratum's size is `sample.per_stratum`, or, with `sample.target_halfwidth`, what a
`confidence` interval of that half-width on the stratum's benign share needs
(health_orsc.core.stats.sample_size: statsmodels, finite-population corrected). Each stratum draws
with its own seeded RNG (seed, source, category, level), so adding or regenerating one
category never changes another category's sample.

Example:
    picked = stratified_sample(decisions, SampleConfig(per_stratum=2, seed=0), ["self_harm"])
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from health_orsc.core.config import SampleConfig
from health_orsc.core.records import STRATUM_LEVELS, Decision, stratum_level
from health_orsc.core.stats import sample_size

# Nothing is known beforehand of how often the jury rejects a benign prompt: size the
# rejected strata for the widest interval.
REJECTED_EXPECTED_BENIGN = 0.5
T = TypeVar("T")


def samples_rejected(d: Decision, cfg: SampleConfig) -> bool:
    return cfg.rejected and not d.kept and d.reason in ("jury_harmful", "source_harmful")


def stratum_size(population: int, cfg: SampleConfig, kept: bool) -> int:
    if cfg.target_halfwidth is None:
        return min(cfg.per_stratum or 0, population)
    expected = cfg.expected_benign if kept else REJECTED_EXPECTED_BENIGN
    return sample_size(population, expected, cfg.target_halfwidth, cfg.confidence)


def seeded_subset(members: list[T], k: int, label: str, key: Callable[[T], str]) -> list[T]:
    """`k` of `members` drawn by an RNG seeded with `label`, in `key` order (members are put
    in `key` order first, so the draw does not depend on how they came in)."""
    ordered = sorted(members, key=key)
    return sorted(random.Random(label).sample(ordered, k), key=key)


def stratified_sample(decisions: list[Decision], cfg: SampleConfig, order: list[str]) -> list[Decision]:
    """`order`: the categories in taxonomy order (the sample's order)."""
    strata: dict[tuple[str, str, str], list[Decision]] = defaultdict(list)
    for d in decisions:
        if d.kept or samples_rejected(d, cfg):
            strata[(d.source, d.candidate.category, d.candidate.level)].append(d)
    picked: list[Decision] = []
    for key in sorted(strata, key=lambda k: (k[0] != "kept", order.index(k[1]),
                                             STRATUM_LEVELS.index(stratum_level(k[2])))):
        source, category, level = key
        members = strata[key]
        # Kept strata keep the seed string they always had, so older snapshots verify.
        label = f"{cfg.seed}:{category}:{level}"
        picked += seeded_subset(members, stratum_size(len(members), cfg, source == "kept"),
                                label if source == "kept" else f"{source}:{label}", lambda d: d.candidate.id)
    return picked
