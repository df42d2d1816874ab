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

Within a stratum, `sample.design` decides how its items are drawn:
- `stratified` (default): a simple random sample of that size; each item's inclusion
  probability is n/N.
- `uncertainty`: labels go where the jury was unsure. Each item's uncertainty is 0 when every
  juror is sure and they agree, 1 at a score juror's threshold or an even split of verdicts
  (`uncertainty`); its inclusion probability is proportional to `uncertainty_floor` + (1 -
  floor) x uncertainty, scaled so the stratum's expected sample is its size and capped at 1
  (`proportional_probabilities`); each item is then drawn independently (Poisson sampling)
  by a uniform number hashed from (seed, stratum, id). The floor keeps every item drawable,
  so the weighted estimates stay unbiased; the sample's size varies around its expectation.

Each sampled item carries its stratum (`stratum_key`) and its inclusion probability, which
`validation_sample.csv` records (schema 5 on) and the validity report weighs by
(health_orsc.core.survey).

Example:
    picked = stratified_sample(decisions, SampleConfig(per_stratum=2, seed=0), ["self_harm"])
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from health_orsc.core.config import BuildConfig, SampleConfig
from health_orsc.core.records import STRATUM_LEVELS, Decision, Sampled, stratum_key, stratum_level
from health_orsc.core.stats import sample_size

# Nothing is known beforehand of how often the jury rejects a benign prompt: size the
# rejected strata for the widest interval.
REJECTED_EXPECTED_BENIGN = 0.5
# The rejections the sample draws from (with `sample.rejected`): the jury's, and an imported
# benchmark's harmful contrast prompts. Duplicates and unparseable items say nothing of the jury.
SAMPLED_REJECTIONS = ("jury_harmful", "source_harmful")
T = TypeVar("T")


def samples_rejected(d: Decision, cfg: SampleConfig) -> bool:
    return cfg.rejected and not d.kept and d.reason in SAMPLED_REJECTIONS


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


def uncertainty(d: Decision, thresholds: dict[str, float]) -> float:
    """How unsure the jury was of `d`, from 0 (every juror sure, all agreeing) to 1. Each
    juror says how harmful it finds the prompt on a 0-1 scale with its decision point at 0.5:
    a score juror's P(harmful) mapped piecewise-linearly so its `threshold` lands on 0.5, a
    verdict juror's label as 0 or 1, an unparseable vote 0.5. The jury's uncertainty is
    1 - |2 m - 1| for their mean m."""
    says = []
    for v in d.votes:
        t = thresholds.get(v.juror)
        if v.p_harmful is not None and t is not None:
            p = v.p_harmful
            says.append(0.5 * p / t if p < t else 0.5 + (0.5 * (p - t) / (1 - t) if t < 1 else 0.5))
        else:
            says.append({"harmful": 1.0, "benign": 0.0}.get(v.label, 0.5))
    if not says:
        return 0.0
    return 1 - abs(2 * sum(says) / len(says) - 1)


def proportional_probabilities(sizes: list[float], n: float) -> list[float]:
    """Inclusion probabilities proportional to `sizes` that sum to `n` (at most len(sizes)),
    each capped at 1: an item whose share would reach 1 is taken for certain and the rest
    share what is left."""
    certain: set[int] = set()
    while True:
        rest = [i for i in range(len(sizes)) if i not in certain]
        left, total = n - len(certain), sum(sizes[i] for i in rest)
        if not rest or left <= 0 or total <= 0:
            return [1.0 if i in certain else 0.0 for i in range(len(sizes))]
        more = {i for i in rest if left * sizes[i] / total >= 1}
        if not more:
            return [1.0 if i in certain else left * sizes[i] / total for i in range(len(sizes))]
        certain |= more


def uniform(label: str) -> float:
    """A number in [0, 1) fixed by `label` (an item's draw in Poisson sampling)."""
    return int(hashlib.sha256(label.encode()).hexdigest()[:15], 16) / 16**15


def juror_thresholds(cfg: BuildConfig) -> dict[str, float]:
    """Each score juror's threshold (what `uncertainty` measures distance from)."""
    return {j: cfg.roles[j].threshold for j in cfg.jury.jurors if j in cfg.roles and cfg.roles[j].scored}


def sampling_strata(decisions: list[Decision], cfg: SampleConfig,
                    order: list[str]) -> list[tuple[tuple[str, str, str], list[Decision]]]:
    """The strata the sample draws from, (source, category, level) -> members, in the
    sample's order: kept strata first, then by `order` (the categories in taxonomy order)
    and level."""
    strata: dict[tuple[str, str, str], list[Decision]] = defaultdict(list)
    for d in decisions:
        if d.kept or samples_rejected(d, cfg):
            strata[(d.source, d.candidate.category, d.candidate.level)].append(d)
    return [(key, strata[key]) for key in sorted(strata, key=lambda k: (
        k[0] != "kept", order.index(k[1]), STRATUM_LEVELS.index(stratum_level(k[2]))))]


def first_probabilities(members: list[Decision], kept: bool, cfg: SampleConfig,
                        thresholds: dict[str, float]) -> dict[str, float]:
    """Each member's inclusion probability in the first sample (by candidate id), drawn or not."""
    size = stratum_size(len(members), cfg, kept)
    if cfg.design == "uncertainty":
        return uncertainty_probabilities(members, size, cfg, thresholds)
    return {d.candidate.id: size / len(members) for d in members}


def stratified_sample(decisions: list[Decision], cfg: SampleConfig, order: list[str],
                      thresholds: dict[str, float] | None = None) -> list[Sampled]:
    """`order`: the categories in taxonomy order (the sample's order); `thresholds`: the
    score jurors' (`juror_thresholds`), for the `uncertainty` design."""
    picked: list[Sampled] = []
    for (source, category, level), members in sampling_strata(decisions, cfg, order):
        # Kept strata keep the seed string they always had, so older snapshots verify.
        label = f"{cfg.seed}:{category}:{level}"
        size = stratum_size(len(members), cfg, source == "kept")
        stratum = stratum_key(source, category, level)
        if cfg.design == "uncertainty":
            picked += _poisson(members, size, stratum, cfg, thresholds or {})
            continue
        picked += [Sampled(d, stratum, size / len(members)) for d in seeded_subset(
            members, size, label if source == "kept" else f"{source}:{label}", lambda d: d.candidate.id)]
    return picked


def uncertainty_probabilities(members: list[Decision], size: int, cfg: SampleConfig,
                              thresholds: dict[str, float]) -> dict[str, float]:
    """Each member's inclusion probability under the `uncertainty` design (by candidate id):
    proportional to floor + (1 - floor) x its uncertainty, `size` in all."""
    floor = cfg.uncertainty_floor
    ids = [d.candidate.id for d in members]
    sizes = [floor + (1 - floor) * uncertainty(d, thresholds) for d in members]
    return dict(zip(ids, proportional_probabilities(sizes, size), strict=True))


def _poisson(members: list[Decision], size: int, stratum: str, cfg: SampleConfig,
             thresholds: dict[str, float]) -> list[Sampled]:
    """The `uncertainty` design in one stratum: each item drawn on its own (Poisson sampling)."""
    ordered = sorted(members, key=lambda d: d.candidate.id)
    probability = uncertainty_probabilities(ordered, size, cfg, thresholds)
    return [Sampled(d, stratum, probability[d.candidate.id]) for d in ordered
            if uniform(f"{cfg.seed}:{stratum}:{d.candidate.id}") < probability[d.candidate.id]]
