"""Rubric review: people judge the rubrics of the validation sample's kept prompts, keep,
drop or edit, beside their harm labels (`orsc annotate --rubrics`, `orsc validate`).

Tasks: per annotator, the kept prompts with a rubric among the items of their label tasks,
each with its criteria, one per line (`KIND POINTS ID: TEXT`, health_orsc.inputs.rubrics).
Only kept prompts have rubrics, so a review task tells that its prompt was kept: the
files are separate from the blind label tasks, to be handed out once the labels are in.
Answers: `verdict` (keep: the criteria are right as they are; drop: the rubric is not
usable; edit: `edited_rubric` holds the criteria as they should be, in the same line
format) and free `notes`.

The outcome (validation/rubric_reviews.jsonl, and a `rubrics` section of the validity
report): reviews per verdict, the share of reviewed rubrics whose majority verdict is
keep (Wilson interval), per category, and the prompts whose majority says drop or edit
(or is tied), with the edits people wrote. Nothing in the snapshot's rows changes.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_csv
from health_orsc.core.records import Criterion, SnapshotRow
from health_orsc.core.stats import wilson
from health_orsc.inputs.rubrics import parse_criteria
from health_orsc.validation.annotate import Tasks
from health_orsc.validation.labels import check_digest, label_studio_annotations, who

VERDICTS = ("keep", "drop", "edit")
SHOWN = ("prompt_id", "snapshot", "annotator", "category", "prompt", "rubric")
ANSWERS = ("verdict", "edited_rubric", "notes")
LABEL_CONFIG = "rubric_label_config.xml"


def rubric_lines(criteria: list[Criterion]) -> str:
    return "\n".join(f"{c.kind} {c.points} {c.id}: {c.text}" for c in criteria)


def plan_reviews(tasks: Tasks, rows: list[SnapshotRow]) -> dict[str, list[dict[str, str]]]:
    """Per annotator, in their label tasks' order: the kept items with a rubric."""
    rubrics = {r.id: r.rubric for r in rows if r.reason is None and r.rubric is not None}
    return {name: [{**{k: item[k] for k in SHOWN if k in item},
                    "rubric": rubric_lines(rubrics[item["prompt_id"]].criteria)}
                   for item in items if item["prompt_id"] in rubrics]
            for name, items in tasks.annotators.items()}


def review_files(reviews: dict[str, list[dict[str, str]]], fmt: str) -> dict[str, str]:
    """The review task files, named beside the label tasks' (`<annotator>.rubrics.*`)."""
    if fmt == "csv":
        out = {}
        for name, items in reviews.items():
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=[*SHOWN, *ANSWERS], lineterminator="\n")
            writer.writeheader()
            writer.writerows({**item, **dict.fromkeys(ANSWERS, "")} for item in items)
            out[f"{name}.rubrics.csv"] = buf.getvalue()
        return out
    files = {LABEL_CONFIG: label_studio_config()}
    for name, items in reviews.items():
        files[f"{name}.rubrics.tasks.json"] = json.dumps([{"data": item} for item in items], indent=2,
                                                         ensure_ascii=False) + "\n"
    return files


def label_studio_config() -> str:
    choices = "\n".join(f'    <Choice value="{v}"/>' for v in VERDICTS)
    return f"""<View>
  <Header value="Category: $category"/>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Rubric: the criteria an answer to this prompt is graded against"/>
  <Text name="rubric" value="$rubric"/>
  <Header value="Keep the rubric as it is, drop it, or edit it?"/>
  <Choices name="verdict" toName="prompt" choice="single" required="true">
{choices}
  </Choices>
  <TextArea name="edited_rubric" toName="prompt"
            placeholder="edit: the criteria as they should be, one per line: helpful|harm POINTS ID: TEXT"/>
  <TextArea name="notes" toName="prompt" placeholder="Notes (optional)"/>
</View>
"""


class ReviewRow(BaseModel):
    """One person's review of one rubric: a row of validation/rubric_reviews.jsonl."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_id: str
    annotator: str
    verdict: Literal["keep", "drop", "edit"]
    edited_rubric: list[Criterion] | None
    notes: str
    file: str
    where: str


def is_review_file(path: Path) -> bool:
    """A rubric review file (a filled-in `*.rubrics.csv`, or a Label Studio export of review
    tasks) rather than a label file: told apart by what it holds."""
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                return "verdict" in (next(csv.reader(fh), None) or [])
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, csv.Error, json.JSONDecodeError):
        return False  # the label reader says what is wrong with it
    return (isinstance(tasks, list) and bool(tasks) and isinstance(tasks[0], dict)
            and isinstance(tasks[0].get("data"), dict) and "rubric" in tasks[0]["data"])


def _review(path: Path, where: str, prompt_id: str, annotator: str, verdict: str, edited: str,
            notes: str) -> ReviewRow | None:
    verdict = verdict.strip().lower()
    if not verdict:
        return None
    if verdict not in VERDICTS:
        raise InputError(path, f"{where}, verdict",
                         f"{shorten(verdict, 40)!r} is not one of {', '.join(VERDICTS)}",
                         "answer keep, drop or edit")
    criteria = None
    if verdict == "edit":
        if not edited.strip():
            raise InputError(path, f"{where}, edited_rubric", "is empty, but the verdict is edit",
                             "write the criteria as they should be, one per line:"
                             " helpful|harm POINTS ID: TEXT")
        criteria = parse_criteria(edited, path, f"{where}, edited_rubric ", f"{where}, edited_rubric")
    elif edited.strip():
        raise InputError(path, f"{where}, edited_rubric", f"is filled in, but the verdict is {verdict}",
                         "answer edit to change the rubric, or clear edited_rubric")
    return ReviewRow(prompt_id=prompt_id, annotator=annotator, verdict=verdict, edited_rubric=criteria,
                     notes=notes.strip(), file=path.name, where=where)


def _read_csv(path: Path, digest: str) -> list[ReviewRow]:
    found = []
    for i, r in enumerate(read_csv(path, ("prompt_id", "verdict"),
                                   "import the files `orsc annotate --rubrics` wrote, with their header"), 2):
        where = f"row {i}"
        check_digest(path, where, (r.get("snapshot") or "").strip(), digest)
        row = _review(path, where, (r.get("prompt_id") or "").strip(),
                      (r.get("annotator") or "").strip() or path.name.split(".")[0], r.get("verdict") or "",
                      r.get("edited_rubric") or "", r.get("notes") or "")
        if row is not None:
            found.append(row)
    return found


def _read_label_studio(path: Path, digest: str) -> list[ReviewRow]:
    found = []
    for where, data, annotation in label_studio_annotations(path, digest, "orsc annotate --rubrics"):
        if annotation.get("was_cancelled"):
            continue
        answers: dict[str, str] = {}
        for r in annotation.get("result") or []:
            value = r.get("value", {}) if isinstance(r, dict) else {}
            name = r.get("from_name") if isinstance(r, dict) else None
            if name == "verdict" and value.get("choices"):
                answers[name] = str(value["choices"][0])
            elif name in ("edited_rubric", "notes") and value.get("text"):
                answers[name] = "\n".join(str(t) for t in value["text"])
        row = _review(path, where, str(data["prompt_id"]), who(annotation), answers.get("verdict", ""),
                      answers.get("edited_rubric", ""), answers.get("notes", ""))
        if row is not None:
            found.append(row)
    return found


def read_reviews(paths: list[Path], reviewable: set[str], digest: str) -> list[ReviewRow]:
    """Every review in `paths`; InputError naming the file and row for a review of a prompt
    that is not a kept sample item with a rubric, a bad verdict or edit, or one person's two
    different verdicts on one rubric."""
    seen: dict[tuple[str, str], ReviewRow] = {}
    for path in paths:
        found = _read_csv(path, digest) if path.suffix.lower() == ".csv" else _read_label_studio(path, digest)
        for row in found:
            if row.prompt_id not in reviewable:
                raise InputError(path, row.where, f"item '{shorten(row.prompt_id, 40)}' is not a kept prompt"
                                 " of the validation sample with a rubric",
                                 "review the items `orsc annotate --rubrics` wrote for this snapshot")
            before = seen.setdefault((row.prompt_id, row.annotator), row)
            same = (before.verdict, before.edited_rubric) == (row.verdict, row.edited_rubric)
            if before is not row and not same:
                raise InputError(path, row.where, f"annotator '{row.annotator}' reviewed {row.prompt_id}"
                                 f" '{row.verdict}' here and '{before.verdict}' in {before.file}"
                                 f" ({before.where})", "keep one of the two reviews")
    return sorted(seen.values(), key=lambda r: (r.prompt_id, r.annotator))


def majority(verdicts: list[str]) -> str | None:
    """The verdict most reviewers gave; None on a tie."""
    top = Counter(verdicts).most_common(2)
    return None if len(top) > 1 and top[0][1] == top[1][1] else top[0][0]


def review_summary(reviews: list[ReviewRow], rows: list[SnapshotRow], confidence: float) -> dict[str, Any]:
    """The report's `rubrics` section (see the module)."""
    category = {r.id: r.category for r in rows}
    per_item: dict[str, list[ReviewRow]] = {}
    for r in reviews:
        per_item.setdefault(r.prompt_id, []).append(r)
    verdict = {i: majority([r.verdict for r in rs]) for i, rs in per_item.items()}

    def kept(ids: list[str]) -> dict[str, Any]:
        return wilson(sum(verdict[i] == "keep" for i in ids), len(ids), confidence).model_dump()

    cats = list(dict.fromkeys(category[i] for i in sorted(per_item)))
    return {"reviews": len(reviews), "items": len(per_item),
            "annotators": sorted({r.annotator for r in reviews}),
            "verdicts": {v: sum(r.verdict == v for r in reviews) for v in VERDICTS},
            "kept_as_is": kept(sorted(per_item)),
            "by_category": {c: kept(sorted(i for i in per_item if category[i] == c)) for c in cats},
            "to_fix": [{"prompt_id": i, "category": category[i], "majority": verdict[i],
                        "verdicts": sorted(r.verdict for r in per_item[i]),
                        "edits": [rubric_lines(r.edited_rubric) for r in per_item[i] if r.edited_rubric]}
                       for i in sorted(per_item) if verdict[i] != "keep"]}
