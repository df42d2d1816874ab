"""The evaluation, stage by stage, as plain functions: what each task of the
`evaluate-benchmark` flow calls (flows/evaluate.py only wires these into Prefect), the
counterpart of build/stages.py.

- `write_items`: the snapshot is read once; each category's items go to a stage file,
  whose tasks can start before the next category's is written.
- `answer_stage`: one (model x category): the model answers each item and the grader
  grades each answer, through the process's gateway (every call in the request cache);
  the responses go to a stage file.
- `write_run`: the responses scored (metrics, difficulty) and written as
  outputs/evaluations/<run>/ with its MANIFEST.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from health_orsc.core.config import BuildConfig
from health_orsc.core.records import (
    CHUNK,
    StageClock,
    content_id,
    iter_jsonl,
    slices,
    write_jsonl,
)
from health_orsc.evaluation.answer import (
    DETECTOR,
    EvalInputs,
    EvalItem,
    Response,
    answer_category,
    eval_items,
    planned_calls,
)
from health_orsc.evaluation.probe import latest_probe
from health_orsc.evaluation.run import snapshot_ref, write_evaluation
from health_orsc.inputs.templates import PromptTemplate
from health_orsc.llm import Gateway, Usage
from health_orsc.snapshot.store import stage_path


class EvaluationResult(BaseModel):
    """What `evaluate-benchmark` returns (and `orsc evaluate --json` prints)."""

    run: str                                # outputs/evaluations/<run>/
    leaderboard: list[dict[str, Any]]       # leaderboard.csv's rows (evaluation.scores.leaderboard)
    model_calls: dict[str, int]             # role -> calls made
    cache_hits: dict[str, int]
    tasks: int
    stages: dict[str, StageClock]           # evaluate (answers and grades), write (the run's files)


def write_items(inputs: EvalInputs, run: str) -> Iterator[tuple[str, Path, int]]:
    """Per category of the snapshot, as soon as it is written: the stage file holding its
    items (prompts to ask) and the calls one model's answer stage makes for them."""
    config, snapshot = inputs.config, inputs.snapshot
    for cat, cat_items in eval_items(snapshot, snapshot.manifest.categories, config):
        path = stage_path(config.outputs_dir, "evaluate", f"{run}-items-{content_id([cat])}")
        write_jsonl(path, cat_items)
        criteria = [len(i["rubric"]["criteria"]) if i.get("rubric") else None for i in cat_items]
        yield cat, path, planned_item_calls(inputs, criteria)


def planned_item_calls(inputs: EvalInputs, criteria: list[int | None]) -> int:
    """`planned_calls` under the evaluation's grader, rubric grader and per_criterion."""
    return planned_calls(criteria, inputs.grader_template is not None, inputs.rubric_template is not None,
                         inputs.config.evaluation.per_criterion)


def answer_stage(inputs: EvalInputs, model: str, category: str, items_path: Path, run: str,
                 gateway: Gateway, usage: Usage, planned: int) -> tuple[Path, int]:
    """`model`'s graded answers to one category's items: their stage file and how many.
    The items are answered CHUNK at a time, each chunk's responses written as it is done.
    `planned`: the calls it makes (write_items counted them)."""
    usage.expect(planned)
    answered = [0]

    def responses() -> Iterator[Response]:
        for items in slices(iter_jsonl(items_path, EvalItem), CHUNK):
            chunk = gateway.run(answer_category(inputs, model, category, items, gateway), usage)
            answered[0] += len(chunk)
            yield from chunk

    out = stage_path(inputs.config.outputs_dir, "evaluate", f"{run}-{content_id([model, category])}")
    write_jsonl(out, responses())
    return out, answered[0]


def grader_meta(config: BuildConfig, template: PromptTemplate | None,
                rubric: PromptTemplate | None) -> dict[str, str]:
    """MANIFEST's `grader`: the role, its model@endpoint and templates (or the detector)."""
    if template is None:
        return {"role": DETECTOR, "model": "xstest-string-match", "rubric": "none", "rubric_sha": ""}
    return {**grader_identity(config, rubric), "rubric": template.name, "rubric_sha": template.sha}


def grader_identity(config: BuildConfig, rubric: PromptTemplate | None) -> dict[str, str]:
    """The grader role, its model@endpoint and its rubric grader template: what a probe run
    records and an evaluation matches it by (evaluation/probe.py)."""
    ev = config.evaluation
    return {"role": ev.grader, "model": config.roles[ev.grader].identity(config.endpoint_for(ev.grader)),
            **({"rubric_grader": rubric.name, "rubric_grader_sha": rubric.sha} if rubric else {})}


def write_run(inputs: EvalInputs, run: str, answered: list[Path],
              started_at: str) -> tuple[Path, dict[str, Any]]:
    """The run's directory and metrics, from the answer stages' files (read as written)."""
    config, snapshot = inputs.config, inputs.snapshot
    ev = config.evaluation
    rubric = inputs.rubric_template
    meta = {"started_at": started_at, "snapshot": snapshot_ref(snapshot.path, snapshot.manifest.digest),
            "models": {m: config.roles[m].identity(config.endpoint_for(m)) for m in inputs.models},
            "grader": grader_meta(config, inputs.grader_template, rubric),
            "evaluation": ev.model_dump(mode="json")}
    probe = latest_probe(config.outputs_dir, meta["grader"]) if rubric else None
    if probe is not None:
        meta["grader"]["probe"] = Path(probe.written_to or "").name
    responses = (resp for path in answered for resp in iter_jsonl(path, Response))
    return write_evaluation(config.outputs_dir, run, responses, inputs.models, ev, meta,
                            None if probe is None else probe.model_dump(mode="json"))
