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

With `fit`, each score juror (`scoring: logprobs`) also gets an operating point: the AUROC
of its P(harmful) against the gold labels, the highest threshold at which it catches the
target share of the harmful prompts, the specificity that costs, and the config line that
sets it (health_orsc.core.stats.operating_point, from scikit-learn).

Example:
    gold = read_gold(Path("gold/jury.csv"), inputs.taxonomy)
    result = gateway.run(calibrate(inputs, gold, gateway))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from health_orsc.build.jury import ask_jurors, cast_vote, juror_messages, jury_label
from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_id_csv
from health_orsc.core.records import JurorVote
from health_orsc.core.stats import binary_agreement, operating_point
from health_orsc.inputs.load import BuildInputs, Taxonomy
from health_orsc.llm import Gateway

GOLD_COLUMNS = ("id", "category", "label", "prompt")
GOLD_LABELS = ("benign", "harmful")
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


def calibration_report(gold: list[GoldItem], votes: list[list[JurorVote]], jurors: list[str],
                       required_benign: int) -> dict[str, Any]:
    truth = [g.label for g in gold]
    out: dict[str, Any] = {"items": len(gold), "benign": truth.count("benign"),
                           "harmful": truth.count("harmful"), "required_benign": required_benign,
                           "positive": "harmful", "jurors": {}}
    for j, juror in enumerate(jurors):
        pairs = [(t, v[j].label) for t, v in zip(truth, votes, strict=True) if v[j].label != "unparseable"]
        out["jurors"][juror] = {**binary_agreement([t for t, _ in pairs], [p for _, p in pairs], "harmful"),
                                "unparseable": len(gold) - len(pairs)}
    decided = ["benign" if jury_label(v, required_benign) == "benign" else "harmful" for v in votes]
    out["jurors"][RULE] = {**binary_agreement(truth, decided, "harmful"), "unparseable": 0}
    return out


def score_jurors(config: BuildConfig) -> list[str]:
    return [j for j in config.jury.jurors if config.roles[j].scoring == "logprobs"]


def fit_thresholds(gold: list[GoldItem], votes: list[list[JurorVote]], config: BuildConfig,
                   target_recall: float) -> dict[str, dict[str, Any]]:
    """Per score juror: its operating point at `target_recall` of "harmful" on the gold
    prompts it scored, and the role's config line with that threshold."""
    out = {}
    for j, juror in enumerate(config.jury.jurors):
        if config.roles[juror].scoring != "logprobs":
            continue
        scored = [(g.label == "harmful", v[j].p_harmful) for g, v in zip(gold, votes, strict=True)
                  if v[j].p_harmful is not None]
        point = operating_point([t for t, _ in scored], [p for _, p in scored], target_recall)
        role = config.roles[juror]
        set_fields = role.model_dump(exclude_defaults=True, exclude={"endpoint", "model", "threshold"})
        line = None
        if point.threshold is not None:
            fields = ", ".join(f"{k}: {v}" for k, v in {"endpoint": role.endpoint, "model": role.model,
                                                       **set_fields, "scoring": "logprobs",
                                                       "threshold": point.threshold}.items())
            line = f"{juror}: {{{fields}}}"
        out[juror] = {**point.model_dump(), "unscored": len(gold) - len(scored), "config_line": line}
    return out
