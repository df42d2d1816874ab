"""validity: what people's labels say about a snapshot, and the snapshot that records them.

`validity_report` measures, from the labels (health_orsc.validation.labels) and the snapshot's rows:
- benign precision per category x level, per category and overall: the share of labelled
  kept prompts whose majority label is benign, with its Wilson interval, and the harmful
  prompts it implies are left in the stratum;
- the jury against people on the sampled kept and rejected items: Cohen's kappa per juror
  and for the k-of-n decision, its precision and recall on "benign", a confusion matrix;
- agreement between annotators: Krippendorff's alpha (nominal) with a bootstrap interval,
  Cohen's kappa per pair, Fleiss' kappa over the items everyone labelled (3+ annotators),
  and the items they disagree on;
- the intended level against people's ambiguity ratings: a table and Spearman's rho.

An item's majority label is benign (or harmful) when more of its labels say so than the
other; `unsure` labels do not vote, and a tie leaves it undecided (counted, not used).
Every statistic comes from health_orsc.core.stats (statsmodels, scikit-learn, krippendorff, scipy).

`write_validation_snapshot` writes a new immutable snapshot: the base's data files byte for
byte, `validation/labels.jsonl`, `validation/report.json`, the card with a Validation section,
and a MANIFEST naming the base and its digest. `orsc verify` recomputes the report.

Example:
    report = validity_report(rows, sample, labels, min_precision=0.9, confidence=0.95)
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

from pydantic import BaseModel

from health_orsc.build.sample import SAMPLED_REJECTIONS
from health_orsc.core.errors import InputError
from health_orsc.core.records import (
    HARM_LABELS,
    LEVELS,
    Decision,
    SnapshotRow,
    StageCounts,
    stratum_key,
    stratum_level,
)
from health_orsc.core.stats import (
    cohen_kappa,
    confusion,
    dawid_skene,
    fleiss_kappa,
    krippendorff_alpha,
    krippendorff_interval,
    spearman,
    wilson,
)
from health_orsc.core.survey import Estimate, Survey, Unit
from health_orsc.snapshot.compat import publishable
from health_orsc.snapshot.croissant import write_croissant
from health_orsc.snapshot.rowfiles import SnapshotFiles, write_row_files
from health_orsc.snapshot.store import (
    CARD,
    LABELS_FILE,
    MANIFEST,
    REPORT_FILE,
    RUBRIC_REVIEWS_FILE,
    SAMPLE,
    BaseRef,
    Manifest,
    SnapshotMeta,
    clone_metadata,
    read_jsonl_rows,
    write_manifest,
    writing_snapshot,
)
from health_orsc.snapshot.writer import RubricUse, dataset_card, row_sort_key
from health_orsc.validation.labels import LabelRow, LabelSet
from health_orsc.validation.rubric_review import ReviewRow, review_summary

DECISIONS = HARM_LABELS
R = TypeVar("R", SnapshotRow, Decision)
DESIGN_METHOD = ("each decided item weighs 1 / its inclusion probability, its stratum's undecided items'"
                 " weight moved to it; Taylor-linearised variance over the strata (finite-population"
                 " corrected for a stratified draw); Korn-Graubard intervals; a stratum with one decided"
                 " item takes its variance from the overall mean (svy singleton 'center')")
DAWID_SKENE_RULE = ("Dawid-Skene's most probable label (crowd-kit: each annotator's confusion matrix and"
                    " each item's posterior estimated together by EM); unsure labels do not count; a"
                    " posterior of exactly one half leaves the item undecided")
# An annotator is flagged when their estimated accuracy is both this far below the others'
# median and below FLAG_UNDER: one slip among a handful of labels moves an estimate by
# 0.2-0.3, which is not what a flag should say.
FLAG_BELOW = 0.25
FLAG_UNDER = 0.6
MAJORITY_RULE = ("majority of benign/harmful labels; unsure labels do not vote; a tie leaves the"
                 " item undecided")


def majority(labels: list[str]) -> str | None:
    votes = Counter(label for label in labels if label in DECISIONS)
    if votes["benign"] == votes["harmful"]:
        return None
    return "benign" if votes["benign"] > votes["harmful"] else "harmful"


def stored_labels(snapshot: Path) -> LabelSet:
    """A validation snapshot's labels (validation/labels.jsonl)."""
    return LabelSet(rows=[LabelRow.model_validate(r) for r in read_jsonl_rows(snapshot / LABELS_FILE)])


def decided_labels(snapshot: Path, report: dict[str, Any]) -> dict[str, str | None]:
    """A validation snapshot's items' labels, made as its report made them (`aggregate_of`)."""
    decided, _ = item_labels(by_item(stored_labels(snapshot)), aggregate_of(report))
    return decided


def with_counts(rows: list[LabelRow], report: dict[str, Any]) -> LabelSet:
    """A validation snapshot's labels (`rows`) with the counts its report kept of the files
    they came from: what `orsc validate` read."""
    counts = report.get("labels", {}) if isinstance(report, dict) else {}
    return LabelSet(rows=rows, unlabelled=counts.get("unlabelled", 0),
                    cancelled=counts.get("cancelled", 0), repeated=counts.get("repeated", 0),
                    files=counts.get("files", []))


def by_item(labels: LabelSet) -> dict[str, list[LabelRow]]:
    per_item: dict[str, list[LabelRow]] = defaultdict(list)
    for row in labels.rows:
        per_item[row.prompt_id].append(row)
    return per_item


def majorities_of(per_item: dict[str, list[LabelRow]]) -> dict[str, str | None]:
    """Each labelled item's majority label (None: undecided)."""
    return {pid: majority([r.label for r in rows]) for pid, rows in per_item.items()}


def item_labels(per_item: dict[str, list[LabelRow]],
                aggregate: str = "majority") -> tuple[dict[str, str | None], dict[str, Any] | None]:
    """Each labelled item's label (None: undecided) by `aggregate` (`majority` or
    `dawid-skene`), and, for Dawid-Skene, what it estimated (the report's `aggregation`)."""
    majorities = majorities_of(per_item)
    if aggregate == "majority":
        return majorities, None
    triples = [(pid, r.annotator, r.label) for pid, rows in per_item.items() for r in rows
               if r.label in DECISIONS]
    decided: dict[str, str | None] = dict.fromkeys(per_item)
    fit = dawid_skene(triples, DECISIONS) if triples else None
    posterior = fit.posterior if fit else {}
    for pid, post in posterior.items():
        decided[pid] = None if post["benign"] == post["harmful"] else max(post, key=post.get)
    given = Counter(a for _, a, _ in triples)
    accuracy = fit.accuracy if fit else {}
    annotators = []
    for a in sorted(accuracy):
        others = [v for b, v in accuracy.items() if b != a]
        annotators.append({"annotator": a, "labels": given[a], "accuracy": accuracy[a],
                           "confusion": fit.confusion[a],
                           "flagged": bool(others) and accuracy[a] < min(median(others) - FLAG_BELOW,
                                                                         FLAG_UNDER)})
    return decided, {
        "method": "dawid-skene", "rule": DAWID_SKENE_RULE,
        "prevalence": fit.prevalence if fit else None, "annotators": annotators,
        "flag_rule": f"accuracy below {FLAG_UNDER} and more than {FLAG_BELOW} below the median of the"
                     " other annotators'",
        "differs_from_majority": [{"prompt_id": pid, "majority": majorities[pid], "dawid_skene": decided[pid],
                                   "p_benign": posterior.get(pid, {}).get("benign")}
                                  for pid in sorted(per_item) if decided[pid] != majorities[pid]],
    }


def _p(count: int, n: int, confidence: float) -> dict[str, Any]:
    return wilson(count, n, confidence).model_dump()



class LabelCounts(BaseModel):
    rows: int                 # labels read (one per annotator and item)
    items: int                # items with at least one label
    sample_items: int
    annotators: list[str]
    files: list[str]
    unlabelled: int
    cancelled: int
    repeated: int
    undecided: int            # items whose labels have no majority


class ValidityReport(BaseModel):
    """validation/report.json, as `validity_report` computes it: the labels read, benign
    precision per stratum, category and overall (with intervals), the jury against people,
    agreement among people, and the ambiguity ratings."""

    confidence: float
    majority_rule: str
    labels: LabelCounts
    precision: dict[str, Any]
    jury: dict[str, Any]
    agreement: dict[str, Any]
    ambiguity: dict[str, Any]
    rubrics: dict[str, Any] | None = None  # with rubric reviews (validation.rubric_review)
    weighted: dict[str, Any] | None = None  # design-based estimates (reports written before: none)
    aggregation: dict[str, Any] | None = None  # with --aggregate dawid-skene
    rounds: dict[str, Any] | None = None  # with rounds after the first (validation/rounds.py)


class ValidationResult(BaseModel):
    """What `orsc validate` wrote (and `--json` prints)."""

    snapshot: str             # the new validation snapshot
    digest: str
    report_file: str
    gated: int | None         # with --gate: kept prompts moved to rejected as human_harmful
    report: ValidityReport


def validity_report(rows: list[SnapshotRow], sample: list[dict[str, str]], labels: LabelSet,
                    min_precision: float, confidence: float,
                    reviews: list[ReviewRow] | None = None, weighted: bool = True,
                    aggregate: str = "majority", draws: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of `labels` on a snapshot's `rows` and `sample`, with intervals at
    `confidence` (the config's `sample.confidence`, the level the sample was sized for);
    with rubric `reviews`, their summary too. `weighted`: with the design-based estimates
    (`weighted`; reports written before them have none, and verify recomputes them so).
    `aggregate`: how an item's labels make its label (`item_labels`). `draws`: with rounds
    after the first (`sample` their items combined, validation/rounds.py), each later round's
    draw as `RoundDraw.record` gives it; the report then says where they left each stratum."""
    by_id = {r.id: r for r in rows}
    items = {s["id"]: s for s in sample}
    per_item = by_item(labels)
    majorities, aggregation = item_labels(per_item, aggregate)
    categories = list(dict.fromkeys(r.category for r in rows))
    population = Counter((r.category, r.level) for r in rows if r.reason is None)
    units = sample_units(stratum_sizes(rows), sample, majorities) if weighted or draws else []
    return {
        "confidence": confidence,
        "majority_rule": MAJORITY_RULE,
        "labels": {"rows": len(labels.rows), "items": len(per_item), "sample_items": len(items),
                   "annotators": sorted({r.annotator for r in labels.rows}), "files": labels.files,
                   "unlabelled": labels.unlabelled, "cancelled": labels.cancelled,
                   "repeated": labels.repeated,
                   "undecided": sum(1 for v in majorities.values() if v is None)},
        "precision": _precision(items, majorities, population, categories, min_precision, confidence),
        "jury": _jury(items, by_id, majorities, confidence),
        "agreement": _agreement(per_item, confidence),
        "ambiguity": _ambiguity(items, labels.rows),
        **({} if reviews is None else {"rubrics": review_summary(reviews, rows, confidence)}),
        **({"weighted": _weighted(units, categories, confidence)} if weighted else {}),
        **({} if aggregation is None else {"aggregation": aggregation}),
        **({"rounds": _rounds(units, sample, draws, confidence)} if draws else {}),
    }


def _precision(items, decided, population, categories, min_precision, confidence) -> dict[str, Any]:
    """Benign precision of the kept prompts, per stratum, per category and overall."""
    def figure(keys: list[tuple[str, str]]) -> dict[str, Any]:
        ids = [pid for pid, item in items.items()
               if item["source"] == "kept" and (item["category"], item["level"] or None) in keys]
        labelled = [pid for pid in ids if pid in decided]
        votes = Counter(decided[pid] for pid in labelled)
        n = votes["benign"] + votes["harmful"]
        p = wilson(votes["benign"], n, confidence)
        size = sum(population[k] for k in keys)
        left = None
        if p.n:
            left = {"estimate": round(size * (1 - p.share), 1), "low": round(size * (1 - p.high), 1),
                    "high": round(size * (1 - p.low), 1)}
        return {"kept": size, "sampled": len(ids), "labelled": len(labelled), "benign": votes["benign"],
                "harmful": votes["harmful"], "undecided": len(labelled) - n,
                "precision": p.model_dump(), "harmful_left": left}

    levels = (*LEVELS, None)  # None: rows without a level (imported), a stratum of their own
    strata = [{"category": c, "level": lvl, **figure([(c, lvl)])}
              for c in categories for lvl in levels if (c, lvl) in population]
    per_category = [{"category": c, **figure([(c, lvl) for lvl in levels])} for c in categories]
    overall = figure(list(population))
    below = [{"category": s["category"], "level": s["level"], "low": s["precision"]["low"]}
             for s in strata if s["precision"]["low"] is not None and s["precision"]["low"] < min_precision]
    unmeasured = [{"category": s["category"], "level": s["level"]}
                  for s in strata if s["precision"]["n"] == 0]
    return {"strata": strata, "categories": per_category, "overall": overall,
            "min_precision": min_precision, "below_min_precision": below, "unmeasured": unmeasured,
            "note": "category and overall figures pool their labelled items unweighted; strata"
                    " sampled at different rates weigh by their sample, not their size"}


def _jury(items, by_id, decided, confidence) -> dict[str, Any]:
    """The jury's decisions (kept = benign) and each juror's vote against the majority label."""
    ids = [pid for pid in items if decided.get(pid) is not None]
    people = [decided[pid] for pid in ids]
    jury = ["benign" if items[pid]["source"] == "kept" else "harmful" for pid in ids]
    kappas: dict[str, Any] = {"decision": cohen_kappa(people, jury)}
    jurors = sorted({v.juror for pid in ids for v in by_id[pid].votes})
    for juror in jurors:
        pairs = [(decided[pid], v.label) for pid in ids for v in by_id[pid].votes
                 if v.juror == juror and v.label in DECISIONS]
        kappas[juror] = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    kept_benign = sum(1 for p, j in zip(people, jury, strict=True) if p == j == "benign")
    return {"items": len(ids), "kappa": kappas,
            "benign_precision": _p(kept_benign, jury.count("benign"), confidence),
            "benign_recall": _p(kept_benign, people.count("benign"), confidence),
            "confusion": {"labels": list(DECISIONS), "rows": "people (majority)", "columns": "jury",
                          "matrix": confusion(people, jury, DECISIONS)},
            "note": "on the sample: kept and rejected items are sampled at different rates, so"
                    " these describe the sampled items, not the whole candidate pool"}


def stratum_sizes(records: list[SnapshotRow] | list[Decision]) -> Counter[str]:
    """Each sampling stratum's size in the snapshot (rows or decisions as before any gate):
    its kept ones, or the rejections the sample draws from."""
    sizes: Counter[str] = Counter()
    for r in records:
        if r.reason in (None, *SAMPLED_REJECTIONS):
            c = r.candidate if isinstance(r, Decision) else r
            sizes[stratum_key("kept" if r.reason is None else "rejected", c.category, c.level)] += 1
    return sizes


def sample_units(population: Counter[str], sample: list[dict[str, str]],
                 decided: dict[str, str | None]) -> list[Unit]:
    """The sample as survey units: each item's stratum, its stratum's size (`population`,
    `stratum_sizes`), its inclusion probability (recorded in the sample from schema 5 on;
    before, a stratified draw's n/N) and people's label of it (`decided`; None: undecided or
    unlabelled)."""
    drawn = Counter(stratum_key(s["source"], s["category"], s["level"] or None) for s in sample)
    units = []
    for i, s in enumerate(sample, start=2):
        stratum = stratum_key(s["source"], s["category"], s["level"] or None)
        recorded = s.get("inclusion_probability")
        if recorded is None:
            probability = drawn[stratum] / population[stratum]
        else:
            try:
                probability = float(recorded)
            except ValueError:
                probability = 0.0
            if not 0 < probability <= 1:
                raise InputError(SAMPLE, f"row {i}, inclusion_probability", f"{recorded!r} for item"
                                 f" {s['id']} is not a probability above 0",
                                 "restore the snapshot's validation sample (orsc verify finds the change)")
        label = decided.get(s["id"])
        units.append(Unit(id=s["id"], stratum=stratum, population=population[stratum],
                          probability=probability, values=None if label is None else {
                              "benign": int(label == "benign"), "kept": int(s["source"] == "kept"),
                              "rejected": int(s["source"] != "kept")},
                          domains={"category": s["category"], "source": s["source"]}))
    return units


def _weighted(units: list[Unit], categories: list[str], confidence: float) -> dict[str, Any]:
    """Design-based estimates (health_orsc.core.survey): each labelled item weighs 1 / its
    inclusion probability, so categories and the whole benchmark are estimated as the
    population they are, not as the pool of their labelled items."""
    survey = Survey(units, confidence=confidence)
    sizes: Counter[tuple[str, str]] = Counter()  # (source, category) -> population of its measured strata
    for _, source, category, size in {(u.stratum, u.domains["source"], u.domains["category"], u.population)
                                      for u in units if u.stratum not in survey.unmeasured}:
        sizes[(source, category)] += size

    def scaled(share: Estimate, size: int, complement: bool) -> dict[str, Any] | None:
        if share.estimate is None:
            return None
        f = (lambda x: 1 - x) if complement else (lambda x: x)
        ends = sorted(f(x) for x in (share.low, share.high)) if share.low is not None else [None, None]
        return {"estimate": round(size * f(share.estimate), 1),
                "low": None if ends[0] is None else round(size * ends[0], 1),
                "high": None if ends[1] is None else round(size * ends[1], 1)}

    def precision(category: str | None) -> dict[str, Any]:
        where = {"source": "kept", **({"category": category} if category else {})}
        share = survey.share("benign", where)
        size = sum(n for (src, c), n in sizes.items() if src == "kept" and category in (None, c))
        return {"measured_kept": size, "precision": share.model_dump(),
                "harmful_left": scaled(share, size, complement=True)}

    jury: dict[str, Any] = {}
    if any(u.domains["source"] == "rejected" for u in units):
        share = survey.share("benign", {"source": "rejected"})
        size = sum(n for (src, _), n in sizes.items() if src == "rejected")
        jury = {"rejections_benign": {"measured_rejected": size, "share": share.model_dump(),
                                      "benign_rejected": scaled(share, size, complement=False)},
                "false_rejection_rate": survey.share("rejected", {"benign": 1}).model_dump(),
                "harmful_kept_rate": survey.share("kept", {"benign": 0}).model_dump()}
    return {
        "design": {"strata": len({u.stratum for u in units}), "items": len(units),
                   "decided": sum(u.values is not None for u in units),
                   "unmeasured": [{"stratum": h, "population": n}
                                  for h, n in sorted(survey.unmeasured.items())],
                   "singletons": survey.singletons, "method": DESIGN_METHOD},
        "precision": {"categories": [{"category": c, **precision(c)} for c in categories],
                      "overall": precision(None)},
        "jury": jury,
    }


def stratum_status(units: list[Unit], confidence: float, target: float) -> list[dict[str, Any]]:
    """Per stratum of the sample, in its order: its size, items sampled and decided, the
    design-based interval of its benign share, and whether its half-width is within `target`
    (a stratum whose every item is decided is known exactly)."""
    survey = Survey([replace(u, domains={**u.domains, "stratum": u.stratum}) for u in units],
                    confidence=confidence)
    population = {u.stratum: u.population for u in units}
    sampled = Counter(u.stratum for u in units)
    decided = Counter(u.stratum for u in units if u.values is not None)
    out = []
    for h, size in population.items():
        share = survey.share("benign", {"stratum": h}) if decided[h] else None
        if decided[h] == size:
            halfwidth: float | None = 0.0
        elif share is None or share.low is None:
            halfwidth = None
        else:
            halfwidth = round((share.high - share.low) / 2, 6)
        out.append({"stratum": h, "population": size, "sampled": sampled[h], "decided": decided[h],
                    "benign": None if share is None else share.model_dump(), "halfwidth": halfwidth,
                    "met": halfwidth is not None and halfwidth <= target})
    return out


def _rounds(units: list[Unit], sample: list[dict[str, str]], draws: list[dict[str, Any]],
            confidence: float) -> dict[str, Any]:
    """Where the rounds left each stratum: its interval against the last round's target, and
    the labelled items each round added (validation/rounds.py)."""
    target = draws[-1]["target_halfwidth"]
    n = len(draws) + 1
    by_round: dict[str, Counter[int]] = defaultdict(Counter)
    for u, s in zip(units, sample, strict=True):
        if u.values is not None:
            by_round[u.stratum][int(s.get("round", 1))] += 1
    strata = [{**st, "decided_by_round": [by_round[st["stratum"]][k] for k in range(1, n + 1)]}
              for st in stratum_status(units, confidence, target)]
    return {"rounds": n, "target_halfwidth": target, "draws": draws, "strata": strata,
            "met": sum(st["met"] for st in strata),
            "items_by_round": [sum(1 for s in sample if int(s.get("round", 1)) == k)
                               for k in range(1, n + 1)],
            "rule": "a stratum's target is met when the half-width of its design-based interval (or"
                    " none, every item decided) is at most target_halfwidth; a round draws more items"
                    " only in strata where it is not"}


def _agreement(per_item: dict[str, list[LabelRow]], confidence: float) -> dict[str, Any]:
    annotators = sorted({r.annotator for rs in per_item.values() for r in rs})
    shared = {pid: {r.annotator: r.label for r in rs} for pid, rs in per_item.items() if len(rs) >= 2}
    units = sorted(shared)
    data = [[shared[u].get(a) for u in units] for a in annotators]
    alpha = krippendorff_alpha(data) if units else None
    interval = krippendorff_interval(data, confidence) if alpha is not None else None
    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        common = [u for u in units if a in shared[u] and b in shared[u]]
        if common:
            kappa = cohen_kappa([shared[u][a] for u in common], [shared[u][b] for u in common])
            pairs.append({"annotators": [a, b], "items": len(common), "kappa": kappa})
    everyone = [u for u in units if len(shared[u]) == len(annotators)]
    fleiss = None
    if len(annotators) >= 3 and everyone:
        fleiss = {"items": len(everyone), "kappa": fleiss_kappa([[shared[u][a] for a in annotators]
                                                                  for u in everyone])}
    disagree = [{"prompt_id": u, "labels": shared[u]} for u in units if len(set(shared[u].values())) > 1]
    return {"annotators": len(annotators), "items_labelled_twice_or_more": len(units),
            "raw_agreement": round(1 - len(disagree) / len(units), 4) if units else None,
            "krippendorff_alpha": alpha, "alpha_interval": list(interval) if interval else None,
            "cohen_kappa_pairs": pairs, "fleiss_kappa": fleiss, "disagreements": disagree}


def _ambiguity(items, rows: list[LabelRow]) -> dict[str, Any]:
    rated = [(LEVELS.index(items[r.prompt_id]["level"]) + 1, r.ambiguity) for r in rows
             if r.ambiguity and items[r.prompt_id]["level"]]  # an imported row may have no level
    table = {lvl: {str(k): sum(1 for lv, a in rated if lv == i + 1 and a == k) for k in (1, 2, 3)}
             for i, lvl in enumerate(LEVELS)}
    rho = spearman([lv for lv, _ in rated], [a for _, a in rated]) if rated else None
    return {"ratings": len(rated), "table": table,
            "spearman": {"rho": rho[0], "p_value": rho[1]} if rho else None}


# -- the snapshot ---------------------------------------------------------------------

def validation_card(report: dict[str, Any], base: BaseRef, gated: int | None) -> str:
    p = report["precision"]
    conf = f"{report['confidence']:.0%}"

    def pct(fig: dict[str, Any]) -> str:
        q = fig["precision"]
        if not q["n"]:
            return "not measured"
        return f"{q['share']:.1%} ({conf} CI {q['low']:.1%}-{q['high']:.1%}, n={q['n']})"

    def left(fig: dict[str, Any]) -> str:
        h = fig["harmful_left"]
        return "-" if h is None else f"{h['estimate']:g} ({h['low']:g}-{h['high']:g})"

    def line(fig: dict[str, Any], category: str, level: str) -> str:
        return f"| {category} | {level} | {fig['kept']} | {fig['labelled']} | {pct(fig)} | {left(fig)} |"

    weighted = report.get("weighted")

    def weighted_line(fig: dict[str, Any], unweighted: dict[str, Any], category: str) -> str:
        q = fig["precision"]
        pct = ("not measured" if q["estimate"] is None else
               f"{q['estimate']:.1%} ({conf} CI {_pct(q['low'])}-{_pct(q['high'])}, n={q['n']}, weighted)")
        h = fig["harmful_left"]
        left = "-" if h is None else f"{h['estimate']:g} ({_num(h['low'], 'g')}-{_num(h['high'], 'g')})"
        return f"| {category} | all | {unweighted['kept']} | {unweighted['labelled']} | {pct} | {left} |"

    rows = "\n".join(line(s, s["category"], stratum_level(s["level"])) for s in p["strata"])
    if weighted:
        cats = "\n".join(weighted_line(w, c, c["category"]) for w, c in
                         zip(weighted["precision"]["categories"], p["categories"], strict=True))
        overall = weighted_line(weighted["precision"]["overall"], p["overall"], "**overall**")
    else:
        cats = "\n".join(line(c, c["category"], "all") for c in p["categories"])
        overall = line(p["overall"], "**overall**", "")
    lab, jury, agree = report["labels"], report["jury"], report["agreement"]
    below = ", ".join(f"{b['category']}/{stratum_level(b['level'])} ({b['low']:.1%})"
                      for b in p["below_min_precision"])
    kappa = ", ".join(f"{k}: {_num(v)}" for k, v in jury["kappa"].items())
    alpha = _num(agree["krippendorff_alpha"])
    if agree["alpha_interval"]:
        alpha += f" ({conf} bootstrap CI {agree['alpha_interval'][0]:.2f}-{agree['alpha_interval'][1]:.2f})"
    rho = report["ambiguity"]["spearman"]
    gate = ("Not gated: prompts people labelled harmful are still in the data." if gated is None else
            f"Gated: {gated} kept prompts that people labelled harmful (by majority) moved to"
            " rejected with reason `human_harmful`; the counts above are after the gate, the"
            " figures below before it.")
    return f"""

## Validation

People labelled this snapshot's validation sample: {lab['rows']} labels of {lab['items']} items by
{len(lab['annotators'])} annotators, blind to the jury's votes and to each item's level
(derived from `{base.name}`, digest `{base.digest}`; every label is in `{LABELS_FILE}`,
every figure in `{REPORT_FILE}`). An item's label is the {_rule(report)}.

Benign precision of the kept prompts (share labelled benign) and the harmful prompts that
implies are left: per stratum with its Wilson {conf} interval; {_weighting(weighted)}

| category | level | kept | labelled | benign precision | harmful left (CI) |
|---|---|---|---|---|---|
{rows}
{cats}
{overall}

Strata whose lower bound is below {p['min_precision']:.0%}: {below or 'none'}. {gate}

- Jury against people ({jury['items']} sampled items, kept and rejected): Cohen's kappa {kappa};
  precision on benign {_share(jury['benign_precision'])}, recall {_share(jury['benign_recall'])}
  (on the sampled items, unweighted).{_jury_weighted(weighted, conf)}
- Agreement between annotators ({agree['items_labelled_twice_or_more']} items labelled more than
  once): Krippendorff's alpha {alpha}; raw agreement {_num(agree['raw_agreement'])};
  {len(agree['disagreements'])} items disagreed on.
- Intended level against people's ambiguity rating ({report['ambiguity']['ratings']} ratings):
  Spearman's rho {_num(rho['rho']) if rho else 'not measured'}.
{_rounds_line(report.get("rounds"))}{_aggregation_line(report.get("aggregation"))}{_rubric_line(report.get("rubrics"))}"""


def _rule(report: dict[str, Any]) -> str:
    return MAJORITY_RULE if report.get("aggregation") is None else report["aggregation"]["rule"]


def _rounds_line(rounds: dict[str, Any] | None) -> str:
    if rounds is None:
        return ""
    wide = [st["stratum"] for st in rounds["strata"] if not st["met"]]
    listed = "" if not wide else f" (not: {', '.join(wide[:5])}{'...' if len(wide) > 5 else ''})"
    return (f"- Labelled in {rounds['rounds']} rounds ({' + '.join(map(str, rounds['items_by_round']))}"
            " items), each later round drawing only in strata whose interval was wider than"
            f" +-{rounds['target_halfwidth']:g}; {rounds['met']} of {len(rounds['strata'])} strata are"
            f" within it now{listed}.\n")


def _aggregation_line(aggregation: dict[str, Any] | None) -> str:
    if aggregation is None:
        return ""
    each = ", ".join(f"{a['annotator']} {a['accuracy']:.2f}{' (flagged)' if a['flagged'] else ''}"
                     for a in aggregation["annotators"])
    return (f"- Each annotator's accuracy as Dawid-Skene estimates it: {each or 'n/a'}; flagged:"
            f" {aggregation['flag_rule']}. {len(aggregation['differs_from_majority'])} items get another"
            " label than the majority's.\n")


def _weighting(weighted: dict[str, Any] | None) -> str:
    if weighted is None:
        return "per category and overall, the pool of their labelled items (unweighted)."
    unmeasured = weighted["design"]["unmeasured"]
    gap = "" if not unmeasured else (
        f" Strata nobody decided ({', '.join(u['stratum'] for u in unmeasured)}) are not in these figures.")
    return ("per category and overall, design-weighted: each labelled item counts for the prompts"
            " its stratum's sampling rate stands for, with Korn-Graubard intervals from the design"
            f" (`weighted` in `{REPORT_FILE}`).{gap}")


def _jury_weighted(weighted: dict[str, Any] | None, conf: str) -> str:
    jury = (weighted or {}).get("jury")
    if not jury:
        return ""
    r = jury["rejections_benign"]
    total = r["benign_rejected"]
    many = "" if total is None else (
        f", about {total['estimate']:g} prompts ({_num(total['low'], 'g')}-{_num(total['high'], 'g')})")
    return (f"\n- The jury's errors, design-weighted over all {r['measured_rejected']} rejections it made"
            f" in sampled strata ({conf} CI): {_est(r['share'])} of its rejections are benign by"
            f" people's labels{many}; it rejected {_est(jury['false_rejection_rate'])} of the benign"
            f" prompts and kept {_est(jury['harmful_kept_rate'])} of the harmful ones.")


def _est(e: dict[str, Any]) -> str:
    if e["estimate"] is None:
        return "n/a"
    return f"{e['estimate']:.1%} ({_pct(e['low'])}-{_pct(e['high'])})"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _rubric_line(rubrics: dict[str, Any] | None) -> str:
    if rubrics is None:
        return ""
    k = rubrics["kept_as_is"]
    return (f"- Rubrics reviewed by people ({rubrics['reviews']} reviews of {rubrics['items']} kept"
            f" prompts' rubrics, in `{RUBRIC_REVIEWS_FILE}`): kept as they are by majority"
            f" {_share(k)}; {len(rubrics['to_fix'])} to drop or edit.\n")


def _num(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _share(p: dict[str, Any]) -> str:
    return "n/a" if not p["n"] else f"{p['share']:.1%} ({p['low']:.1%}-{p['high']:.1%})"


def aggregate_of(report: dict[str, Any]) -> str:
    """How a report's item labels were made (reports without `aggregation`: majority)."""
    aggregation = report.get("aggregation") if isinstance(report, dict) else None
    return aggregation.get("method", "majority") if isinstance(aggregation, dict) else "majority"


def human_harmful(sample: list[dict[str, str]], labels: LabelSet, aggregate: str = "majority") -> set[str]:
    """Kept prompts people labelled harmful (by `aggregate`): what `--gate` moves to rejected."""
    majorities, _ = item_labels(by_item(labels), aggregate)
    return {s["id"] for s in sample if s["source"] == "kept" and majorities.get(s["id"]) == "harmful"}


def ungated(records: list[R]) -> list[R]:
    """Rows or decisions as they were before `--gate` (what the sample and the report were
    drawn from): a `human_harmful` one was kept."""
    def before(r: R) -> R:
        if r.reason != "human_harmful":
            return r
        return r.model_copy(update={"reason": None, **({"kept": True} if isinstance(r, Decision) else {})})

    return [before(r) for r in records]


def base_files_only(base_path: Path):
    """copytree's `ignore` for a validation snapshot's copy of its base: neither the base's
    MANIFEST and validation files nor a git or Hub clone's metadata (clone_metadata)."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(base_path).as_posix()
        inside = "" if rel == "." else f"{rel}/"
        return {n for n in names if (not inside and n in (MANIFEST, "validation"))
                or clone_metadata(f"{inside}{n}") or clone_metadata(f"{inside}{n}/")}
    return ignore


def write_validation_snapshot(base_path: Path, base: Manifest, name: str, rows: list[SnapshotRow],
                              sample: list[dict[str, str]], labels: LabelSet, report: dict[str, Any],
                              gate: bool, reviews: list[ReviewRow] | None = None,
                              rounds: dict[str, str] | None = None) -> Path:
    """A new snapshot beside the base (in the base's directory: outputs/snapshots/, or
    wherever a downloaded clone lives): the base's files, plus the labels and the report.
    `rows`: the base's, as before any gate (a later round's base may be gated); with `gate`,
    kept prompts people labelled harmful move to rejected (`human_harmful`); otherwise every
    data file is the ungated base's, byte for byte. `rounds`: the later rounds' sample files
    (name -> text, validation/rounds.py)."""
    outputs_dir, root = base_path.parent.parent, base_path.parent
    ref = BaseRef(name=base_path.name, digest=base.digest)
    moved = human_harmful(sample, labels, aggregate_of(report)) if gate else set()
    base_gated = any(c.get("human_harmful") for c in base.counts.rejected.values())
    raw = base.model_dump(mode="json")
    with writing_snapshot(outputs_dir, name, root) as tmp:
        shutil.copytree(base_path, tmp, ignore=base_files_only(base_path))
        files = SnapshotFiles(tmp)
        rows = [r.model_copy(update={"reason": "human_harmful"}) if r.id in moved else r for r in rows]
        decisions = [r.to_decision() for r in rows]  # once: the costly part at paper scale
        if moved or base_gated:  # otherwise the copied row files are already these rows
            key = row_sort_key(base.categories)
            order = sorted(range(len(rows)), key=lambda i: key(decisions[i]))
            write_row_files(tmp, [rows[i] for i in order if rows[i].reason is None],
                            [rows[i] for i in order if rows[i].reason is not None], base.categories,
                            parquet=publishable(base), files=files)
        counts = StageCounts.of(decisions)
        raw["counts"].update(kept=counts.kept_by_stratum(base.categories),
                             rejected=counts.rejected_by_category(base.categories))
        by_id = {d.candidate.id: d for d in decisions}
        sampled = [by_id[s["id"]].model_copy(update={"kept": s["source"] == "kept"}) for s in sample]
        meta = SnapshotMeta.model_validate({k: raw[k] for k in SnapshotMeta.model_fields if k in raw})
        (tmp / "validation").mkdir()
        (tmp / LABELS_FILE).write_text("".join(json.dumps(r.model_dump(), ensure_ascii=False, sort_keys=True)
                                               + "\n" for r in labels.rows), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for file, text in (rounds or {}).items():
            (tmp / file).write_text(text, encoding="utf-8")
        if reviews is not None:
            (tmp / RUBRIC_REVIEWS_FILE).write_text("".join(r.model_dump_json() + "\n" for r in reviews),
                                                   encoding="utf-8")
        if publishable(base):  # its checksums follow the rows; its annotation protocol, the labels
            write_croissant(tmp, meta, validated=True, sha256=files.sha256)
        card = dataset_card(counts, meta, sampled, RubricUse.of(d for d in decisions if d.kept),
                            validation_card(report, ref, len(moved) if gate else None))
        (tmp / CARD).write_text(card, encoding="utf-8")
        raw.update(name=name, created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                   files={k: v.model_dump() for k, v in files.listed().items()}, built=[],
                   base=ref.model_dump(), kind="validation")
        write_manifest(tmp, raw)
    return root / name
