"""An evaluation run's files: outputs/evaluations/<run>/ with responses (parquet and JSON
lines), metrics.json, leaderboard.csv, difficulty.csv, report.html and a MANIFEST that names
the snapshot's digest; written once (temp dir, then rename) and re-derived by `orsc verify`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel

from health_orsc import __version__
from health_orsc.core.config import EvaluationConfig
from health_orsc.core.records import arrow_schema, canonical_json, iter_jsonl
from health_orsc.evaluation.answer import Response
from health_orsc.evaluation.report import render_report
from health_orsc.evaluation.scores import score_run, table_csv
from health_orsc.snapshot.rowfiles import BATCH, RowFiles, SnapshotFiles
from health_orsc.snapshot.store import (
    MANIFEST,
    FileEntry,
    check_files,
    digest_of,
    evaluations_dir,
    file_sha256,
    writing_snapshot,
)

RESPONSES = "responses"        # .parquet and .jsonl
METRICS = "metrics.json"
LEADERBOARD = "leaderboard.csv"
DIFFICULTY = "difficulty.csv"
REPORT = "report.html"
RESPONSE_SCHEMA = arrow_schema(Response)


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


def write_evaluation(outputs_dir: Path, name: str, responses: Iterable[Response], models: list[str],
                     ev: EvaluationConfig, meta: dict[str, Any],
                     probe: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """outputs/evaluations/<name>/, written to a temp dir and renamed (never overwritten),
    and its metrics. The responses are written as they come (parquet in row groups,
    checksums taken on the way); the metrics are scored from what they hold
    (Response.scored). `probe`: the grader's newest probe run, shown in report.html."""
    root = evaluations_dir(outputs_dir)
    with writing_snapshot(outputs_dir, name, root) as tmp:
        tmp.mkdir()
        files = SnapshotFiles(tmp)
        scored = []
        with RowFiles(files, RESPONSES, schema=RESPONSE_SCHEMA, line=canonical_json) as out:
            for response in responses:
                out.add(response)
                scored.append(response.scored())
        metrics, rows = score_run(scored, models, ev)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / LEADERBOARD).write_text(table_csv(metrics["leaderboard"]), encoding="utf-8")
        (tmp / DIFFICULTY).write_text(table_csv(rows), encoding="utf-8")
        (tmp / REPORT).write_text(render_report(metrics, meta, name, probe), encoding="utf-8")
        manifest = EvaluationManifest(
            name=name, created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            package={"name": "health-orsc", "version": __version__}, files=files.listed(),
            counts=run_counts(scored), **meta)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return root / name, metrics


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
    responses, same = [], True
    for line, row in zip_longest(iter_jsonl(run / f"{RESPONSES}.jsonl", Response), parquet_rows(run)):
        # as records: a parquet struct has every field (a rubric's `writer` null), JSON lines omit it
        same = same and row is not None and Response.model_validate(row) == line
        if line is not None:
            responses.append(line.scored())
    if not same:
        problems.append(f"{RESPONSES}.parquet differs from {RESPONSES}.jsonl")
    # runs made before the grader-detector flag (and the safe-completion rates' McNemar test)
    # existed record no max_grader_disagreement: their files have neither
    since_flag = "max_grader_disagreement" in manifest.evaluation
    ev = EvaluationConfig.model_validate({"max_grader_disagreement": None, **manifest.evaluation})
    # runs made before truncated answers were counted record no grade_truncated
    since_truncation = "grade_truncated" in manifest.evaluation
    metrics, rows = score_run(responses, list(manifest.models), ev, since_flag, since_truncation)
    if json.loads(json.dumps(metrics)) != json.loads((run / METRICS).read_text(encoding="utf-8")):
        problems.append(f"{METRICS} is not what {RESPONSES}.jsonl gives")
    if (run / LEADERBOARD).read_text(encoding="utf-8") != table_csv(metrics["leaderboard"]):
        problems.append(f"{LEADERBOARD} is not what {RESPONSES}.jsonl gives")
    if (run / DIFFICULTY).read_text(encoding="utf-8") != table_csv(rows):
        problems.append(f"{DIFFICULTY} is not what {RESPONSES}.jsonl gives")
    if run_counts(responses) != manifest.counts:
        problems.append(f"{MANIFEST} counts differ from {RESPONSES}.jsonl")
    return problems


def parquet_rows(run: Path) -> Iterator[dict[str, Any]]:
    """responses.parquet's rows, a record batch at a time."""
    for batch in pq.ParquetFile(run / f"{RESPONSES}.parquet").iter_batches(batch_size=BATCH):
        yield from batch.to_pylist()
