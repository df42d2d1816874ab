"""Design-based estimates (health_orsc.core.survey) against a hand computation on a worked
example and against brute-force enumeration of every sample a small design can draw."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from scipy import stats

from health_orsc.core.survey import Survey, Unit


def units(strata: dict[str, tuple[int, list[int | None]]], domain: str = "x") -> list[Unit]:
    """Stratum -> (its population N, the 0/1 labels of its sampled items; None: undecided),
    each stratum a simple random sample of its N."""
    return [Unit(id=f"{h}{i}", stratum=h, population=n, probability=len(ys) / n,
                 values=None if y is None else {"benign": y}, domains={"source": "kept", "category": domain})
            for h, (n, ys) in strata.items() for i, y in enumerate(ys)]


def korn_graubard(p: float, se: float, n: int, df: int, confidence: float) -> tuple[float, float]:
    """NCHS's Korn-Graubard interval (Parker et al. 2017): Clopper-Pearson at the effective
    sample size p(1-p)/se^2, adjusted by (t_{n-1} / t_df)^2 and capped at n."""
    t = (stats.t.ppf((1 + confidence) / 2, n - 1) / stats.t.ppf((1 + confidence) / 2, df)) ** 2
    size = min(n, p * (1 - p) / se**2 * t)
    x = size * p
    return (stats.beta.ppf((1 - confidence) / 2, x, size - x + 1),
            stats.beta.ppf((1 + confidence) / 2, x + 1, size - x))


def test_a_worked_example_matches_the_stratified_estimator_by_hand():
    # Three strata of 10, 6 and 4 kept prompts; 4, 3 and all 4 labelled.
    design = {"A": (10, [1, 1, 1, 0]), "B": (6, [1, 0, 0]), "C": (4, [1, 1, 1, 1])}
    est = Survey(units(design), equal=True).share("benign", {"source": "kept"})
    # p = sum N_h p_h / N = (10 * 3/4 + 6 * 1/3 + 4 * 1) / 20
    assert est.estimate == pytest.approx(0.675)
    # V = sum (N_h / N)^2 (1 - n_h / N_h) s_h^2 / n_h, s_h^2 = p_h (1 - p_h) n_h / (n_h - 1);
    # the census stratum C adds nothing
    var = (0.5**2 * (1 - 4 / 10) * (0.75 * 0.25 * 4 / 3) / 4
           + 0.3**2 * (1 - 3 / 6) * (1 / 3 * 2 / 3 * 3 / 2) / 3)
    assert var == pytest.approx(0.014375)
    assert est.se == pytest.approx(var**0.5, abs=1e-6)
    assert (est.df, est.n) == (11 - 3, 11)  # labelled items minus strata
    low, high = korn_graubard(0.675, var**0.5, 11, 8, 0.95)
    assert (est.low, est.high) == (pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))
    # the unweighted pool of the 11 labels would say 8/11 = 0.727: small C counts too much
    assert est.estimate != pytest.approx(8 / 11)


def test_an_undecided_item_gives_its_weight_to_its_stratum():
    decided = Survey(units({"A": (10, [1, 1, 1, 0]), "B": (6, [1, 0, 0])}), equal=True)
    one_more = Survey(units({"A": (10, [1, 1, 1, 0, None]), "B": (6, [1, 0, 0])}), equal=True)
    a = decided.share("benign", {"source": "kept"})
    b = one_more.share("benign", {"source": "kept"})
    assert a.estimate == b.estimate and a.n == b.n == 7


def test_a_stratum_nobody_decided_is_reported_unmeasured():
    survey = Survey(units({"A": (10, [1, 0]), "B": (6, [None, None])}), equal=True)
    assert survey.unmeasured == {"B": 6}
    assert survey.share("benign", {"source": "kept"}).estimate == 0.5


def test_no_labelled_item_in_a_domain_gives_no_estimate():
    survey = Survey(units({"A": (10, [1, 0])}, domain="x"), equal=True)
    est = survey.share("benign", {"category": "y"})
    assert est.n == 0 and est.estimate is None and est.low is None


def test_a_share_of_zero_has_an_interval_above_zero():
    est = Survey(units({"A": (10, [0, 0, 0]), "B": (8, [0, 0])}), equal=True).share("benign")
    assert est.estimate == 0 and est.low == 0 and 0 < est.high < 1


def test_brute_force_every_sample_the_estimate_is_unbiased_and_its_variance_too():
    """Every stratified sample of 2 of 5 and 2 of 4: the estimate averages to the population's
    share and the squared standard error to the estimate's variance (stratified simple random
    sampling with the finite-population correction is exactly unbiased for both)."""
    population = {"A": [1, 1, 0, 1, 1], "B": [1, 0, 0, 1]}
    truth = Fraction(sum(map(sum, population.values())), sum(map(len, population.values())))
    estimates, variances = [], []
    for a in itertools.combinations(population["A"], 2):
        for b in itertools.combinations(population["B"], 2):
            est = Survey(units({"A": (5, list(a)), "B": (4, list(b))}), equal=True).share("benign")
            estimates.append(est.estimate)
            variances.append(est.se**2)
    assert len(estimates) == 10 * 6
    mean = sum(estimates) / len(estimates)
    assert mean == pytest.approx(float(truth), abs=1e-6)
    variance = sum((e - mean) ** 2 for e in estimates) / len(estimates)
    assert sum(variances) / len(variances) == pytest.approx(variance, rel=1e-4)
