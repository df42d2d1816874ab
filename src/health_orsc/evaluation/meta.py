"""Judge the judge, per criterion: the rubric grader against people's per-criterion
judgements (HealthBench's meta-evaluation), for `orsc grade --rubric`.

Input: a CSV of answers, one row each, `id, prompt, answer, criteria, met[, category]
[, harmful_detail]`:

- `criteria`: the rubric the answer was judged against, one criterion per line in the
  rubric templates' format, `helpful|harm POINTS ID: TEXT` (health_orsc.inputs.rubrics);
- `met`: the ids of the criteria people judged met, separated by spaces or commas; every
  other criterion of the row was judged not met;
- `category` (a taxonomy id): the definitions the grader is shown;
- `harmful_detail`: for an answer that meets a harm criterion, the words of the answer
  that carry the harm (used by `orsc grade --probe`, health_orsc.evaluation.probe).

Output: per criterion kind (helpful, harm) and over all criteria, the grader's accuracy,
Cohen's kappa and macro F1 of met / not met against people's (scikit-learn through
health_orsc.core.stats); per answer, people's and the grader's score, harm and rubric
verdict, and how those agree. A criterion the grader gave no valid verdict is counted
and left out. The rubric verdict of an answer is a safe completion by its rubric alone:
no harm criterion met and a score of at least `evaluation.safe_completion_min` (the
three-class grade is not asked here).

The repo ships gold/rubric_answers.csv: 63 answers to the shipped seeds' boundary
questions, 9 per category, against the shipped rubric templates' criteria, written and
judged by the project: good answers, thin ones, unsafe "compliant" ones, a harmful detail
buried in a helpful answer, partial and full refusals. Harmful specifics are replaced by
bracketed placeholders (`[specific number of tablets]`); a placeholder stands for the
detail, and the labels judge it as present.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pydantic import BaseModel

from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_id_csv
from health_orsc.core.records import Criterion
from health_orsc.core.stats import multiclass_agreement
from health_orsc.evaluation.grade import GENERIC, ClassAgreement
from health_orsc.evaluation.rubric import CriterionGrade, RubricResult, grade_rubric, score
from health_orsc.inputs.load import Taxonomy
from health_orsc.inputs.rubrics import parse_criteria
from health_orsc.inputs.templates import PromptTemplate
from health_orsc.llm import Gateway

HEADER = "id, prompt, answer, criteria, met[, category][, harmful_detail]"
MET, NOT_MET = "met", "not_met"


class RubricAnswer(BaseModel):
    id: str
    category: str | None
    prompt: str
    answer: str
    criteria: list[Criterion]
    met: list[str]                  # people's: the ids of the criteria met
    harmful_detail: str | None


def read_rubric_answers(path: Path, taxonomy: Taxonomy) -> list[RubricAnswer]:
    """The answers of a rubric gold file; InputError (exit 2) naming the row and column for
    a criterion that is not one, a `met` id the row's rubric lacks, an unknown category, or
    a harmful_detail that is not in the answer."""
    items = []
    for where, r in read_id_csv(path, "rubric answer file", ("id", "prompt", "answer", "criteria", "met"),
                                HEADER, "add answers below the header"):
        criteria = parse_criteria(r["criteria"] or "", path, f"{where}, criteria ", f"{where}, criteria")
        ids = [c.id for c in criteria]
        met = [m for m in re.split(r"[\s,]+", (r["met"] or "").strip()) if m]
        if unknown := [m for m in met if m not in ids]:
            raise InputError(path, f"{where}, met",
                             f"names {', '.join(map(repr, unknown))}, not a criterion of this row's rubric"
                             f" ({', '.join(ids)})",
                             "list only ids from the row's criteria column, separated by spaces")
        if len(set(met)) != len(met):
            raise InputError(path, f"{where}, met", "names a criterion twice", "list each met id once")
        category = (r.get("category") or "").strip() or None
        if category is not None and category not in taxonomy.ids:
            raise InputError(path, f"{where}, category", f"{shorten(category, 40)!r} is not in the taxonomy",
                             f"use one of {', '.join(taxonomy.ids)}, or leave it empty")
        prompt, answer = (r["prompt"] or "").strip(), r["answer"] or ""
        if not prompt:
            raise InputError(path, f"{where}, prompt", "is empty", "write the question the answer replies to")
        detail = (r.get("harmful_detail") or "").strip() or None
        if detail is not None and detail not in answer:
            raise InputError(path, f"{where}, harmful_detail", "is not a part of the answer",
                             "copy the words that carry the harm from the answer exactly, or leave it empty")
        items.append(RubricAnswer(id=r["id"], category=category, prompt=prompt, answer=answer,
                                  criteria=criteria, met=met, harmful_detail=detail))
    return items


async def grade_rubric_answers(config: BuildConfig, template: PromptTemplate, items: list[RubricAnswer],
                               entries: dict[str, dict[str, str]], gateway: Gateway) -> list[RubricResult]:
    """The grader's verdicts on every criterion of every answer (one call per answer)."""
    async def one(item: RubricAnswer) -> RubricResult:
        return await grade_rubric(config, template, gateway, item.prompt, item.answer, item.criteria,
                                  entries.get(item.category or "", GENERIC))

    return await gateway.gather([functools.partial(one, item) for item in items])


def people_grades(item: RubricAnswer) -> list[CriterionGrade]:
    return [CriterionGrade(id=c.id, met=c.id in item.met, reason="people") for c in item.criteria]


def rubric_safe(criteria: list[Criterion], grades: list[CriterionGrade], minimum: float) -> bool | None:
    """A safe completion by the rubric alone (no harm criterion met, score >= minimum);
    None when no criterion could be scored."""
    s = score(criteria, grades)
    if s.safe_completion_score is None:
        return None
    return s.harm is not True and s.safe_completion_score >= minimum


class JudgedAnswer(BaseModel):
    id: str
    people_score: float | None
    grader_score: float | None
    people_harm: bool | None
    grader_harm: bool | None
    people_safe: bool | None
    grader_safe: bool | None
    ungraded: int
    disagree: list[str]             # ids of the criteria people and the grader judged differently


class RubricGradeReport(BaseModel):
    """What `orsc grade --rubric` measures (and `--json` prints). `by_kind`: met / not met
    per criterion against people's, for `helpful`, `harm` and `all` criteria; `harm` and
    `safe`: the answers' harm and rubric verdicts against people's."""

    items: int
    criteria: int
    ungraded: int
    safe_completion_min: float
    by_kind: dict[str, ClassAgreement]
    harm: ClassAgreement
    safe: ClassAgreement
    answers: list[JudgedAnswer]
    model_calls: int = 0
    cache_hits: int = 0


def _agreement(truth: list[bool], predicted: list[bool], yes: str, no: str) -> ClassAgreement:
    return ClassAgreement(**multiclass_agreement([yes if t else no for t in truth],
                                                 [yes if p else no for p in predicted], [yes, no]))


def rubric_grade_report(items: list[RubricAnswer], results: list[RubricResult],
                        minimum: float) -> RubricGradeReport:
    pairs: dict[str, tuple[list[bool], list[bool]]] = {"helpful": ([], []), "harm": ([], []), "all": ([], [])}
    answers = []
    for item, result in zip(items, results, strict=True):
        people = people_grades(item)
        for c, g in zip(item.criteria, result.grades, strict=True):
            if g.met is None:
                continue
            for kind in (c.kind, "all"):
                pairs[kind][0].append(c.id in item.met)
                pairs[kind][1].append(g.met)
        mine, theirs = score(item.criteria, people), score(item.criteria, result.grades)
        answers.append(JudgedAnswer(
            id=item.id, people_score=mine.safe_completion_score, grader_score=theirs.safe_completion_score,
            people_harm=mine.harm, grader_harm=theirs.harm,
            people_safe=rubric_safe(item.criteria, people, minimum),
            grader_safe=rubric_safe(item.criteria, result.grades, minimum), ungraded=theirs.ungraded,
            disagree=[c.id for c, g in zip(item.criteria, result.grades, strict=True)
                      if g.met is not None and g.met != (c.id in item.met)]))
    harm = [(a.people_harm, a.grader_harm) for a in answers if None not in (a.people_harm, a.grader_harm)]
    safe = [(a.people_safe, a.grader_safe) for a in answers if None not in (a.people_safe, a.grader_safe)]
    return RubricGradeReport(
        items=len(items), criteria=sum(len(i.criteria) for i in items),
        ungraded=sum(a.ungraded for a in answers), safe_completion_min=minimum,
        by_kind={k: _agreement(*v, MET, NOT_MET) for k, v in pairs.items()},
        harm=_agreement([p for p, _ in harm], [g for _, g in harm], "harm", "no_harm"),
        safe=_agreement([p for p, _ in safe], [g for _, g in safe], "safe", "not_safe"),
        answers=answers)
