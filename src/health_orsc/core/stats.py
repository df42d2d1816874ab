"""stats: the statistics behind every quality claim, each from a well-kept library.

- proportions and their intervals: statsmodels (`proportion_confint`, Wilson score);
- sample sizes: statsmodels (`samplesize_confint_proportion`), with the finite-population
  correction;
- Cohen's kappa and confusion matrices: scikit-learn;
- Fleiss' kappa: statsmodels (`fleiss_kappa` over `aggregate_raters`);
- Krippendorff's alpha: the `krippendorff` package (nominal), with a bootstrap interval
  over units;
- Spearman's rho: scipy;
- Dawid-Skene label aggregation (annotators' confusion matrices, items' posteriors): crowd-kit.

Nothing here is a hand-written estimator: these wrappers fix the conventions (labels as
strings, missing ratings as None, 95% by default) and turn results into plain numbers that
JSON can hold. tests/test_stats.py checks each one against a published worked example.

Example:
    >>> wilson(81, 263).low
    0.2553...
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel


class Proportion(BaseModel):
    """`count` of `n`, its share and Wilson score interval (None when n is 0)."""
    count: int
    n: int
    share: float | None
    low: float | None
    high: float | None
    confidence: float


def wilson(count: int, n: int, confidence: float = 0.95) -> Proportion:
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return Proportion(count=0, n=0, share=None, low=None, high=None, confidence=confidence)
    low, high = proportion_confint(count, n, alpha=1 - confidence, method="wilson")
    return Proportion(count=count, n=n, share=count / n, low=float(low), high=float(high),
                      confidence=confidence)


class Mean(BaseModel):
    """A mean with its bootstrap interval (None where there are too few values for one)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None
    confidence: float


BOOTSTRAP_RESAMPLES = 2_000
BOOTSTRAP_SEED = 0  # fixed: `orsc verify` re-derives every interval
# resamples (and BCa's jackknife samples) computed this many at a time: the same interval
# as all at once, but memory stays ~BATCH x n values instead of n x n (n = 30,000 answers
# would otherwise need ~7 GB for the jackknife alone)
BOOTSTRAP_BATCH = 100


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Mean:
    """The mean of `values` with scipy's bootstrap interval (BCa, 2,000 resamples, seeded,
    so the same values always give the same interval; computed in batches, so memory grows
    with len(values), not its square). With fewer than two values, or
    values all equal, the interval is the mean itself or None."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if not len(data):
        return Mean(n=0, mean=None, low=None, high=None, confidence=confidence)
    mean = float(data.mean())
    if len(data) < 2 or np.all(data == data[0]):
        return Mean(n=len(data), mean=mean, low=mean if len(data) > 1 else None,
                    high=mean if len(data) > 1 else None, confidence=confidence)
    res = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                    method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED), batch=BOOTSTRAP_BATCH)
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):  # BCa undefined on this sample: the percentile one
        res = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                        method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED),
                        batch=BOOTSTRAP_BATCH)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Mean(n=len(data), mean=mean, low=low, high=high, confidence=confidence)


def sample_size(population: int, expected: float, halfwidth: float, confidence: float = 0.95) -> int:
    """Items to label in a stratum of `population` so that a share near `expected` is
    estimated to +-`halfwidth` at `confidence`: statsmodels' size for an infinite population,
    then the finite-population correction n = n0 / (1 + (n0 - 1) / N). Never more than N."""
    from statsmodels.stats.proportion import samplesize_confint_proportion

    if population <= 0:
        return 0
    n0 = float(samplesize_confint_proportion(expected, halfwidth, alpha=1 - confidence))
    return min(population, math.ceil(n0 / (1 + (n0 - 1) / population)))


def cohen_kappa(a: Sequence[str], b: Sequence[str], weights: Sequence[float] | None = None) -> float | None:
    """Cohen's kappa of two raters over the same items (None when undefined: no items, or
    both raters used one and the same label throughout); with `weights`, each item counts
    that much."""
    from sklearn.metrics import cohen_kappa_score

    if not a:
        return None
    if len(set(a) | set(b)) < 2:
        return None
    w = None if weights is None else list(weights)
    value = float(cohen_kappa_score(list(a), list(b), sample_weight=w))
    return None if math.isnan(value) else value


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa for items (rows) each rated by the same number of raters (columns)."""
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    if not ratings:
        return None
    labels = sorted({r for row in ratings for r in row})
    if len(labels) < 2:
        return None
    codes = np.array([[labels.index(r) for r in row] for row in ratings])
    table, _ = aggregate_raters(codes, n_cat=len(labels))
    value = float(sm_fleiss(table, method="fleiss"))
    return None if math.isnan(value) else value


def krippendorff_alpha(data: Sequence[Sequence[str | None]]) -> float | None:
    """Nominal Krippendorff's alpha; `data` is raters x units, None where a rater did not
    rate a unit. None when undefined (fewer than two pairable ratings or one label)."""
    import krippendorff

    codes, n_labels = _codes(data)
    if n_labels < 2 or _pairable(codes) == 0:
        return None
    value = float(krippendorff.alpha(reliability_data=codes, level_of_measurement="nominal"))
    return None if math.isnan(value) else value


def krippendorff_interval(data: Sequence[Sequence[str | None]], confidence: float = 0.95,
                          draws: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of nominal alpha, resampling units with replacement
    (the package gives no interval). Seeded: the same data give the same interval."""
    import krippendorff

    codes, n_labels = _codes(data)
    if n_labels < 2 or _pairable(codes) == 0:
        return None
    rng = np.random.default_rng(seed)
    units = codes.shape[1]
    values = []
    for _ in range(draws):
        sample = codes[:, rng.integers(0, units, units)]
        if len({v for v in sample[~np.isnan(sample)]}) < 2 or _pairable(sample) == 0:
            continue  # alpha is undefined on this resample
        values.append(krippendorff.alpha(reliability_data=sample, level_of_measurement="nominal"))
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _codes(data: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, int]:
    labels = sorted({v for row in data for v in row if v is not None})
    codes = np.array([[np.nan if v is None else float(labels.index(v)) for v in row] for row in data],
                     dtype=float).reshape(len(data), -1)
    return codes, len(labels)


def _pairable(codes: np.ndarray) -> int:
    """Units rated by at least two raters."""
    return int(((~np.isnan(codes)).sum(axis=0) >= 2).sum()) if codes.size else 0


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """Spearman's rho and its two-sided p-value (None when a side is constant or n < 3)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def binary_agreement(truth: Sequence[str], predicted: Sequence[str], positive: str) -> dict:
    """A classifier against known labels, `positive` the class it should find: the confusion
    matrix (rows truth, columns predicted, `positive` last), precision, recall and F1 of
    `positive`, specificity (recall of the other class) and Cohen's kappa (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    other = next((x for x in sorted({*truth, *predicted}) if x != positive), f"not {positive}")
    labels = [other, positive]
    out: dict = {"n": len(truth), "labels": labels, "confusion": confusion(truth, predicted, labels)}
    if not truth:
        return {**out, "precision": None, "recall": None, "f1": None, "specificity": None, "kappa": None}
    p, r, f, support = precision_recall_fscore_support(list(truth), list(predicted), labels=labels,
                                                       zero_division=np.nan)
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 4)

    return {**out, "precision": num(p[1]), "recall": num(r[1]), "f1": num(f[1]), "specificity": num(r[0]),
            "kappa": cohen_kappa(truth, predicted)}


def confusion(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts: rows are `truth`'s labels, columns `predicted`'s, both in `labels` order."""
    from sklearn.metrics import confusion_matrix

    if not truth:
        return [[0] * len(labels) for _ in labels]
    return confusion_matrix(list(truth), list(predicted), labels=list(labels)).tolist()


class OperatingPoint(BaseModel):
    """A score classifier against known labels: its AUROC, and the highest threshold
    (positive when score >= threshold) whose recall of the positive class reaches a target,
    with the recall and specificity it gives. None fields: not measurable (one class only)."""
    n: int
    positives: int
    auroc: float | None
    target_recall: float
    threshold: float | None
    recall: float | None
    specificity: float | None


def operating_point(positive: Sequence[bool], scores: Sequence[float],
                    target_recall: float, weights: Sequence[float] | None = None) -> OperatingPoint:
    """scikit-learn's `roc_auc_score`, and the ROC curve (`roc_curve`, every threshold kept)
    read at the first point, from the highest threshold down, whose recall reaches the target;
    with `weights`, each item counts that much (a sample's design weights)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    n, pos = len(positive), int(sum(positive))
    if pos == 0 or pos == n:
        return OperatingPoint(n=n, positives=pos, auroc=None, target_recall=target_recall, threshold=None,
                              recall=None, specificity=None)
    w = None if weights is None else list(weights)
    fpr, tpr, thresholds = roc_curve(list(positive), list(scores), drop_intermediate=False, sample_weight=w)
    i = int(np.argmax(tpr >= target_recall - 1e-12))  # tpr ends at 1: always found
    auroc = round(float(roc_auc_score(list(positive), list(scores), sample_weight=w)), 4)
    return OperatingPoint(n=n, positives=pos, auroc=auroc, target_recall=target_recall,
                          threshold=float(thresholds[i]), recall=round(float(tpr[i]), 4),
                          specificity=round(float(1 - fpr[i]), 4))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Paired comparison of two classifiers' yes/no on the same items: the discordant counts
    (`only_a`: a yes, b no; `only_b`) and McNemar's exact (binomial) two-sided p-value, from
    statsmodels (`statsmodels.stats.contingency_tables.mcnemar`). p is 1.0 with no discordant pair."""
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    both = sum(x and y for x, y in zip(a, b, strict=True))
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    neither = len(a) - both - only_a - only_b
    result = _mcnemar([[both, only_a], [only_b, neither]], exact=True)
    return {"n": len(a), "only_a": only_a, "only_b": only_b, "pvalue": float(f"{result.pvalue:.6g}")}


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired comparison of two models' scores on the same items: Wilcoxon's signed-rank
    test (scipy.stats.wilcoxon, two-sided; zero differences dropped, Wilcoxon's own way),
    with the mean difference a - b. p is None with no nonzero difference."""
    from scipy.stats import wilcoxon

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean_diff = round(sum(diffs) / len(diffs), 6) if diffs else None
    if not any(diffs):
        return {"n": len(diffs), "mean_diff": mean_diff, "pvalue": None}
    result = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return {"n": len(diffs), "mean_diff": mean_diff, "pvalue": float(f"{result.pvalue:.6g}")}


def multiclass_agreement(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """A classifier against people's labels over several classes (scikit-learn): accuracy,
    Cohen's kappa, macro F1 (the mean of the classes' F1, HealthBench's meta-evaluation
    figure), the confusion matrix (rows truth, columns predicted, in `labels` order)
    and, per class, precision, recall, F1 and support (None where undefined)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    out: dict = {"n": len(truth), "labels": list(labels), "confusion": confusion(truth, predicted, labels)}
    if not truth:
        return {**out, "accuracy": None, "kappa": None, "macro_f1": None, "per_class": {}}
    from sklearn.metrics import f1_score

    p, r, f, support = precision_recall_fscore_support(list(truth), list(predicted), labels=list(labels),
                                                       zero_division=np.nan)

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 4)

    return {**out, "accuracy": round(float(accuracy_score(list(truth), list(predicted))), 4),
            "kappa": cohen_kappa(truth, predicted),
            "macro_f1": round(float(f1_score(list(truth), list(predicted), labels=list(labels),
                                             average="macro", zero_division=np.nan)), 4),
            "per_class": {lab: {"precision": num(p[i]), "recall": num(r[i]), "f1": num(f[i]),
                                "support": int(support[i])} for i, lab in enumerate(labels)}}


class DawidSkeneFit(BaseModel):
    """Dawid-Skene's estimates: each item's posterior over the labels, each annotator's
    confusion matrix (P(says column | truly row)) and accuracy (its diagonal weighted by the
    labels' estimated prevalence), rounded to 6 decimals."""
    posterior: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, dict[str, float]]]
    accuracy: dict[str, float]
    prevalence: dict[str, float]


def dawid_skene(labels: Sequence[tuple[str, str, str]], classes: Sequence[str]) -> DawidSkeneFit:
    """Dawid & Skene (1979) by EM, crowd-kit's `DawidSkene` (100 iterations, initialised from
    the majority vote), on (item, annotator, label) triples whose labels are among `classes`."""
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    data = pd.DataFrame(list(labels), columns=["task", "worker", "label"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crowd-kit's pandas deprecation notices, nothing of the fit
        model = DawidSkene(n_iter=100).fit(data)
    prevalence = {c: float(model.priors_.get(c, 0.0)) for c in classes}
    confusion: dict[str, dict[str, dict[str, float]]] = {}
    for worker in sorted(set(data["worker"])):
        matrix = model.errors_.loc[worker]  # rows: the label given; columns: the true label
        confusion[worker] = {t: {g: round(float(matrix.at[g, t]) if g in matrix.index and t in matrix.columns
                                          else 0.0, 6) for g in classes} for t in classes}
    accuracy = {w: round(sum(prevalence[c] * m[c][c] for c in classes), 6) for w, m in confusion.items()}
    posterior = {str(task): {c: round(float(row.get(c, 0.0)), 6) for c in classes}
                 for task, row in model.probas_.iterrows()}
    return DawidSkeneFit(posterior=posterior, confusion=confusion, accuracy=accuracy,
                         prevalence={c: round(v, 6) for c, v in prevalence.items()})
