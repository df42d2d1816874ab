"""An evaluation run's files, written as the responses stream past: responses.* in
parquet row groups with their checksums taken on the way, metrics scored from the
responses without their texts, and `orsc verify`'s re-derivation of them all."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from health_orsc.core.config import EvaluationConfig
from health_orsc.core.records import write_jsonl
from health_orsc.evaluation.answer import Response
from health_orsc.evaluation.rubric import CriterionGrade
from health_orsc.evaluation.run import RESPONSES, verify_evaluation, write_evaluation
from health_orsc.evaluation.scores import score_run
from health_orsc.snapshot import rowfiles
from health_orsc.snapshot.store import MANIFEST, file_sha256


def responses(n: int) -> list[Response]:
    """`n` graded answers of two models, each with texts and rubric grades (harmful ones
    of the contrast set among them)."""
    grades = ["full_refusal", "partial_refusal", "full_compliance", None]
    out = []
    for i in range(n):
        p = i // 2  # both models answer each prompt
        harmful = p % 7 == 0
        out.append(Response(
            prompt_id=f"p{p:03d}", kind="harmful" if harmful else "benign",
            category=["self_harm", "drug_abuse"][p % 2],
            level=None if harmful else ["easy", "medium", "hard"][p % 3], prompt=f"question {p} é",
            model=f"m{i % 2}", model_id=f"m{i % 2}@x", answer=f"an answer {i} " * 20,
            grade=grades[i % 4], grade_source="grader", grade_rationale=f"because {i}",
            detector="full_refusal" if i % 3 == 0 else "full_compliance", answer_call=f"a{i}",
            grade_calls=[f"g{i}"], finish_reason="stop",
            criteria_grades=None if harmful else [CriterionGrade(id="h1", met=i % 2 == 0, reason=f"r{i}")],
            helpfulness=None if harmful else (i % 5) / 4, harm=None if harmful else i % 9 == 0,
            safe_completion_score=None if harmful else (i % 5) / 4,
            safe_completion=None if harmful else i % 5 > 1, rubric_calls=[] if harmful else [f"c{i}"]))
    return out


def meta(ev: EvaluationConfig) -> dict:
    return {"started_at": "2026-12-06T00:00:00.000+00:00",
            "snapshot": {"name": "v1", "digest": "sha256:0", "manifest_sha256": "0"},
            "models": {"m0": "m0@x", "m1": "m1@x"},
            "grader": {"role": "grader", "model": "g@x", "rubric": "grader.j2", "rubric_sha": "0"},
            "evaluation": ev.model_dump(mode="json")}


def test_a_run_of_several_row_groups_is_written_as_it_streams_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(rowfiles, "ROW_GROUP", 16)
    answered = responses(40)
    ev = EvaluationConfig()
    run, metrics = write_evaluation(tmp_path, "run-1", iter(answered), ["m0", "m1"], ev, meta(ev))
    parquet = pq.ParquetFile(run / f"{RESPONSES}.parquet")
    assert parquet.num_row_groups == 3  # 40 responses in groups of 16
    assert [Response.model_validate(r) for r in parquet.read().to_pylist()] == answered
    write_jsonl(tmp_path / "whole.jsonl", answered)  # the JSON lines are what writing them whole gave
    assert (run / f"{RESPONSES}.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    # scored without the answers, rationales and call keys: the figures of the full responses
    assert metrics == score_run(answered, ["m0", "m1"], ev)[0]
    assert metrics["models"]["m0"]["rubric"]["graded"] > 0
    raw = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    assert raw["counts"]["responses"] == 40
    assert verify_evaluation(run, raw) == []


def test_verify_finds_parquet_rows_that_differ_from_the_json_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(rowfiles, "ROW_GROUP", 16)
    answered = responses(40)
    ev = EvaluationConfig()
    run, _ = write_evaluation(tmp_path, "run-1", answered, ["m0", "m1"], ev, meta(ev))
    raw = json.loads((run / MANIFEST).read_text(encoding="utf-8"))
    # a parquet whose last row group lost a row, its checksum updated to match
    changed = pq.read_table(run / f"{RESPONSES}.parquet").slice(0, 39)
    pq.write_table(changed, run / f"{RESPONSES}.parquet")
    path = run / f"{RESPONSES}.parquet"
    raw["files"][f"{RESPONSES}.parquet"] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    assert verify_evaluation(run, raw) == [f"{RESPONSES}.parquet differs from {RESPONSES}.jsonl"]
