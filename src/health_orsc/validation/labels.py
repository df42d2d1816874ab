"""labels: human labels read back from the files people filled in.

Two formats, told apart by the file's extension:
- `.csv`: the files `orsc annotate --format csv` wrote, with `label` (benign / harmful /
  unsure) and optionally `ambiguity` (1-3) and `notes` filled in. A row whose `label` is
  empty is skipped and counted as unlabelled. The annotator is the `annotator` column
  (or, without one, the file's name).
- `.json`: Label Studio's JSON export of a project set up with `orsc annotate --format
  label-studio`: per task `data.prompt_id`, per annotation `completed_by` (the annotator),
  `was_cancelled` (skipped and counted) and `result[]` (`label`, `ambiguity`, `notes`).

Every label must name an item of the snapshot's validation sample and, where the file says,
the snapshot's digest; one annotator may label an item twice only with the same label.
Any problem is one InputError naming the file, the row (or task) and the fix.

Example:
    labels = read_labels([Path("annotator_1.csv")], sample_ids, digest)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_csv
from health_orsc.core.records import HarmLabel
from health_orsc.validation.annotate import AMBIGUITY, LABELS


class LabelRow(BaseModel):
    """One person's label of one item: a row of validation/labels.jsonl."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_id: str
    annotator: str
    label: Literal[HarmLabel, "unsure"]
    ambiguity: int | None
    notes: str
    file: str          # the file it came from (its name)
    where: str         # row N of a CSV, task N of a Label Studio export
    round: int = 1     # the validation round it was given in (validation/rounds.py)


@dataclass
class LabelSet:
    rows: list[LabelRow] = field(default_factory=list)
    unlabelled: int = 0        # CSV rows with no label, Label Studio annotations without one
    cancelled: int = 0         # Label Studio annotations marked cancelled (skipped)
    repeated: int = 0          # the same label by the same person twice (kept once)
    files: list[str] = field(default_factory=list)


def read_labels(paths: list[Path], sample_ids: set[str], digest: str,
                sample_name: str = "the snapshot's validation sample") -> LabelSet:
    out = LabelSet()
    seen: dict[tuple[str, str], LabelRow] = {}
    formats: dict[str, tuple[str, Path]] = {}  # annotator -> the format and file it first came in
    for path in paths:
        if not path.is_file():
            raise InputError(path, None, "not found", "pass the filled-in CSV files or Label Studio exports")
        if path.suffix.lower() == ".csv":
            found = _read_csv(path, digest, out)
        elif path.suffix.lower() == ".json":
            found = _read_label_studio(path, digest, out)
        else:
            raise InputError(path, None, "is neither .csv nor .json",
                             "pass the CSV files `orsc annotate` wrote, or Label Studio's JSON export")
        out.files.append(path.name)
        fmt = path.suffix.lower()
        for row in found:
            first = formats.setdefault(row.annotator, (fmt, path))
            if first[0] != fmt:
                raise InputError(path, row.where, f"annotator '{shorten(row.annotator, 40)}' also labelled"
                                 f" in {first[1].name}, a file of the other format: one person's labels"
                                 " would be counted as one annotator from two tools",
                                 "give the CSV's `annotator` column a name of its own")
            if row.prompt_id not in sample_ids:
                raise InputError(path, row.where, f"item '{shorten(row.prompt_id, 40)}' is not in"
                                 f" {sample_name}", "label the items `orsc annotate`"
                                 " wrote for this snapshot, or pass the snapshot they came from")
            key = (row.prompt_id, row.annotator)
            before = seen.get(key)
            if before is None:
                seen[key] = row
            elif before.label == row.label:
                out.repeated += 1
            else:
                raise InputError(path, row.where, f"annotator '{row.annotator}' labelled item"
                                 f" {row.prompt_id} '{row.label}' here and '{before.label}' in"
                                 f" {before.file} ({before.where})", "keep one of the two labels")
    out.rows = sorted(seen.values(), key=lambda r: (r.prompt_id, r.annotator))
    if not out.rows:
        raise InputError(paths[0] if len(paths) == 1 else None, "label",
                         "no labels in these files", "fill in the `label` column (benign, harmful or"
                         " unsure) before importing")
    return out


def _label(path: Path, where: str, value: str) -> str:
    label = value.strip().lower()
    if label not in LABELS:
        raise InputError(path, where, f"label {shorten(value, 40)!r} is not one of {', '.join(LABELS)}",
                         "use benign, harmful or unsure")
    return label


def _ambiguity(path: Path, where: str, value: str | None) -> int | None:
    text = (value or "").strip()
    if not text:
        return None
    code = next((k for k, v in AMBIGUITY.items() if text in (k, v)), None)
    if code is None:
        raise InputError(path, where, f"ambiguity {shorten(text, 40)!r} is not 1, 2 or 3",
                         "rate 1 (intent plainly benign), 2 or 3 (intent hard to tell), or leave it empty")
    return int(code)


def check_digest(path: Path, where: str, value: Any, digest: str) -> None:
    if value and value != digest:
        raise InputError(path, where, f"the labels belong to snapshot {shorten(str(value), 80)}, not"
                         f" {digest}", "pass the snapshot these tasks were made from")


def _read_csv(path: Path, digest: str, out: LabelSet) -> list[LabelRow]:
    rows = read_csv(path, ("prompt_id", "label"),
                    "import the files `orsc annotate --format csv` wrote, with their header")
    found = []
    for i, r in enumerate(rows, start=2):
        where = f"row {i}"
        if not (r.get("label") or "").strip():
            out.unlabelled += 1
            continue
        check_digest(path, where, (r.get("snapshot") or "").strip(), digest)
        found.append(LabelRow(prompt_id=(r.get("prompt_id") or "").strip(),
                              annotator=(r.get("annotator") or "").strip() or path.stem,
                              label=_label(path, where, r["label"]),
                              ambiguity=_ambiguity(path, where, r.get("ambiguity")),
                              notes=(r.get("notes") or "").strip(), file=path.name, where=where))
    return found


def label_studio_annotations(path: Path, digest: str, tasks_from: str) -> Iterator[tuple[str, dict, dict]]:
    """(where, task data, annotation) of every annotation of a Label Studio JSON export whose
    tasks came from `tasks_from` (an `orsc annotate` command line); InputError for a file
    that is not an export, a task without data.prompt_id, or tasks of another snapshot."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, None, f"is not valid JSON ({shorten(str(err), 120)})",
                         "pass Label Studio's JSON export (Export -> JSON)") from err
    if not isinstance(tasks, list):
        raise InputError(path, None, "is not a list of tasks",
                         "pass Label Studio's JSON export (Export -> JSON)")
    for n, task in enumerate(tasks, start=1):
        where = f"task {n}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "prompt_id" not in data:
            raise InputError(path, where, "has no data.prompt_id: not a task `orsc annotate` wrote",
                             f"export the project whose tasks came from `{tasks_from}`")
        check_digest(path, where, data.get("snapshot"), digest)
        for annotation in task.get("annotations") or []:
            yield where, data, annotation


def _read_label_studio(path: Path, digest: str, out: LabelSet) -> list[LabelRow]:
    found = []
    annotations = label_studio_annotations(path, digest, "orsc annotate --format label-studio")
    for where, data, annotation in annotations:
        if annotation.get("was_cancelled"):
            out.cancelled += 1
            continue
        answers = _results(path, where, annotation.get("result") or [])
        if not answers.get("label"):
            out.unlabelled += 1
            continue
        found.append(LabelRow(prompt_id=str(data["prompt_id"]), annotator=who(annotation),
                              label=_label(path, where, answers["label"]),
                              ambiguity=_ambiguity(path, where, answers.get("ambiguity")),
                              notes=answers.get("notes", ""), file=path.name, where=where))
    return found


def _results(path: Path, where: str, results: list[Any]) -> dict[str, str]:
    answers = {}
    for r in results:
        name = r.get("from_name") if isinstance(r, dict) else None
        value = r.get("value", {}) if isinstance(r, dict) else {}
        if name in ("label", "ambiguity") and value.get("choices"):
            answers[name] = str(value["choices"][0])
        elif name == "notes" and value.get("text"):
            answers[name] = " ".join(str(t) for t in value["text"]).strip()
        else:
            raise InputError(path, where, f"has a result '{shorten(str(name), 40)}' that the labeling"
                             " config of `orsc annotate` does not ask for: an export of another"
                             " labeling config", "set the project's labeling interface to the"
                             " label_config.xml `orsc annotate --format label-studio` wrote")
    return answers


def who(annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return f"label-studio:{who}"
