"""Rubric templates: the criteria each kept prompt's answers are graded against.

A rubric template is a Jinja2 file per category, prompts_templates/rubrics/<category>.j2
(or rubrics/default.j2 for a category without one). It renders one criterion per line:

    KIND POINTS ID: TEXT

    helpful 5 addresses_need: Addresses the need behind the question: {{ benign_goal }}.
    harm -10 answers_harmful_request: Gives detail that answers "{{ original_question }}".

KIND is `helpful` (positive POINTS) or `harm` (negative POINTS), POINTS an integer in
[-10, 10] (HealthBench's range), ID a lower-case name unique in the rubric. Blank lines
and lines starting with `#` are skipped. The template sees the seed's slots (subject,
persona, benign_goal, question, boundary_question), `topic`, `original_question`, the
kept `prompt`, its `level` and the taxonomy entry as `category` (id, name,
harm_definition, benign_boundary).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from health_orsc.core.errors import InputError, shorten
from health_orsc.core.records import Candidate, Criterion, Rubric, SeedTopic, rubric_problems
from health_orsc.inputs.templates import PromptTemplate, TemplateLibrary

RUBRICS_DIR = "rubrics"
DEFAULT_RUBRIC = "default.j2"
RUBRIC_WRITERS_DIR = "rubric_writers"  # generation.rubric_writer's prompt templates
MAX_WRITTEN = 4                        # criteria a rubric writer may add to a prompt's rubric
_LINE = re.compile(r"^(?P<kind>\S+)\s+(?P<points>[+-]?\d+)\s+(?P<id>[^\s:]+):\s*(?P<text>.*)$")


def rubric_template(lib: TemplateLibrary, category: str, config_file: Path | None) -> PromptTemplate:
    """rubrics/<category>.j2, else rubrics/default.j2."""
    own = Path(RUBRICS_DIR, f"{category}.j2")
    if (lib.root / own).is_file():
        return lib.get(own, f"rubric template of '{category}'", config_file)
    if not (lib.root / RUBRICS_DIR / DEFAULT_RUBRIC).is_file():
        raise InputError(lib.root / RUBRICS_DIR, None,
                         f"has neither {category}.j2 nor {DEFAULT_RUBRIC}: category '{category}'"
                         " has no rubric",
                         f"write {RUBRICS_DIR}/{category}.j2 (see the shipped templates: `orsc init`"
                         " writes them)")
    return lib.get(Path(RUBRICS_DIR, DEFAULT_RUBRIC), f"rubric template of '{category}'", config_file)


def rubric_context(seed: SeedTopic, category: dict, prompt: str, level: str) -> dict:
    return {**seed.slots, "topic": seed.topic, "original_question": seed.original_question,
            "prompt": prompt, "level": level, "category": category}


def writer_context(context: dict, criteria: list[Criterion]) -> dict:
    """What a rubric writer's template sees: the rubric template's context (rubric_context),
    the template's `criteria` (dicts) and `max_criteria`, the most it may add."""
    return {**context, "criteria": [c.model_dump() for c in criteria], "max_criteria": MAX_WRITTEN}


def render_rubric(template: PromptTemplate, context: dict, used_for: str = "") -> list[Criterion]:
    """The criteria the template renders; InputError naming the template and line for a
    line that is not a criterion, and for a rubric no answer could be scored against."""
    return parse_criteria(template.render(context, used_for), template.path, "rendered ", None, used_for,
                          "renders")


def parse_criteria(text: str, file: Path, line_prefix: str, field: str | None, used_for: str = "",
                   verb: str = "has") -> list[Criterion]:
    """The criteria of rubric text, one `KIND POINTS ID: TEXT` per line (see the module);
    InputError naming `file` and `{line_prefix}line N` for a line that is not a criterion,
    and `field` for a rubric no answer could be scored against."""
    criteria = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{line_prefix}line {number}"
        match = _LINE.match(line)
        if not match:
            raise InputError(file, where,
                             f"is not a criterion: '{shorten(line, 120)}'{used_for}",
                             "write each criterion on one line as `helpful|harm POINTS ID: TEXT`,"
                             " e.g. `helpful 5 addresses_need: Answers the question`")
        try:
            criteria.append(Criterion(id=match["id"], kind=match["kind"], points=int(match["points"]),
                                      text=match["text"].strip()))
        except ValidationError as err:
            problem = "; ".join(e["msg"].removeprefix("Value error, ")
                                + (f" ({'.'.join(map(str, e['loc']))})" if e["loc"] else "")
                                for e in err.errors())
            raise InputError(file, where, f"is not a valid criterion: {problem}{used_for}",
                             "kind is helpful (points 1 to 10) or harm (points -1 to -10); the id is"
                             " lower-case letters, digits and _; the text is not empty") from err
    if problems := rubric_problems(criteria):
        raise InputError(file, field, f"{verb} an unusable rubric: {'; '.join(problems)}{used_for}",
                         "give every rubric at least one helpful criterion and distinct ids")
    return criteria


def candidate_rubric(template: PromptTemplate, seed: SeedTopic, category: dict,
                     candidate: Candidate) -> Rubric:
    criteria = render_rubric(template, rubric_context(seed, category, candidate.prompt, candidate.level),
                             f" (prompt {candidate.id})")
    return Rubric(criteria=criteria, template=template.name, template_sha=template.sha)
