"""An evaluation run's files: outputs/evaluations/<run>/ with responses (parquet and JSON
lines), metrics.json, leaderboard.csv, difficulty.csv, report.html and a MANIFEST that names
the snapshot's digest; written once (temp dir, then rename) and re-derived by `orsc verify`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from health_orsc import __version__
from health_orsc.core.config import EvaluationConfig
from health_orsc.core.records import arrow_schema, write_jsonl
from health_orsc.evaluation.answer import Response
from health_orsc.evaluation.report import render_report
from health_orsc.evaluation.scores import difficulty, evaluation_metrics, table_csv
from health_orsc.snapshot.store import (
    MANIFEST,
    FileEntry,
    check_files,
    digest_of,
    evaluations_dir,
    file_sha256,
    read_jsonl_rows,
    writing_snapshot,
)
from health_orsc.snapshot.writer import listed_files

RESPONSES = "responses"        # .parquet and .jsonl
METRICS = "metrics.json"
LEADERBOARD = "leaderboard.csv"
DIFFICULTY = "difficulty.csv"
REPORT = "report.html"


class EvaluationManifest(BaseModel):
    kind: str = "evaluation"
    name: str
    started_at: str
    created_at: str
    package: dict[str, str]
    snapshot: dict[str, str]          # name, digest, manifest_sha256
    models: dict[str, str]            # role -> model@endpoint
    grader: dict[str, str]            # role, model, rubric, rubric_sha
    evaluation: dict[str, Any]        # the config's evaluation section
    counts: dict[str, int]
    files: dict[str, FileEntry]


def write_evaluation(outputs_dir: Path, name: str, responses: list[Response], metrics: dict[str, Any],
                     difficulty_rows: list[dict[str, Any]], meta: dict[str, Any],
                     probe: dict[str, Any] | None = None) -> Path:
    """outputs/evaluations/<name>/, written to a temp dir and renamed (never overwritten).
    `probe`: the grader's newest probe run, shown in report.html."""
    root = evaluations_dir(outputs_dir)
    with writing_snapshot(outputs_dir, name, root) as tmp:
        tmp.mkdir()
        rows = [r.model_dump(mode="json") for r in responses]
        table = pa.Table.from_pylist(rows, schema=arrow_schema(Response))
        pq.write_table(table, tmp / f"{RESPONSES}.parquet")
        write_jsonl(tmp / f"{RESPONSES}.jsonl", responses)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / LEADERBOARD).write_text(table_csv(metrics["leaderboard"]), encoding="utf-8")
        (tmp / DIFFICULTY).write_text(table_csv(difficulty_rows), encoding="utf-8")
        (tmp / REPORT).write_text(render_report(metrics, meta, name, probe), encoding="utf-8")
        manifest = EvaluationManifest(
            name=name, created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            package={"name": "health-orsc", "version": __version__}, files=listed_files(tmp),
            counts=run_counts(responses), **meta)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return root / name


def run_counts(responses: list[Response]) -> dict[str, int]:
    """MANIFEST's `counts` of an evaluation run."""
    return {"responses": len(responses), "benign": sum(r.kind == "benign" for r in responses),
            "harmful": sum(r.kind == "harmful" for r in responses),
            "unscored": sum(r.grade is None for r in responses)}


def snapshot_ref(snapshot: Path, digest: str) -> dict[str, str]:
    return {"name": snapshot.name, "digest": digest, "manifest_sha256": file_sha256(snapshot / MANIFEST)}


def verify_evaluation(run: Path, raw: dict[str, Any], digest: str | None = None) -> list[str]:
    """`orsc verify` for an evaluation run whose MANIFEST.json holds `raw`: every file's
    checksum, and every figure re-derived from responses.jsonl (metrics, leaderboard,
    difficulty, counts); the parquet rows equal the JSON lines. One line per problem."""
    manifest = EvaluationManifest.model_validate(raw)
    problems = check_files(run, manifest)
    if digest is not None and digest.removeprefix("sha256:") != digest_of(raw).removeprefix("sha256:"):
        problems.append(f"digest {digest_of(raw)} differs from the expected {digest[:80]}")
    if problems:
        return problems
    lines = read_jsonl_rows(run / f"{RESPONSES}.jsonl")
    responses = [Response.model_validate(r) for r in lines]
    # as records: a parquet struct has every field (a rubric's `writer` null), JSON lines omit it
    table = pq.read_table(run / f"{RESPONSES}.parquet").to_pylist()
    if [Response.model_validate(r) for r in table] != responses:
        problems.append(f"{RESPONSES}.parquet differs from {RESPONSES}.jsonl")
    # runs made before the grader-detector flag (and the safe-completion rates' McNemar test)
    # existed record no max_grader_disagreement: their files have neither
    since_flag = "max_grader_disagreement" in manifest.evaluation
    ev = EvaluationConfig.model_validate({"max_grader_disagreement": None, **manifest.evaluation})
    rows = difficulty(responses, ev)
    # runs made before truncated answers were counted record no grade_truncated
    since_truncation = "grade_truncated" in manifest.evaluation
    metrics = evaluation_metrics(responses, list(manifest.models), ev, rows, since_flag, since_truncation)
    if json.loads(json.dumps(metrics)) != json.loads((run / METRICS).read_text(encoding="utf-8")):
        problems.append(f"{METRICS} is not what {RESPONSES}.jsonl gives")
    if (run / LEADERBOARD).read_text(encoding="utf-8") != table_csv(metrics["leaderboard"]):
        problems.append(f"{LEADERBOARD} is not what {RESPONSES}.jsonl gives")
    if (run / DIFFICULTY).read_text(encoding="utf-8") != table_csv(rows):
        problems.append(f"{DIFFICULTY} is not what {RESPONSES}.jsonl gives")
    if run_counts(responses) != manifest.counts:
        problems.append(f"{MANIFEST} counts differ from {RESPONSES}.jsonl")
    return problems
