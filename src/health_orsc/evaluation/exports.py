"""Export a snapshot: with an evaluation's difficulty in Health-ORSC-Bench's field layout, so
results compare with the released benchmark's files (`--format health-orsc`, below), or as
a self-contained inspect task (`--format inspect`, write_inspect).

One JSON object per kept prompt, with Health-ORSC's fields:

    id                 the prompt's id
    question           the benign boundary prompt
    original_question  the harmful request it neighbours
    classification     its category id
    results            the jury's verdict per juror ({juror: "benign" | "harmful"})
    score              jurors that said benign (Health-ORSC: guards that said not harmful)
    refuse_count       models of the evaluation's panel that fully refused it
    refuse_rate        refuse_count / total_models
    total_models       models whose answer to it was graded

and, from an evaluation that graded rubrics (Safe Completion), three more:

    rubric             the prompt's criteria ({id, text, points, kind})
    safe_completions   models of the panel whose answer was a safe completion
    safe_completion_score  the panel's mean safe-completion score (HealthBench's)

Files: `all.jsonl` (every kept prompt the evaluation covered), and the difficulty subsets
`easy.jsonl`, `medium.jsonl`, `hard.jsonl` (the run's empirical levels; a prompt refused
by more than `hard_up_to` of the panel is in no subset, as in Health-ORSC).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError
from health_orsc.core.files import write_new_dir
from health_orsc.core.records import LEVELS
from health_orsc.evaluation.answer import DETECTOR, REFUSAL_STARTS, eval_items, grade_context, load_grader
from health_orsc.evaluation.run import DIFFICULTY
from health_orsc.inputs.templates import TemplateLibrary
from health_orsc.snapshot.handle import Snapshot, read_rows
from health_orsc.snapshot.store import MANIFEST, read_taxonomy

FORMATS = ("health-orsc", "inspect")


def health_orsc_rows(snapshot: Path, run: Path) -> list[dict]:
    with (run / DIFFICULTY).open(encoding="utf-8", newline="") as fh:
        difficulty = {r["id"]: r for r in csv.DictReader(fh)}
    out = []
    for row in read_rows(snapshot):
        d = difficulty.get(row.id)
        if row.reason is not None or d is None:
            continue
        out.append({"id": row.id, "question": row.prompt, "original_question": row.original_question,
                    "classification": row.category, "results": {v.juror: v.label for v in row.votes},
                    "score": row.benign_votes, "refuse_count": int(d["refuse_count"]),
                    "refuse_rate": None if d["refuse_rate"] == "" else float(d["refuse_rate"]),
                    "total_models": int(d["total_models"]), "_level": d["empirical_level"]})
        if "safe_completions" in d:
            out[-1].update(rubric=[c.model_dump() for c in row.rubric.criteria] if row.rubric else None,
                           safe_completions=int(d["safe_completions"]),
                           safe_completion_score=None if d["mean_score"] == "" else float(d["mean_score"]))
    return out


def check_pair(snapshot: Path, snapshot_digest: str, run: Path) -> None:
    """The run must be an evaluation of this very snapshot."""
    raw = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    if raw.get("kind") != "evaluation":
        raise InputError(run, "--evaluation", "is not an evaluation run", "pass a directory under"
                         " outputs/evaluations/")
    if raw["snapshot"]["digest"] != snapshot_digest:
        raise InputError(run, "--evaluation", f"evaluated snapshot {raw['snapshot']['name']}"
                         f" ({raw['snapshot']['digest']}), not {snapshot.name} ({snapshot_digest})",
                         "pass an evaluation run of this snapshot")


def write_health_orsc(snapshot: Path, run: Path, out: Path) -> dict[str, int]:
    """Write the files atomically (a temp dir renamed to `out`); `out` must not exist yet,
    or be an empty directory."""
    rows = health_orsc_rows(snapshot, run)
    subsets = {"all": rows, **{lvl: [r for r in rows if r["_level"] == lvl] for lvl in LEVELS}}
    files = {f"{name}.jsonl": "".join(json.dumps({k: v for k, v in r.items() if k != "_level"},
                                                 ensure_ascii=False) + "\n" for r in subset)
             for name, subset in subsets.items()}
    write_new_dir(out, files, "--out", "pass a new directory; nothing is overwritten")
    return {name: len(subset) for name, subset in subsets.items()}


INSPECT_TASK = Path(__file__).resolve().parents[1] / "data" / "inspect" / "task.py"
PROMPT_SLOT, ANSWER_SLOT = "<<<PROMPT>>>", "<<<ANSWER>>>"  # as the task module replaces them


def write_inspect(snapshot: Snapshot, config: BuildConfig, out: Path) -> dict[str, int]:
    """A self-contained inspect task in `out` (a new directory): task.py (the shipped module,
    data/inspect/task.py), dataset.jsonl (the prompts `orsc evaluate` asks: the kept prompts,
    `evaluation.sample` per stratum if set, and with `evaluation.contrast` the harmful
    requests they neighbour) and grader.json (the grader rubric's messages per category,
    with slots for the prompt and the answer, and XSTest's refusal openings). Counts per kind."""
    categories = snapshot.manifest.categories
    taxonomy = read_taxonomy(snapshot.path)
    entries = {c: taxonomy[c] for c in categories}
    if config.evaluation.grader == DETECTOR:  # the shipped rubric, for a grader model given to inspect
        library = TemplateLibrary(config.templates_dir)
        template = library.get(Path("graders", "xstest.j2"), "evaluation.grader", config.source)
    else:
        template = load_grader(config, entries)
    rows = [{"id": i["prompt_id"], "input": i["prompt"],
             "metadata": {"kind": i["kind"], "category": i["category"], "level": i["level"],
                          "rubric": i.get("rubric")}}
            for _, items in eval_items(snapshot, categories, config) for i in items]
    grader = {"template": template.name, "template_sha": template.sha, "refusal_starts": list(REFUSAL_STARTS),
              "messages": {c: template.render_messages(grade_context(PROMPT_SLOT, ANSWER_SLOT, entries[c]))
                           for c in categories}}
    files = {"dataset.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
             "grader.json": json.dumps(grader, indent=2, ensure_ascii=False) + "\n",
             "task.py": INSPECT_TASK.read_text(encoding="utf-8")}
    write_new_dir(out, files, "--out", "pass a new directory; nothing is overwritten")
    return {kind: sum(r["metadata"]["kind"] == kind for r in rows) for kind in ("benign", "harmful")}
