"""Records that flow between stages, the snapshot row, and the content-addressed ids they carry.

Every id is the short sha256 of the canonical JSON of what produced the record
(docs/architecture.md, principle 1): same inputs, same id, same bytes.

Which categories exist, and their order, is the taxonomy file's business
(seeds/taxonomy.yaml), not this module's: functions that order categories take
that order as an argument.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import types
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

Level = Literal["easy", "medium", "hard"]
LEVELS: tuple[Level, ...] = get_args(Level)
# The stratum of rows without a level (imported from a source that has none, `orsc import`):
# a label for counts and tables, never a row's `level` (that is null).
UNLEVELED = "unleveled"
StratumLevel = Literal["easy", "medium", "hard", "unleveled"]
STRATUM_LEVELS: tuple[StratumLevel, ...] = get_args(StratumLevel)
# What a juror, a gold file and a person say of a prompt (people may also say "unsure").
HarmLabel = Literal["benign", "harmful"]
HARM_LABELS: tuple[HarmLabel, ...] = get_args(HarmLabel)
# Why a candidate left the benchmark; every stage rejects with one of these.
# off_topic_rewrite: a rewrite whose embedding drifted from its template prompt (dedup stage)
# human_harmful: kept by the jury, labelled harmful by people (`orsc validate --gate`)
# source_harmful: an imported row its source labels harmful (XSTest's unsafe contrasts,
# OR-Bench's toxic prompts): the contrast set, not a benign prompt (`orsc import`)
RejectReason = Literal["unusable_rewrite", "off_topic_rewrite", "duplicate", "jury_harmful",
                       "unparseable_verdict", "human_harmful", "source_harmful"]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)
# A rubric criterion's kind: `helpful` earns positive points (what a helpful answer does),
# `harm` negative ones (actionable detail that crosses into harm).
CriterionKind = Literal["helpful", "harm"]
CRITERION_KINDS: tuple[CriterionKind, ...] = get_args(CriterionKind)
MAX_CRITERION_POINTS = 10  # HealthBench's range: points in [-10, 10]
CRITERION_ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# A category id is also a file name (seeds/<id>.yaml, data/<id>.jsonl): keep it plain.
CATEGORY_ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
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


def stratum_level(level: str | None) -> str:
    """A row's level as a stratum label: its level, or UNLEVELED when it has none."""
    return level or UNLEVELED


def without_none(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`data` without those `keys` whose value is None: a field added later is left out where
    it has no value, so files written before it existed re-serialise byte for byte."""
    for key in keys:
        if data.get(key) is None:
            data.pop(key, None)
    return data


def stratum_key(source: str, category: str, level: str | None) -> str:
    """A validation sampling stratum's name: `kept:self_harm:easy`, `rejected:drug_abuse:unleveled`."""
    return f"{source}:{category}:{stratum_level(level)}"


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


TEMPLATE_GENERATOR = "template"  # the `generator` of variant 0: the template's own rendering


class Candidate(Record):
    """A generated prompt, before dedup and jury."""

    # Built candidates have every field; a row imported from a published benchmark (`orsc
    # import`) has null where its source has nothing (no level, seed, template or generator).
    id: str
    category: str
    level: Level | None
    seed_id: str | None
    seed_topic: str | None
    seed_source: str | None  # seed file and line, e.g. self_harm.yaml:12
    original_question: str | None
    template: str | None
    template_sha: str | None
    template_text: str | None
    variant: int | None
    prompt: str
    generator: str | None
    generator_params: dict[str, Any] | None
    generation_call: str | None

    @property
    def is_rewrite(self) -> bool:
        return self.generator != TEMPLATE_GENERATOR


class JurorVote(Record):
    juror: str
    model: str
    judge_prompt: str
    label: Literal[HarmLabel, "unparseable"]
    rationale: str
    calls: list[str]
    repairs: int
    # score jurors (`scoring: logprobs`): P(harmful) from the label tokens' probabilities
    p_harmful: float | None = None

    @model_serializer(mode="wrap")
    def _without_unscored(self, handler):
        """A verdict juror's vote is written without `p_harmful`, as before score jurors
        existed: rows of older snapshots re-serialise byte for byte (orsc verify)."""
        return without_none(handler(self), "p_harmful")


class Criterion(Record):
    """One criterion of a prompt's rubric, graded met / not met on each answer. An answer's
    safe-completion score is HealthBench's: points of the criteria it meets over the total
    positive points, clipped to [0, 1]."""

    id: str = Field(pattern=CRITERION_ID_PATTERN, description="unique within the rubric")
    text: str = Field(min_length=1, description="what the grader checks the answer for")
    points: int = Field(ge=-MAX_CRITERION_POINTS, le=MAX_CRITERION_POINTS,
                        description="positive for `helpful`, negative for `harm`")
    kind: CriterionKind

    @model_validator(mode="after")
    def _sign_follows_kind(self) -> Criterion:
        if (self.kind == "helpful") != (self.points > 0) or self.points == 0:
            want = "above 0" if self.kind == "helpful" else "below 0"
            raise ValueError(f"criterion '{self.id}' is {self.kind} with {self.points} points;"
                             f" a {self.kind} criterion's points are {want}")
        return self


class RubricWriter(Record):
    """The `generation.rubric_writer` role's part in a rubric: who drafted which criteria
    with which template and calls, or why its draft was rejected (template criteria only)."""

    model: str = Field(description="`model@endpoint` of the rubric writer")
    template: str = Field(description="the writer's prompt template, relative to the templates directory")
    template_sha: str = Field(description="sha256 prefix of the writer's template")
    calls: list[str] = Field(description="request-cache keys of the writer's calls (repairs too)")
    added: list[str] = Field(description="ids of the criteria it added after the template's")
    rejected: str | None = Field(description="why its draft was not used (null when used)")


class Rubric(Record):
    """A kept prompt's rubric: its criteria and the template they were rendered from (and,
    with a rubric writer, the prompt-specific criteria it drafted after them)."""

    criteria: list[Criterion]
    template: str = Field(description="rubric template, relative to the templates directory")
    template_sha: str = Field(description="sha256 prefix of the rubric template's source")
    writer: RubricWriter | None = Field(default=None, description="the rubric writer's part (null without"
                                        " one)")

    @model_serializer(mode="wrap")
    def _without_writer(self, handler):
        """A rubric without a writer is written as rubrics were before writers existed."""
        data = handler(self)
        if data.get("writer") is None:
            data.pop("writer", None)
        return data


def rubric_problems(criteria: list[Criterion]) -> list[str]:
    """What makes a list of criteria unusable as a rubric (each criterion is valid alone)."""
    problems = []
    if not criteria:
        return ["it has no criterion"]
    ids = [c.id for c in criteria]
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"criterion ids {dupes} repeat")
    if not any(c.points > 0 for c in criteria):
        problems.append("its positive points total 0 (no helpful criterion), so no score can be computed")
    return problems


class Decision(Record):
    """What happened to a candidate: kept, or rejected with a reason."""

    candidate: Candidate
    kept: bool
    reason: RejectReason | None = None
    duplicate_of: str | None = None
    similarity: float | None = None
    votes: list[JurorVote] = []
    benign_votes: int | None = None
    rubric: Rubric | None = None  # kept prompts, from the export on

    @property
    def source(self) -> Literal["kept", "rejected"]:
        """Which side of the build the candidate is on (the validation sample's `source`)."""
        return "kept" if self.kept else "rejected"


class CalibrationVote(Record):
    """A juror's verdict in the jury check: on a seed's original_question, a request known
    to be harmful (`known` harmful), or on its hand-written boundary_question, a benign
    control paired with that request (`known` benign; `prompt` is what the juror judged)."""

    category: str
    seed_id: str
    original_question: str
    vote: JurorVote
    known: HarmLabel = "harmful"
    prompt: str = ""  # the benign control's text (empty: the original_question itself)


class ImportedFrom(Record):
    """Where an imported row (`orsc import`) stands in its published source file."""

    file: str = Field(description="the source file's name (MANIFEST `source.files` has its sha256)")
    line: int = Field(description="1-based line of the file where the row starts")
    id: str | None = Field(description="the source's own id of the row (null when it has none)")
    fields: str = Field(description="the source row's other columns, as JSON (e.g. XSTest's `type`,"
                                    " `focus`, `note`; Health-ORSC-Bench's `results`, `score`)")


class SnapshotRow(Record):
    """One row of prompts.* and rejected.* (and data/<category>.jsonl): the one place the
    snapshot's row layout is written down. The parquet schema, the JSON lines, the
    conversion to and from a Decision and the dataset card's field list all come from here.
    A row imported from a published benchmark (`orsc import`) is null in every field its
    source has nothing for, and says where it came from in `imported_from`."""

    id: str = Field(description="content-addressed id (sha256 prefix of what produced the prompt)")
    category: str = Field(description="category id from the taxonomy")
    level: Level | None = Field(description="intended intent ambiguity of the template: easy, medium or"
                                " hard (imported: the source's level where it has one, else null)")
    prompt: str = Field(description="the benign boundary question (Health-ORSC-Bench calls it `question`)")
    original_question: str | None = Field(description="the harmful request the prompt neighbours")
    seed_id: str | None = Field(description="id of the seed topic")
    seed_topic: str | None = Field(description="name of the seed topic")
    seed_source: str | None = Field(description="seed file and line, e.g. `self_harm.yaml:12`")
    template: str | None = Field(description="generation template, relative to the templates directory")
    template_sha: str | None = Field(description="sha256 prefix of the template's source")
    template_text: str | None = Field(description="the template rendered for this seed, before rewriting")
    variant: int | None = Field(description="0: the template's own rendering; n >= 1: the n-th rewrite"
                                " (sampling seed offset n - 1)")
    generator: str | None = Field(description="`model@endpoint` that rewrote the prompt, or `template`")
    generator_params: str | None = Field(description="the generator's sampling parameters (JSON)")
    generation_call: str | None = Field(description="request-cache key of the rewrite call")
    votes: list[JurorVote] = Field(description="every juror's label, rationale and call keys")
    benign_votes: int | None = Field(description="jurors who said benign")
    n_jurors: int | None = Field(description="jurors who voted")
    reason: RejectReason | None = Field(description="why it was rejected (null when kept)")
    duplicate_of: str | None = Field(description="the kept prompt it near-duplicates")
    similarity: float | None = Field(description="cosine similarity to `duplicate_of` (duplicate), or"
                                     " of a rewrite to its `template_text` (off_topic_rewrite)")
    rubric: Rubric | None = Field(
        default=None, description="kept prompts: `criteria` an answer is graded against, each"
        " `{id, text, points, kind}` (`helpful`: points earned when met; `harm`: points lost), and the"
        " rubric `template` and `template_sha` they were rendered from")
    imported_from: ImportedFrom | None = Field(
        default=None, description="imported rows (`orsc import`): the source `file`, `line`, its own"
        " `id` and its other columns (`fields`, JSON); absent in built rows")

    @model_serializer(mode="wrap")
    def _without_rubric(self, handler):
        """A row without a rubric (rejected, or from a snapshot made before rubrics) or not
        imported is written without those keys: rows of older snapshots re-serialise byte
        for byte."""
        return without_none(handler(self), "rubric", "imported_from")

    @classmethod
    def from_decision(cls, d: Decision) -> SnapshotRow:
        c = d.candidate.model_dump()
        if c["generator_params"] is not None:
            c["generator_params"] = canonical_json(c["generator_params"])
        return cls(**c, votes=d.votes, benign_votes=d.benign_votes,
                   n_jurors=len(d.votes) if d.votes else None, reason=d.reason,
                   duplicate_of=d.duplicate_of, similarity=d.similarity, rubric=d.rubric)

    def to_decision(self) -> Decision:
        fields = self.model_dump()
        if self.generator_params is not None:
            fields["generator_params"] = json.loads(self.generator_params)
        cand = Candidate(**{k: fields[k] for k in Candidate.model_fields})
        return Decision(candidate=cand, kept=self.reason is None, reason=self.reason,
                        duplicate_of=self.duplicate_of, similarity=self.similarity,
                        votes=self.votes, benign_votes=self.benign_votes, rubric=self.rubric)

    def json_line(self) -> str:
        return row_line(self.model_dump(mode="json"))

    def call_keys(self) -> list[str]:
        """Request-cache keys of every model call behind this row."""
        return [k for k in [self.generation_call, *(c for v in self.votes for c in v.calls)] if k]


def row_line(fields: dict[str, Any]) -> str:
    """A snapshot row's JSON line (its fields as model_dump(mode="json") gives them)."""
    return json.dumps(fields, ensure_ascii=False, sort_keys=True)


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The parquet schema of a record model, from its field annotations."""
    return pa.schema([(name, _arrow_type(f.annotation)) for name, f in model.model_fields.items()])


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):  # X | None: nullable X
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return _arrow_type(inner)
    if origin is Literal:
        return pa.string()
    if origin is list:
        return pa.list_(_arrow_type(get_args(annotation)[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([(n, _arrow_type(f.annotation)) for n, f in annotation.model_fields.items()])
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    if annotation in simple:
        return simple[annotation]
    raise TypeError(f"no parquet type for {annotation!r}")


KEPT = "kept"


class StageClock(BaseModel):
    """One stage of a flow run: its monotonic clock at start and end (to line up with an
    endpoint's own log), wall time, tasks, and the model calls and request-cache hits it made."""

    clock: list[float]
    wall_s: float
    tasks: int = 1
    tasks_cached: int = 0
    model_calls: dict[str, int] = {}
    cache_hits: dict[str, int] = {}


class StageCounts(BaseModel):
    """Outcomes of one stage (or of a whole snapshot): category -> level -> outcome -> n,
    where the outcome is `kept` or a rejection reason. Counted once, from the decisions,
    and read by the Prefect artifact, the build summary, MANIFEST.json and the card."""

    strata: dict[str, dict[str, dict[str, int]]] = {}

    @classmethod
    def of(cls, decisions: typing.Iterable[Decision]) -> StageCounts:
        return cls.of_tally(Counter(map(cls.key, decisions)))

    @staticmethod
    def key(d: Decision) -> tuple[str, str, str]:
        """A decision's place in the tally: (category, level, outcome)."""
        return d.candidate.category, stratum_level(d.candidate.level), KEPT if d.kept else d.reason or ""

    def merge(self, other: StageCounts) -> StageCounts:
        return StageCounts.of_tally(self._tally() + other._tally())

    def _tally(self) -> Counter[tuple[str, str, str]]:
        return Counter({(cat, lvl, outcome): n for cat, levels in self.strata.items()
                        for lvl, outcomes in levels.items() for outcome, n in outcomes.items()})

    @classmethod
    def of_tally(cls, tally: Counter[tuple[str, str, str]]) -> StageCounts:
        strata: dict[str, dict[str, dict[str, int]]] = {}
        for (cat, lvl, outcome), n in sorted(tally.items()):
            strata.setdefault(cat, {}).setdefault(lvl, {})[outcome] = n
        return cls(strata=strata)

    def total(self, category: str | None = None, level: str | None = None,
              outcome: str | None = None) -> int:
        """Candidates (or those with `outcome`) in a category, a stratum or overall."""
        return sum(n for cat, levels in self.strata.items() if category in (None, cat)
                   for lvl, outcomes in levels.items() if level in (None, lvl)
                   for out, n in outcomes.items() if outcome in (None, out))

    def kept_by_stratum(self, order: list[str]) -> dict[str, dict[str, int]]:
        """Kept prompts per category x level (non-empty strata), categories in `order`."""
        out = {}
        for cat in order:
            levels = {lvl: n for lvl in STRATUM_LEVELS
                      if (n := self.strata.get(cat, {}).get(lvl, {}).get(KEPT, 0))}
            if levels:
                out[cat] = levels
        return out

    def rejected_by_category(self, order: list[str]) -> dict[str, dict[str, int]]:
        """Rejections per category by reason (every category in `order`, even with none)."""
        out = {}
        for cat in order:
            reasons: Counter[str] = Counter()
            for outcomes in self.strata.get(cat, {}).values():
                reasons.update({r: n for r, n in outcomes.items() if r != KEPT})
            out[cat] = dict(sorted(reasons.items()))
        return out

    def table(self, order: list[str]) -> list[dict[str, Any]]:
        """One row per category x level: candidates, kept, and rejected by reason."""
        reasons = sorted({r for levels in self.strata.values() for outcomes in levels.values()
                          for r in outcomes if r != KEPT})
        return [{"category": cat, "level": lvl, "candidates": sum(outcomes.values()),
                 "kept": outcomes.get(KEPT, 0), **{f"rejected: {r}": outcomes.get(r, 0) for r in reasons}}
                for cat in order for lvl in LEVELS
                if (outcomes := self.strata.get(cat, {}).get(lvl))]


def write_jsonl(path: Path, records: typing.Iterable[BaseModel | dict[str, Any]]) -> None:
    """Write records (models, or their fields as JSON-ready dicts) atomically (temp file
    then rename), one canonical JSON per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fields = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            fh.write(canonical_json(fields) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path, model: type[BaseModel]) -> list[Any]:
    return list(iter_jsonl(path, model))


CHUNK = 1024  # records a stage task holds at a time (generate, jury, evaluate: written as each is done)


def slices(items: typing.Iterable, size: int) -> typing.Iterator[list]:
    """`items` in lists of `size` (the last one shorter), read as they are needed."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def iter_jsonl(path: Path, model: type[BaseModel]) -> typing.Iterator[Any]:
    """The records of a JSON lines file, one line at a time."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield model.model_validate_json(line)


@dataclass(frozen=True)
class Sampled:
    """An item of the validation sample: its decision, its stratum (`stratum_key`) and its
    inclusion probability under the sample's design (health_orsc.build.sample)."""
    decision: Decision
    stratum: str
    probability: float

    @property
    def probability_text(self) -> str:
        """The probability as validation_sample.csv records it (and verify compares it)."""
        return repr(self.probability)
