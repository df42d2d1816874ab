"""Each statistic against a published worked example, not against this code's own output."""

import math

import pytest

from health_orsc.core.stats import (
    binary_agreement,
    cohen_kappa,
    confusion,
    fleiss_kappa,
    krippendorff_alpha,
    krippendorff_interval,
    mcnemar,
    operating_point,
    sample_size,
    spearman,
    wilson,
)


@pytest.mark.parametrize(("count", "n", "low", "high"), [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion",
    # Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe_1998(count, n, low, high):
    p = wilson(count, n)
    assert (round(p.low, 4), round(p.high, 4)) == (low, high)
    assert p.share == count / n and p.confidence == 0.95


def test_wilson_of_nothing_is_empty_not_zero():
    p = wilson(0, 0)
    assert p.n == 0 and p.share is None and p.low is None and p.high is None


def test_sample_size_for_a_halfwidth_with_finite_population():
    # n0 = z^2 p (1 - p) / h^2 = 1.959964^2 * 0.9 * 0.1 / 0.05^2 = 138.3 -> 139 (infinite N);
    # with N = 500: 138.29 / (1 + 137.29 / 500) = 108.5 -> 109.
    assert sample_size(10**9, 0.9, 0.05) == 139
    assert sample_size(500, 0.9, 0.05) == 109
    assert sample_size(30, 0.9, 0.05) <= 30
    assert sample_size(0, 0.9, 0.05) == 0
    # a narrower interval needs more items
    assert sample_size(10**9, 0.9, 0.025) > sample_size(10**9, 0.9, 0.05)


def test_cohen_kappa_on_the_textbook_two_by_two():
    # 50 proposals read by two readers: both yes 20, A yes / B no 5, A no / B yes 10,
    # both no 15. p_o = 0.70, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.50, kappa = 0.40
    # (the worked example of Cohen's kappa in Wikipedia, after Cohen 1960).
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.40)
    assert confusion(a, b, ["yes", "no"]) == [[20, 5], [10, 15]]


def test_cohen_kappa_is_undefined_without_variation():
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["benign"] * 3, ["benign"] * 3) is None


# Fleiss (1971), "Measuring nominal scale agreement among many raters", Psychological
# Bulletin 76:378-382: 30 patients, 6 psychiatrists, 5 diagnoses (1 depression,
# 2 personality disorder, 3 schizophrenia, 4 neurosis, 5 other); kappa = 0.430.
# The ratings as R's irr package ships them (`data(diagnoses)`).
FLEISS_1971 = """
4 4 4 4 4 4|2 2 2 5 5 5|2 3 3 3 3 5|5 5 5 5 5 5|2 2 2 4 4 4|1 1 3 3 3 3|3 3 3 3 5 5|1 1 3 3 3 4
1 1 4 4 4 4|5 5 5 5 5 5|1 4 4 4 4 4|1 2 4 4 4 4|2 2 2 3 3 3|1 4 4 4 4 4|2 2 4 4 4 5|3 3 3 3 3 5
1 1 1 4 5 5|1 1 1 1 1 2|2 2 4 4 4 4|1 3 3 5 5 5|5 5 5 5 5 5|2 4 4 4 4 4|2 2 4 5 5 5|1 1 4 4 4 4
1 4 4 4 4 5|2 2 2 2 2 4|1 1 1 1 5 5|2 2 4 4 4 4|1 3 3 3 3 3|5 5 5 5 5 5
"""
DIAGNOSES = {"1": "depression", "2": "personality disorder", "3": "schizophrenia", "4": "neurosis",
             "5": "other"}


def test_fleiss_kappa_matches_fleiss_1971():
    patients = [[DIAGNOSES[d] for d in row.split()] for row in FLEISS_1971.replace("\n", "|").split("|")
                if row.strip()]
    assert len(patients) == 30 and all(len(p) == 6 for p in patients)
    assert round(fleiss_kappa(patients), 3) == 0.430


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
# observers, twelve units, missing values; nominal alpha = 0.743.
_ = None
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]


def test_krippendorff_alpha_matches_krippendorff_2011():
    data = [[None if v is None else f"value {v}" for v in row] for row in KRIPPENDORFF_2011]
    assert round(krippendorff_alpha(data), 3) == 0.743
    low, high = krippendorff_interval(data, draws=500)
    assert low < 0.743 < high and 0 < high - low < 1
    assert krippendorff_interval(data, draws=500) == (low, high)  # seeded


def test_krippendorff_alpha_is_undefined_without_pairs_or_variation():
    assert krippendorff_alpha([["benign", None], [None, "harmful"]]) is None  # no unit rated twice
    assert krippendorff_alpha([["benign", "benign"], ["benign", "benign"]]) is None


def test_spearman_rho_on_a_textbook_example():
    # IQ against hours of TV per week, ten people: rho = -29/165 = -0.1758 (the worked
    # example of Spearman's rank correlation in Wikipedia).
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    rho, p = spearman(iq, tv)
    assert rho == pytest.approx(-29 / 165) and 0 < p < 1
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert not math.isnan(spearman([1, 2, 3], [3, 2, 1])[0])


def test_binary_agreement_on_the_textbook_two_by_two():
    # the same 50 proposals, "yes" the class to find: TP 20, FN 5, FP 10, TN 15:
    # precision 20/30, recall 20/25, specificity 15/25, F1 = 2PR/(P+R) = 8/11, kappa 0.40
    truth = ["yes"] * 25 + ["no"] * 25
    predicted = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    m = binary_agreement(truth, predicted, "yes")
    assert m["labels"] == ["no", "yes"] and m["confusion"] == [[15, 10], [5, 20]]
    assert (m["precision"], m["recall"], m["specificity"]) == (round(20 / 30, 4), 0.8, 0.6)
    assert m["f1"] == round(8 / 11, 4) and m["kappa"] == pytest.approx(0.40)


def test_operating_point_on_scikit_learns_roc_example():
    """scikit-learn's documented ROC example: y = [1, 1, 2, 2] (2 positive), scores
    [0.1, 0.4, 0.35, 0.8]: AUROC 0.75; tpr [0, .5, .5, 1, 1], fpr [0, 0, .5, .5, 1] at
    thresholds [inf, .8, .4, .35, .1]."""
    positive, scores = [False, False, True, True], [0.1, 0.4, 0.35, 0.8]
    full = operating_point(positive, scores, 1.0)
    assert full.auroc == 0.75 and full.threshold == 0.35 and full.recall == 1.0 and full.specificity == 0.5
    half = operating_point(positive, scores, 0.5)
    assert half.threshold == 0.8 and half.recall == 0.5 and half.specificity == 1.0
    assert operating_point([True, True], [0.2, 0.9], 0.9).auroc is None  # one class: not measurable


def test_mcnemar_exact_on_fagerland_et_al_2013():
    """Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: airway
    hyper-responsiveness before and after stem cell transplantation (Bentur et al.), 21
    children, discordant pairs 1 and 7: the exact conditional McNemar p-value is 0.070."""
    before = [True] * 1 + [True] * 1 + [False] * 7 + [False] * 12
    after = [True] * 1 + [False] * 1 + [True] * 7 + [False] * 12
    result = mcnemar(before, after)
    assert (result["only_a"], result["only_b"]) == (1, 7)
    assert result["pvalue"] == pytest.approx(0.0703, abs=5e-5)


def test_weights_count_an_item_as_often_as_its_weight():
    """A design weight of 2 counts an item twice: kappa and the operating point on weighted
    items equal those on the items written out that many times (scikit-learn's sample_weight)."""
    truth = ["harmful", "benign", "harmful", "benign", "benign"]
    said = ["harmful", "benign", "benign", "harmful", "benign"]
    scores = [0.9, 0.2, 0.4, 0.6, 0.1]
    weights = [2, 1, 3, 1, 2]
    rep = [i for i, w in enumerate(weights) for _ in range(w)]
    assert cohen_kappa(truth, said, weights) == pytest.approx(
        cohen_kappa([truth[i] for i in rep], [said[i] for i in rep]))
    weighted = operating_point([t == "harmful" for t in truth], scores, 0.8, weights)
    repeated = operating_point([truth[i] == "harmful" for i in rep], [scores[i] for i in rep], 0.8)
    assert (weighted.auroc, weighted.threshold, weighted.recall, weighted.specificity) == (
        repeated.auroc, repeated.threshold, repeated.recall, repeated.specificity)
