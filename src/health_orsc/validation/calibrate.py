"""calibrate: how good is the jury, measured on prompts whose answer is known.

Input: a gold CSV (`id, category, label, prompt[, original_question]`, label benign or
harmful; the repo ships gold/jury.csv: 10 benign boundary and 10 harmful prompts per
category, written for this purpose and distinct from the seeds). Every juror votes on every
gold prompt through the same gateway, judge prompts and request cache as a build, and the
jury's k-of-n rule decides. Output, per juror and for the rule: a confusion matrix,
precision, recall and F1 of "harmful", specificity, and Cohen's kappa against the gold
labels (health_orsc.core.stats, from scikit-learn).

A juror's unparseable verdicts are counted and left out of its figures; the rule counts an
item with an unparseable vote as rejected (harmful), as a build does.

With `fit`, each score juror (`scoring: logprobs`, or a guard juror) also gets an
operating point: the AUROC of its P(harmful) against the gold labels, the highest
threshold at which it catches the target share of the harmful prompts, the specificity
that costs, and the config line that sets it (health_orsc.core.stats.operating_point, from scikit-learn).

Example:
    gold = read_gold(Path("gold/jury.csv"), inputs.taxonomy)
    result = gateway.run(calibrate(inputs, gold, gateway))
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel

from health_orsc.build.jury import Scores, ask_jurors, jury_label, vote_on
from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_id_csv
from health_orsc.core.records import HARM_LABELS, JurorVote
from health_orsc.core.stats import OperatingPoint, binary_agreement, cohen_kappa, operating_point
from health_orsc.core.survey import Estimate, Survey
from health_orsc.inputs.load import BuildInputs, Taxonomy
from health_orsc.llm import Gateway

GOLD_COLUMNS = ("id", "category", "label", "prompt")
GOLD_LABELS = HARM_LABELS
RULE = "rule"


class GoldItem(BaseModel):
    id: str
    category: str
    label: str
    prompt: str
    original_question: str


def read_gold(path: Path, taxonomy: Taxonomy) -> list[GoldItem]:
    items: list[GoldItem] = []
    for where, r in read_id_csv(path, "gold file", GOLD_COLUMNS,
                                "id, category, label, prompt[, original_question]",
                                "add labelled prompts below the header"):
        item = GoldItem(id=r["id"], category=(r["category"] or "").strip(),
                        label=(r["label"] or "").strip().lower(), prompt=(r["prompt"] or "").strip(),
                        original_question=(r.get("original_question") or "").strip())
        if item.label not in GOLD_LABELS:
            raise InputError(path, where, f"label {shorten(r['label'] or '', 40)!r} is not benign or harmful",
                             "label each gold prompt benign or harmful")
        if item.category not in taxonomy.ids:
            raise InputError(path, where, f"category {shorten(item.category, 40)!r} is not in the taxonomy",
                             f"use one of {', '.join(taxonomy.ids)}")
        if not item.prompt:
            raise InputError(path, where, "prompt is empty", "write the prompt to judge")
        items.append(item)
    return items


async def judge_gold(inputs: BuildInputs, gold: list[GoldItem], gateway: Gateway,
                     scores: Scores | None = None) -> list[list[JurorVote]]:
    """Every juror's vote on every gold prompt: votes[item][juror]. `scores`: the classifier
    jurors' of the gold prompts (a classifier trained on this gold file scores each prompt
    by a fit that never saw its label: health_orsc.core.classifier)."""
    async def vote(item: GoldItem, juror: str) -> JurorVote:
        entry = inputs.taxonomy.entry(item.category)
        beside = item.original_question or item.prompt
        return await vote_on(inputs, gateway, juror, item.prompt, entry, beside, scores)

    return await ask_jurors(gateway, inputs.config.jury.jurors, gold, vote)


class JurorAgreement(BaseModel):
    """A juror (or the k-of-n rule) against the gold labels; positive class: harmful. The
    confusion matrix's rows are the gold labels, its columns the juror's, `labels` order."""

    n: int
    labels: list[str]
    confusion: list[list[int]]
    precision: float | None
    recall: float | None
    f1: float | None
    specificity: float | None
    kappa: float | None
    unparseable: int          # gold prompts the juror gave no label for (left out of the above)


class ScoreFit(OperatingPoint):
    """A score juror's threshold fitted on the gold file, and its config line."""

    unscored: int             # gold prompts without a P(harmful)
    config_line: str | None   # None: its scored prompts are all of one label


class CalibrationReport(BaseModel):
    """What `orsc calibrate` measures (and `--json` prints)."""

    items: int
    benign: int
    harmful: int
    required_benign: int
    positive: str
    jurors: dict[str, JurorAgreement]   # each juror, then "rule": the k-of-n rule
    model_calls: int = 0
    cache_hits: int = 0
    fit: dict[str, ScoreFit] | None = None  # with --fit: per score juror


def calibration_report(gold: list[GoldItem], votes: list[list[JurorVote]], jurors: list[str],
                       required_benign: int) -> CalibrationReport:
    truth = [g.label for g in gold]
    agreement: dict[str, JurorAgreement] = {}
    for j, juror in enumerate(jurors):
        pairs = [(t, v[j].label) for t, v in zip(truth, votes, strict=True) if v[j].label != "unparseable"]
        agreement[juror] = JurorAgreement(
            **binary_agreement([t for t, _ in pairs], [p for _, p in pairs], "harmful"),
            unparseable=len(gold) - len(pairs))
    decided = ["benign" if jury_label(v, required_benign) == "benign" else "harmful" for v in votes]
    agreement[RULE] = JurorAgreement(**binary_agreement(truth, decided, "harmful"), unparseable=0)
    return CalibrationReport(items=len(gold), benign=truth.count("benign"), harmful=truth.count("harmful"),
                             required_benign=required_benign, positive="harmful", jurors=agreement)


def score_jurors(config: BuildConfig) -> list[str]:
    return [j for j in config.jury.jurors if config.roles[j].scored]


def fit_thresholds(gold: list[GoldItem], votes: list[list[JurorVote]], config: BuildConfig,
                   target_recall: float) -> dict[str, ScoreFit]:
    """Per score juror: its operating point at `target_recall` of "harmful" on the gold
    prompts it scored, and the role's config line with that threshold."""
    out = {}
    for j, juror in enumerate(config.jury.jurors):
        if not config.roles[juror].scored:
            continue
        scored = [(g.label == "harmful", v[j].p_harmful) for g, v in zip(gold, votes, strict=True)
                  if v[j].p_harmful is not None]
        point = operating_point([t for t, _ in scored], [p for _, p in scored], target_recall)
        out[juror] = score_fit(config, juror, point, len(gold) - len(scored))
    return out


def score_fit(config: BuildConfig, juror: str, point: OperatingPoint, unscored: int,
              source: str = "") -> ScoreFit:
    """A score juror's operating point with the role's config line that sets its threshold
    (and `source`, where the threshold came from, as a YAML comment)."""
    role = config.roles[juror]
    set_fields = role.model_dump(exclude_defaults=True, exclude={"endpoint", "model", "threshold"})
    line = None
    if point.threshold is not None:
        called = {"endpoint": role.endpoint, "model": role.model} if role.calls else {}
        fields = ", ".join(f"{k}: {v}" for k, v in {**called, **set_fields, "scoring": role.scoring,
                                                   "threshold": point.threshold}.items())
        line = f"{juror}: {{{fields}}}" + (f"  # {source}" if source else "")
    return ScoreFit(**point.model_dump(), unscored=unscored, config_line=line)


# -- on people's labels ---------------------------------------------------------------

class LabelledJuror(BaseModel):
    """A juror (or the jury's decision, `rule`) against people's labels of a validation
    sample, positive class harmful: recall and specificity design-weighted with their
    intervals (health_orsc.core.survey), Cohen's kappa and, for a score juror, the AUROC of
    its P(harmful), both with each item at its design weight (scikit-learn)."""
    items: int                # decided sample items it gave a label for
    unparseable: int          # decided sample items it gave none for
    recall: Estimate
    specificity: Estimate
    kappa: float | None
    auroc: float | None = None


class LabelCalibration(BaseModel):
    """What `orsc calibrate --labels` measures (and `--json` prints)."""
    snapshot: str
    digest: str
    aggregate: str            # how an item's labels made its label (the report's)
    items: int                # decided sample items
    harmful: int              # of them, labelled harmful
    confidence: float
    positive: str = "harmful"
    jurors: dict[str, LabelledJuror]   # each juror, then "rule": the jury's k-of-n decision
    fit: dict[str, ScoreFit] | None = None


def label_calibration(snapshot: Path, target_recall: float | None) -> LabelCalibration:
    """The jurors of a validation snapshot measured on its people's labels; with
    `target_recall`, each score juror's threshold fitted on them."""
    from health_orsc.snapshot.compat import recorded_config
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.snapshot.store import REPORT_FILE, load_manifest
    from health_orsc.validation.rounds import combined_sample, read_rounds
    from health_orsc.validation.validity import (
        aggregate_of,
        decided_labels,
        sample_units,
        stratum_sizes,
        ungated,
    )

    manifest = load_manifest(snapshot)
    if manifest.kind != "validation":
        raise InputError(snapshot, "--labels", f"is a snapshot of kind {manifest.kind}, without people's"
                         " labels", "pass the snapshot `orsc validate` wrote")
    config = recorded_config(manifest)
    report = json.loads((snapshot / REPORT_FILE).read_text(encoding="utf-8"))
    aggregate = aggregate_of(report)
    rows = ungated(read_rows(snapshot))
    sizes = stratum_sizes(rows)
    sample = combined_sample(read_rounds(snapshot), sizes)
    decided = decided_labels(snapshot, report)
    by_id = {r.id: r for r in rows}
    jurors = config.jury.jurors
    units = []
    scores: dict[str, dict[str, float]] = {}  # item -> score juror -> P(harmful)
    for u in sample_units(sizes, sample, decided):
        if u.values is None:
            units.append(u)
            continue
        votes = {v.juror: v.label for v in by_id[u.id].votes}
        scores[u.id] = {v.juror: v.p_harmful for v in by_id[u.id].votes if v.p_harmful is not None}
        said = {j: votes.get(j) for j in jurors} | {RULE: "benign" if u.values["kept"] else "harmful"}
        values = {"harmful": 1 - u.values["benign"]}
        domains = dict(u.domains)
        for j, label in said.items():
            values[f"says:{j}"] = int(label == "harmful")
            values[f"clears:{j}"] = int(label == "benign")
            domains[f"voted:{j}"] = "yes" if label in HARM_LABELS else "no"
        units.append(replace(u, values=values, domains=domains))
    survey = Survey(units, confidence=config.sample.confidence)
    weights = survey.weights()
    labelled = [u for u in units if u.values is not None]
    out: dict[str, LabelledJuror] = {}
    fits: dict[str, ScoreFit] = {}
    for j in [*jurors, RULE]:
        voted = [u for u in labelled if u.domains[f"voted:{j}"] == "yes"]
        people = ["harmful" if u.values["harmful"] else "benign" for u in voted]
        theirs = ["harmful" if u.values[f"says:{j}"] else "benign" for u in voted]
        w = [weights[u.id] for u in voted]
        auroc = None
        if j != RULE and config.roles[j].scored:
            scored = [(u.values["harmful"] == 1, scores[u.id][j], weights[u.id]) for u in labelled
                      if j in scores[u.id]]
            point = operating_point([t for t, _, _ in scored], [p for _, p, _ in scored],
                                    target_recall or 0.95, [x for _, _, x in scored])
            auroc = point.auroc
            if target_recall is not None:
                fits[j] = score_fit(config, j, point, len(labelled) - len(scored),
                                    f"fitted on people's labels of {snapshot.name} ({manifest.digest[:19]})")
        out[j] = LabelledJuror(
            items=len(voted), unparseable=len(labelled) - len(voted),
            recall=survey.share(f"says:{j}", {"harmful": 1, f"voted:{j}": "yes"}),
            specificity=survey.share(f"clears:{j}", {"harmful": 0, f"voted:{j}": "yes"}),
            kappa=cohen_kappa(people, theirs, w), auroc=auroc)
    return LabelCalibration(snapshot=str(snapshot), digest=manifest.digest, aggregate=aggregate,
                            items=len(labelled), harmful=sum(u.values["harmful"] for u in labelled),
                            confidence=config.sample.confidence, jurors=out,
                            fit=fits if target_recall is not None else None)
