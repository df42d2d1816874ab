"""provenance: the full chain behind one prompt id, from snapshots and the request cache.

Works after the build has exited and on any machine holding the outputs/ folder:
rows come from snapshot files, raw model calls from the request cache (outputs/cache/llm.sqlite,
or the `cache.url` database).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from health_orsc.cache.requests import RequestCache, existing_request_cache
from health_orsc.core.config import CacheConfig, SamplingParams
from health_orsc.core.errors import InputError
from health_orsc.core.records import Rubric
from health_orsc.evaluation.answer import contrast_id
from health_orsc.evaluation.run import RESPONSES
from health_orsc.snapshot.handle import read_rows
from health_orsc.snapshot.store import (
    LABELS_FILE,
    evaluations_dir,
    list_snapshots,
    load_manifest,
    read_jsonl_rows,
)
from health_orsc.validation.rounds import read_rounds


class LLMCallRecord(BaseModel):
    key: str
    found: bool  # False when the cache no longer holds this call
    endpoint: str | None = None
    model: str | None = None
    params: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    response_text: str | None = None
    raw_response: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    latency_s: float | None = None
    made_at: str | None = None  # when the call was really made (UTC); later builds reuse it
    made_for_this_snapshot: bool | None = None  # False: the build took it from the cache


class Vote(BaseModel):
    juror: str
    model: str
    judge_prompt: str
    label: str
    rationale: str
    repairs: int
    calls: list[LLMCallRecord]
    p_harmful: float | None = None  # score jurors only


class Provenance(BaseModel):
    """Schema of `orsc provenance --json` (stable field names)."""

    id: str
    status: str  # "kept" or "rejected"
    reason: str | None  # a RejectReason (health_orsc.core.records)
    snapshot: str
    snapshot_digest: str
    snapshots: list[str]  # every snapshot that holds this id (kept or rejected)
    category: str
    category_fingerprint: str | None
    taxonomy_version: int | None  # the taxonomy version the category was built under
    carried_from: str | None  # the base snapshot its category was carried over from
    level: str | None  # None: imported from a source without levels
    prompt: str
    # imported rows (`orsc import`): the source file (name, sha256), line, the source's own id
    # and its other columns; seed, template and generator are then null throughout
    imported_from: dict[str, Any] | None = None
    seed: dict[str, Any]  # id, topic, original_question, source (file:line)
    template: dict[str, Any]  # name, sha, rendered
    generator: dict[str, Any]  # model, params
    generation_call: LLMCallRecord | None
    # status (kept|duplicate|off topic|not reached), duplicate_of, similarity, duplicates_dropped
    dedup: dict[str, Any]
    votes: list[Vote]
    benign_votes: int | None
    required_benign: int | None
    rubric: Rubric | None  # kept prompts of snapshots made since rubrics (schema_version 3)
    in_validation_sample: bool
    human_labels: list[HumanLabel]  # from every validation snapshot that labelled it
    answers: list[EvalAnswer] = []  # from every evaluation run (outputs/evaluations) that asked it


class EvalAnswer(BaseModel):
    run: str
    model: str       # the role
    model_id: str    # model@endpoint
    answer: str
    grade: str | None
    grade_rationale: str
    detector: str


class HumanLabel(BaseModel):
    snapshot: str
    annotator: str
    label: str
    ambiguity: int | None
    notes: str
    file: str  # the file people filled in (and where in it)


def _call(cache: RequestCache | None, key: str, window: tuple[str, str]) -> LLMCallRecord:
    hit = cache.get(key) if cache else None
    if hit is None:
        return LLMCallRecord(key=key, found=False)
    made_at = datetime.fromtimestamp(hit["created_at"], UTC).isoformat(timespec="milliseconds")
    req = hit["request"]
    params = {k: req.get(k) for k in (*SamplingParams.model_fields, "response_format")}
    return LLMCallRecord(key=key, found=True, endpoint=hit["endpoint"], model=hit["model"],
                         params=params, messages=req["messages"], response_text=hit["text"],
                         raw_response=hit["response"], usage=hit["usage"],
                         latency_s=hit["latency_s"], made_at=made_at,
                         made_for_this_snapshot=_made_for(made_at, window))


def _made_for(made_at: str, window: tuple[str, str]) -> bool | None:
    """True when the call was made while this snapshot was being built, False when the
    build reused a call made earlier (a cache hit); None if the snapshot has no start time."""
    started, created = window
    return started <= made_at <= created if started else None


def calls_of_prompt(prompt_id: str, outputs_dir: Path) -> list[str]:
    """Request-cache keys of every call behind a prompt id, in every snapshot that holds it."""
    keys = {k for snap in list_snapshots(outputs_dir) for row in read_rows(snap) if row.id == prompt_id
            for k in row.call_keys()}
    if not keys:
        raise InputError(None, "--prompt", f"'{prompt_id}' is in no snapshot under {outputs_dir}",
                         "copy an id from prompts.jsonl or rejected.jsonl of a snapshot")
    return sorted(keys)


def trace(prompt_id: str, outputs_dir: Path, snapshot: Path | None = None,
          cache_config: CacheConfig | None = None) -> Provenance:
    """Find `prompt_id` (kept or rejected) and assemble its provenance; the raw calls come
    from the request cache of `cache_config` (default: SQLite under outputs_dir)."""
    snapshots = list_snapshots(outputs_dir)
    if snapshot:
        load_manifest(snapshot)  # clear error if it is not a snapshot
        # the requested snapshot first, then every other one, each read once
        order = [snapshot, *(s for s in snapshots if s.resolve() != snapshot.resolve())]
    else:
        order = snapshots  # newest first: the newest holder is the one reported
    if not order:
        raise InputError(outputs_dir, None, "holds no snapshots", "run `orsc build` first")
    found = None
    holders = []
    human: list[HumanLabel] = []
    for snap in order:
        rows = read_rows(snap)
        row = next((r for r in rows if r.id == prompt_id), None)
        if row is not None:
            holders.append(snap.name)
            human += _human_labels(snap, prompt_id)
            if found is None and (snapshot is None or snap is snapshot):
                found = (snap, row, rows)
    if found is None:
        raise InputError(None, "prompt id", f"'{prompt_id}' is in no snapshot under {outputs_dir}",
                         "copy an id from prompts.jsonl or rejected.jsonl of a snapshot")
    snap, row, rows = found
    manifest = load_manifest(snap)
    sampled = {r["id"] for rows_of_round in read_rounds(snap) for r in rows_of_round}
    window = (manifest.started_at, manifest.created_at)
    cache = existing_request_cache(cache_config or CacheConfig(), outputs_dir, readonly=True)
    try:
        votes = [Vote(**v.model_dump(exclude={"calls"}), calls=[_call(cache, k, window) for k in v.calls])
                 for v in row.votes]
        gen_call = _call(cache, row.generation_call, window) if row.generation_call else None
    finally:
        if cache:
            cache.close()
    return Provenance(
        id=row.id, status="rejected" if row.reason else "kept", reason=row.reason,
        snapshot=snap.name, snapshot_digest=manifest.digest, snapshots=holders, category=row.category,
        category_fingerprint=manifest.fingerprints.get(row.category),
        taxonomy_version=manifest.taxonomy_versions.get(row.category),
        carried_from=manifest.base.name if row.category in manifest.carried and manifest.base else None,
        level=row.level, prompt=row.prompt,
        seed={"id": row.seed_id, "topic": row.seed_topic,
              "original_question": row.original_question, "source": row.seed_source},
        template={"name": row.template, "sha": row.template_sha, "rendered": row.template_text},
        generator={"model": row.generator,
                   "params": None if row.generator_params is None else json.loads(row.generator_params)},
        imported_from=_imported_from(manifest, row),
        generation_call=gen_call,
        dedup={"status": {"duplicate": "duplicate", "off_topic_rewrite": "off topic",
                          "unusable_rewrite": "not reached"}.get(row.reason or "", "kept"),
               "duplicate_of": row.duplicate_of, "similarity": row.similarity,
               "duplicates_dropped": [r.id for r in rows if r.duplicate_of == row.id]},
        votes=votes, benign_votes=row.benign_votes,
        required_benign=manifest.jury.get("required_benign"), rubric=row.rubric,
        in_validation_sample=row.id in sampled, human_labels=human,
        # an imported contrast prompt is asked as part of the contrast set, under its id there
        answers=_answers(outputs_dir, {prompt_id, *([contrast_id(row.category, row.prompt)]
                                                    if row.reason == "source_harmful" else [])}),
    )


def _imported_from(manifest, row) -> dict[str, Any] | None:
    if row.imported_from is None:
        return None
    o = row.imported_from
    files = manifest.source.files if manifest.source else []
    sha = next((f.sha256 for f in files if f.name == o.file), None)
    return {"file": o.file, "sha256": sha, "line": o.line, "id": o.id, "fields": json.loads(o.fields)}


def _answers(outputs_dir: Path, prompt_ids: set[str]) -> list[EvalAnswer]:
    """Every model's answer to the prompt, with its grades, in every evaluation run."""
    out = []
    for path in sorted(evaluations_dir(outputs_dir).glob(f"*/{RESPONSES}.jsonl")):
        out += [EvalAnswer(run=path.parent.name, **{k: r[k] for k in EvalAnswer.model_fields if k != "run"})
                for r in read_jsonl_rows(path) if r["prompt_id"] in prompt_ids]
    return out


def _human_labels(snapshot: Path, prompt_id: str) -> list[HumanLabel]:
    path = snapshot / LABELS_FILE
    if not path.is_file():
        return []
    return [HumanLabel(snapshot=snapshot.name, annotator=r["annotator"], label=r["label"],
                       ambiguity=r["ambiguity"], notes=r["notes"], file=f"{r['file']} ({r['where']})")
            for r in read_jsonl_rows(path) if r["prompt_id"] == prompt_id]
