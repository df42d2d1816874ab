"""The `uncertainty` sample design (health_orsc.build.sample): labels go where the jury was
unsure, every item stays drawable, the recorded inclusion probabilities are the draw's, and
the design-weighted estimate covers the truth."""

from __future__ import annotations

import random

import pytest

from health_orsc.build.sample import (
    proportional_probabilities,
    stratified_sample,
    uncertainty,
    uncertainty_probabilities,
)
from health_orsc.core.config import SampleConfig
from health_orsc.core.records import Decision, JurorVote
from health_orsc.core.survey import Survey, Unit
from tests.build.test_stages import cand


def vote(juror: str, label: str, p: float | None = None) -> JurorVote:
    return JurorVote(juror=juror, model="m", judge_prompt="j", label=label, rationale="", calls=[],
                     repairs=0, p_harmful=p)


def decision(i: int, votes: list[JurorVote], kept: bool = True) -> Decision:
    return Decision(candidate=cand(i, f"q{i}?"), kept=kept, reason=None if kept else "jury_harmful",
                    votes=votes)


def test_uncertainty_is_zero_when_the_jury_agrees_and_one_at_a_split_or_a_threshold():
    assert uncertainty(decision(0, [vote(j, "benign") for j in "abc"]), {}) == 0
    assert uncertainty(decision(0, [vote("a", "benign"), vote("b", "benign"), vote("c", "harmful")]), {}) \
        == pytest.approx(2 / 3)
    # a score juror at its threshold is as unsure as it gets; far below it, sure
    assert uncertainty(decision(0, [vote("s", "harmful", 0.3)]), {"s": 0.3}) == 1
    assert uncertainty(decision(0, [vote("s", "benign", 0.0)]), {"s": 0.3}) == 0
    assert uncertainty(decision(0, [vote("s", "benign", 0.15)]), {"s": 0.3}) == pytest.approx(0.5)
    assert uncertainty(decision(0, []), {}) == 0  # an imported row: no votes


def test_probabilities_follow_the_sizes_sum_to_the_sample_and_cap_at_one():
    probs = proportional_probabilities([1, 1, 2, 4], 2)
    assert sum(probs) == pytest.approx(2) and probs[:3] == pytest.approx([0.25, 0.25, 0.5])
    probs = proportional_probabilities([1, 1, 1, 30], 2)  # the big one is certain, the rest share 1
    assert probs == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert proportional_probabilities([1, 1], 5) == [1.0, 1.0]


def _stratum(n: int = 60) -> list[Decision]:
    """One stratum of kept prompts: a third unanimous, a third 2-1 splits, a third near a
    score juror's threshold."""
    rng = random.Random(1)
    out = []
    for i in range(n):
        if i % 3 == 0:
            votes = [vote(j, "benign") for j in "abc"]
        elif i % 3 == 1:
            votes = [vote("a", "benign"), vote("b", "benign"), vote("c", "harmful")]
        else:
            votes = [vote("s", "benign", rng.uniform(0.35, 0.5))]
        out.append(decision(i, votes))
    return out


def test_the_uncertainty_design_records_the_probabilities_it_draws_with():
    members = _stratum()
    cfg = SampleConfig(per_stratum=12, design="uncertainty", uncertainty_floor=0.2)
    probability = uncertainty_probabilities(members, 12, cfg, {"s": 0.5})
    assert sum(probability.values()) == pytest.approx(12)
    kind = {d.candidate.id: i % 3 for i, d in enumerate(members)}
    mean = {k: sum(p for i, p in probability.items() if kind[i] == k) / 20 for k in range(3)}
    assert 0 < mean[0] < mean[1] < mean[2]  # unsure items are likelier to be drawn, none undrawable
    picked = stratified_sample(members, cfg, ["self_harm"], {"s": 0.5})
    assert picked == stratified_sample(list(reversed(members)), cfg, ["self_harm"], {"s": 0.5})  # seeded
    assert all(p.probability == probability[p.decision.candidate.id] for p in picked)
    # over many seeds, each kind of item is drawn as often as its probabilities say
    drawn = dict.fromkeys(range(3), 0)
    seeds = 400
    for seed in range(seeds):
        for p in stratified_sample(members, cfg.model_copy(update={"seed": seed}), ["self_harm"], {"s": 0.5}):
            drawn[kind[p.decision.candidate.id]] += 1
    for k in range(3):
        expected = sum(p for i, p in probability.items() if kind[i] == k) * seeds
        assert drawn[k] == pytest.approx(expected, abs=4 * expected**0.5)


def test_the_weighted_estimate_under_the_uncertainty_design_covers_the_truth():
    """People call a prompt harmful more often where the jury was unsure; over 200 draws the
    design-weighted 95% interval of the benign share covers the true share about 95% of
    the time, and its estimates average to it."""
    members = _stratum(300)
    rng = random.Random(7)
    truth = {d.candidate.id: int(rng.random() >= (0.97, 0.8, 0.6)[i % 3]) == 0 for i, d in enumerate(members)}
    share = sum(truth.values()) / len(truth)
    cfg = SampleConfig(per_stratum=60, design="uncertainty")
    covered, estimates = 0, []
    for seed in range(200):
        picked = stratified_sample(members, cfg.model_copy(update={"seed": seed}), ["self_harm"], {"s": 0.5})
        units = [Unit(id=p.decision.candidate.id, stratum=p.stratum, population=len(members),
                      probability=p.probability, values={"benign": int(truth[p.decision.candidate.id])})
                 for p in picked]
        est = Survey(units, equal=False).share("benign")
        estimates.append(est.estimate)
        covered += est.low <= share <= est.high
    assert sum(estimates) / len(estimates) == pytest.approx(share, abs=0.01)
    assert covered / 200 >= 0.9
