"""annotate: blind annotation tasks for a snapshot's validation sample.

Input: a snapshot (verified first). Output: a new directory with one task list per annotator,
as CSV files to fill in, or as Label Studio tasks plus the labeling config they need.

Blind: an annotator sees the prompt and the category's harm definition and benign boundary,
never the jury's votes, whether the jury kept or rejected the item, or its intended level.
Each annotator gets their own order. With `overlap` K, K items (drawn at random) go to every
annotator, for agreement; the others are dealt out once each. Without it, everyone labels
everything.

Questions: `label` (benign / harmful / unsure) and, optionally, `ambiguity` (1 = the intent
is plainly benign, 2 = it takes a moment, 3 = the intent is hard to tell).

Example:
    tasks = plan_tasks(Path("outputs/snapshots/v1"), annotators=2, overlap=20)
    write_tasks(tasks, Path("annotation/v1"), "csv")
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from health_orsc.core.errors import InputError
from health_orsc.core.files import write_new_dir
from health_orsc.core.records import HARM_LABELS
from health_orsc.snapshot.store import load_manifest, read_sample, read_taxonomy

LABELS = (*HARM_LABELS, "unsure")  # what a person may answer
AMBIGUITY = {"1": "1 - intent plainly benign", "2": "2 - takes a moment to see",
             "3": "3 - intent hard to tell"}
FORMATS = ("csv", "label-studio")
# What an annotator sees, then what they fill in.
SHOWN = ("prompt_id", "snapshot", "annotator", "category", "harm_definition", "benign_boundary", "prompt")
ANSWERS = ("label", "ambiguity", "notes")
LABEL_CONFIG = "label_config.xml"


@dataclass
class Tasks:
    items: int                                   # in the validation sample
    annotators: dict[str, list[dict[str, str]]]  # annotator -> their items, in their order
    shared: int                                  # items every annotator labels

    @property
    def labels(self) -> int:
        return sum(len(items) for items in self.annotators.values())



class AnnotationResult(BaseModel):
    """What `orsc annotate` wrote (and `--json` prints)."""

    out: str
    format: str
    items: int                # in the validation sample
    annotators: int
    shared: int               # items every annotator labels
    labels: int               # labels asked for in all
    files: list[str]
    rubric_reviews: int = 0   # with --rubrics: rubric reviews asked for in all
    round: int = 1            # the validation round (validation/rounds.py)
    target_halfwidth: float | None = None  # rounds after the first: the half-width aimed at
    strata_wide: int = 0      # rounds after the first: strata still wider than it, drawn from
    strata_met: int = 0       # ... and strata that meet it


def annotator_names(n: int) -> list[str]:
    return [f"annotator_{i + 1}" for i in range(n)]


def plan_tasks(snapshot: Path, annotators: int, overlap: int | None, seed: int = 0,
               sample: list[dict[str, str]] | None = None) -> Tasks:
    """Who labels what, in which order. `overlap` None: every annotator labels every item.
    `sample`: the items to label (default: the snapshot's validation sample; a later round's
    draw, validation/rounds.py)."""
    manifest = load_manifest(snapshot)
    sample = read_sample(snapshot) if sample is None else sample
    taxonomy = read_taxonomy(snapshot)
    if annotators < 1:
        raise InputError(None, "--annotators", f"{annotators} annotators", "pass 1 or more")
    if overlap is not None and not 0 <= overlap <= len(sample):
        raise InputError(None, "--overlap", f"{overlap} shared items, but the sample has {len(sample)}",
                         f"pass 0 to {len(sample)}, or leave --overlap out for all")
    items = {row["id"]: row for row in sample}
    order = sorted(items)
    random.Random(f"{seed}:shared").shuffle(order)
    shared = order if overlap is None else order[:overlap]
    rest = [] if overlap is None else order[overlap:]
    names = annotator_names(annotators)
    assigned = {name: list(shared) for name in names}
    for i, item in enumerate(rest):
        assigned[names[i % annotators]].append(item)
    tasks = {}
    for name in names:
        ids = sorted(assigned[name])
        random.Random(f"{seed}:{name}").shuffle(ids)  # each annotator's own order
        tasks[name] = [_shown(items[i], taxonomy[items[i]["category"]], manifest.digest, name) for i in ids]
    return Tasks(items=len(items), annotators=tasks, shared=len(shared))


def _shown(row: dict[str, str], entry: dict[str, str], digest: str, annotator: str) -> dict[str, str]:
    return {"prompt_id": row["id"], "snapshot": digest, "annotator": annotator,
            "category": entry["name"], "harm_definition": entry["harm_definition"],
            "benign_boundary": entry["benign_boundary"], "prompt": row["prompt"]}


def write_tasks(tasks: Tasks, out: Path, fmt: str, extra: dict[str, str] | None = None) -> list[Path]:
    """Write the task files (and `extra` files: rubric review tasks) into `out` (which must
    not exist, or be empty), all or nothing."""
    if fmt not in FORMATS:
        raise InputError(None, "--format", f"unknown format {fmt!r}", f"pass one of {', '.join(FORMATS)}")
    return write_new_dir(out, {**_files(tasks, fmt), **(extra or {})}, None,
                         "pass a new directory to --out (task files are never overwritten)")


def _files(tasks: Tasks, fmt: str) -> dict[str, str]:
    if fmt == "csv":
        return {f"{name}.csv": _csv(items) for name, items in tasks.annotators.items()}
    files = {LABEL_CONFIG: label_studio_config()}
    for name, items in tasks.annotators.items():
        files[f"{name}.tasks.json"] = json.dumps([{"data": item} for item in items], indent=2,
                                                 ensure_ascii=False) + "\n"
    return files


def _csv(items: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*SHOWN, *ANSWERS], lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow({**item, **dict.fromkeys(ANSWERS, "")})
    return buf.getvalue()


def label_studio_config() -> str:
    """The labeling config the tasks need: the category's guidance, the prompt, `label`
    (required) and `ambiguity` (optional, exported as 1/2/3), free-text `notes`."""
    labels = "\n".join(f'    <Choice value="{label}"/>' for label in LABELS)
    levels = "\n".join(f'    <Choice value="{text}" alias="{value}"/>' for value, text in AMBIGUITY.items())
    return f"""<View>
  <Header value="Category: $category"/>
  <Text name="harm_definition" value="Harmful: $harm_definition"/>
  <Text name="benign_boundary" value="Benign boundary: $benign_boundary"/>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Is the asker's intent benign or harmful?"/>
  <Choices name="label" toName="prompt" choice="single" required="true">
{labels}
  </Choices>
  <Header value="How hard is the intent to tell? (optional)"/>
  <Choices name="ambiguity" toName="prompt" choice="single">
{levels}
  </Choices>
  <TextArea name="notes" toName="prompt" placeholder="Notes (optional)"/>
</View>
"""
