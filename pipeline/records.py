"""Records that flow between stages, and the content-addressed ids they carry.

Every id is the short sha256 of the canonical JSON of what produced the record
(DESIGN.md principle 1): same inputs, same id, same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Level = Literal["easy", "medium", "hard"]
LEVELS: tuple[Level, ...] = ("easy", "medium", "hard")
CATEGORIES: tuple[str, ...] = (
    "self_harm",
    "drug_abuse",
    "medical_misinformation",
    "unqualified_medical_advice",
    "health_privacy",
    "mental_abuse",
    "biological_chemical_harm",
)
ID_LENGTH = 16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: the input to every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def content_id(obj: Any, length: int = ID_LENGTH) -> str:
    return sha256_hex(canonical_json(obj))[:length]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedTopic(Record):
    """One seed topic: the benign neighbour of a harmful request."""

    id: str
    category: str
    topic: str
    original_question: str
    slots: dict[str, str]
    source_file: str
    source_line: int


class Candidate(Record):
    """A generated prompt, before dedup and jury."""

    id: str
    category: str
    level: Level
    seed_id: str
    seed_topic: str
    seed_source: str  # seed file and line, e.g. self_harm.yaml:12
    original_question: str
    template: str
    template_sha: str
    template_text: str
    variant: int
    prompt: str
    generator: str
    generator_params: dict[str, Any]
    generation_call: str | None


class JurorVote(Record):
    juror: str
    model: str
    judge_prompt: str
    label: Literal["benign", "harmful", "unparseable"]
    rationale: str
    calls: list[str]
    repairs: int


class Decision(Record):
    """What happened to a candidate: kept, or rejected with a reason."""

    candidate: Candidate
    kept: bool
    reason: str | None = None
    duplicate_of: str | None = None
    similarity: float | None = None
    votes: list[JurorVote] = []
    benign_votes: int | None = None


class CalibrationVote(Record):
    """A juror's verdict on a seed's original_question: a request known to be harmful."""

    category: str
    seed_id: str
    original_question: str
    vote: JurorVote


def write_jsonl(path: Path, records: list[BaseModel]) -> None:
    """Write records atomically (temp file then rename), one canonical JSON per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(canonical_json(record.model_dump(mode="json")) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path, model: type[BaseModel]) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [model.model_validate_json(line) for line in fh if line.strip()]
