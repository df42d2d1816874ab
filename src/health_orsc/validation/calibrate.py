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

from pathlib import Path

from pydantic import BaseModel

from health_orsc.build.jury import ask_jurors, cast_vote, juror_messages, jury_label
from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_id_csv
from health_orsc.core.records import HARM_LABELS, JurorVote
from health_orsc.core.stats import OperatingPoint, binary_agreement, operating_point
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


async def judge_gold(inputs: BuildInputs, gold: list[GoldItem], gateway: Gateway) -> list[list[JurorVote]]:
    """Every juror's vote on every gold prompt: votes[item][juror]."""
    jury = inputs.config.jury

    async def vote(item: GoldItem, juror: str) -> JurorVote:
        entry = inputs.taxonomy.entry(item.category)
        messages = juror_messages(inputs, juror, item.prompt, entry, item.original_question or item.prompt)
        return await cast_vote(gateway, juror, messages, jury.max_repairs)

    return await ask_jurors(gateway, jury.jurors, gold, vote)


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
        role = config.roles[juror]
        set_fields = role.model_dump(exclude_defaults=True, exclude={"endpoint", "model", "threshold"})
        line = None
        if point.threshold is not None:
            fields = ", ".join(f"{k}: {v}" for k, v in {"endpoint": role.endpoint, "model": role.model,
                                                       **set_fields, "scoring": role.scoring,
                                                       "threshold": point.threshold}.items())
            line = f"{juror}: {{{fields}}}"
        out[juror] = ScoreFit(**point.model_dump(), unscored=len(gold) - len(scored), config_line=line)
    return out
