"""export: the snapshot from the stage files, one category at a time, streamed.

Input: each built category's generate, dedup and jury files (and, with a base, the base
snapshot's row files for the carried categories). Output: outputs/snapshots/<name>/
(snapshot/writer.py lays it out).

Memory does not grow with the benchmark's size beyond an index: a first pass over a
category's lines keeps each row's sort key and place in its file, and, for the rows the
validation sample draws from, the decision without its texts; a second pass reads the
rows back in snapshot order (category, level, id) and streams them into the row files
(snapshot/rowfiles.py), which hash them as they are written.

Example:
    path = export_stage(inputs, "v1", built, generated, deduped, judged, None, [], started_at)
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from sys import intern
from typing import NamedTuple

from pydantic import BaseModel

from health_orsc.build import jury
from health_orsc.build.fingerprint import fingerprint_components, fingerprint_of
from health_orsc.build.sample import juror_thresholds, samples_rejected, stratified_sample
from health_orsc.build.stages import calibration_path, dedup_file
from health_orsc.core.config import SampleConfig
from health_orsc.core.records import (
    STRATUM_LEVELS,
    CalibrationVote,
    Candidate,
    Decision,
    Rubric,
    Sampled,
    SnapshotRow,
    StageCounts,
    iter_jsonl,
    stratum_level,
)
from health_orsc.inputs.load import BuildInputs
from health_orsc.inputs.rubrics import candidate_rubric
from health_orsc.snapshot.compat import SCHEMA_VERSION
from health_orsc.snapshot.handle import Snapshot
from health_orsc.snapshot.store import PROMPTS, REJECTED, SnapshotMeta, snapshots_dir
from health_orsc.snapshot.writer import RubricUse, config_of, jury_of, models_of, streaming_snapshot

RUBRICS_HELD = 4_096  # rendered rubrics kept for reuse (rubric_maker)


@dataclass(frozen=True)
class Lines:
    """A JSON lines file holding rows of the snapshot: Decisions of a stage, or a base
    snapshot's rows (`rows`); those `take` accepts are the snapshot's."""

    path: Path
    take: Callable[[Decision | DecisionHead], bool] = lambda d: True
    rows: bool = False


def _not_kept(d: Decision | DecisionHead) -> bool:
    return not d.kept


def parse(line: bytes, rows: bool) -> Decision:
    """A line as a Decision: a stage's as it is, a snapshot row's converted."""
    return SnapshotRow.model_validate_json(line).to_decision() if rows else Decision.model_validate_json(line)


class _CandidateHead(BaseModel):
    id: str
    category: str
    level: str | None


class _VoteHead(BaseModel):
    juror: str
    label: str
    p_harmful: float | None = None


class DecisionHead(BaseModel):
    """What the first pass reads of a stage file's Decision: its place in snapshot order,
    the tally's and the validation sample's fields (build/sample.py); the rest of the line
    (texts, calls, rationales) is skipped, not made into objects. Stage files are Decisions
    the build wrote, validated whole when the second pass reads them back."""

    candidate: _CandidateHead
    kept: bool
    reason: str | None = None
    votes: list[_VoteHead] = []


def decisions_at(files: list[Lines]) -> Iterator[tuple[int, int, Decision | DecisionHead]]:
    """(file index, offset, decision or its head) of every line the files' `take` accepts."""
    for i, lines in enumerate(files):
        with lines.path.open("rb") as fh:
            while True:
                offset = fh.tell()
                raw = fh.readline()
                if not raw:
                    break
                if not raw.strip():
                    continue
                d = parse(raw, True) if lines.rows else DecisionHead.model_validate_json(raw)
                if lines.take(d):
                    yield i, offset, d


class VoteView(NamedTuple):
    juror: str
    label: str | None
    p_harmful: float | None


class CandidateView(NamedTuple):
    id: str
    category: str
    level: str | None


@dataclass(frozen=True, slots=True)
class SampleView:
    """What the validation sample draws on (build/sample.py reads a Decision's `candidate`
    id, category and level, `kept`, `reason`, `source` and its votes' jurors, labels and
    P(harmful)), and nothing else: about a tenth of a Decision's memory, for every kept
    prompt of a category at once. Sampled items are read back whole."""

    candidate: CandidateView
    kept: bool
    reason: str | None
    votes: tuple[VoteView, ...]

    @property
    def source(self) -> str:
        return "kept" if self.kept else "rejected"

    @classmethod
    def of(cls, d: Decision | DecisionHead) -> SampleView:
        c = d.candidate
        votes = tuple(VoteView(intern(v.juror), v.label and intern(v.label), v.p_harmful) for v in d.votes)
        return cls(CandidateView(c.id, intern(c.category), c.level and intern(c.level)), d.kept,
                   d.reason and intern(d.reason), votes)


def export_stage(inputs: BuildInputs, name: str, built: list[str], generated: list[str], deduped: str,
                 judged: list[str], base: Snapshot | None, carried: list[str], started_at: str) -> Path:
    """Merge the `built` categories' decisions with the rows carried over from `base` (as
    they are), draw the validation sample and write the snapshot."""
    cfg = inputs.config
    components = {c: fingerprint_components(inputs, c) for c in built}
    versions = dict.fromkeys(built, inputs.taxonomy.version)
    calibration = CalibrationVotes(judged, base, carried)
    sources: dict[str, list[Lines]] = {}
    for c, gen, jud in zip(built, generated, judged, strict=True):
        sources[c] = [Lines(Path(gen), _not_kept), Lines(dedup_file(Path(deduped), c), _not_kept),
                      Lines(Path(jud))]
    if base:
        components.update({c: base.manifest.fingerprint_components[c] for c in carried})
        versions.update({c: base.manifest.taxonomy_versions[c] for c in carried})
        for c in carried:
            sources[c] = [Lines(base.path / f"{stem}.jsonl", lambda d, c=c: d.candidate.category == c,
                                rows=True) for stem in (PROMPTS, REJECTED)]
    categories = [c for c in inputs.taxonomy.ids if c in components]
    gathered = Gathered(rubric_maker(inputs), juror_thresholds(cfg), cfg.sample)
    with heap_frozen(), streaming_snapshot(cfg.outputs_dir, name, categories) as snapshot:
        for category in categories:
            for row in gathered.rows(category, sources[category], fresh=category in built):
                snapshot.add(row)
        meta = SnapshotMeta(
            categories=categories, built=built, base=base.ref if base else None, started_at=started_at,
            fingerprints={c: fingerprint_of(components[c]) for c in categories},
            fingerprint_components={c: components[c] for c in categories},
            taxonomy_version=inputs.taxonomy.version, taxonomy_versions={c: versions[c] for c in categories},
            models=models_of(cfg), config=config_of(cfg), jury=jury_of(cfg),
            jury_calibration=jury.calibration_summary(calibration),
            jury_agreement=jury.jury_agreement(gathered.votes), schema_version=SCHEMA_VERSION)
        snapshot.finish(StageCounts.of_tally(gathered.counts), meta, gathered.sample(), calibration,
                        [inputs.taxonomy.entry(c).model_dump() for c in categories], gathered.rubrics)
    return snapshots_dir(cfg.outputs_dir) / name


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The objects alive before it (the flow's modules, Prefect's and the stages' state)
    left out of the garbage collector's passes while it lasts: the export makes hundreds of
    thousands of short-lived objects, and each full pass otherwise walks the whole heap
    again (1.2 s of a 7 s export of 20,000 rows in a bare process, more in a flow's)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(frozen=True)
class CalibrationVotes:
    """The jury check's votes of the snapshot: the built categories' (their jury files'),
    then the carried ones' (the base's), read from their files each time they are iterated
    (the card's summary, then jury_calibration.jsonl), never held: six per seed."""

    judged: list[str]
    base: Snapshot | None
    carried: list[str]

    def __iter__(self) -> Iterator[CalibrationVote]:
        for path in self.judged:
            yield from iter_jsonl(calibration_path(Path(path)), CalibrationVote)
        if self.base:
            yield from self.base.calibration(self.carried)


class Gathered:
    """The rows of the snapshot, category by category, in snapshot order, and what the card
    and MANIFEST.json say of them, gathered as they stream past."""

    def __init__(self, rubric_of: Callable[[Decision], Rubric], thresholds: dict[str, float],
                 sample: SampleConfig):
        self.rubric_of, self.thresholds, self.sample_config = rubric_of, thresholds, sample
        self.counts: Counter = Counter()
        self.votes: list[tuple[str, ...]] = []   # each judged row's jurors' labels (interned)
        self._labels: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.rubrics = RubricUse()
        self._sampled: dict[str, list[Sampled]] = {"kept": [], "rejected": []}

    def sample(self) -> list[Sampled]:
        """The validation sample: kept strata first, then rejected ones, each in category order."""
        return self._sampled["kept"] + self._sampled["rejected"]

    def rows(self, category: str, files: list[Lines], fresh: bool) -> Iterator[SnapshotRow]:
        """`category`'s rows; `fresh`: built now (its kept prompts get their rubrics here)."""
        index, drawable = [], []
        for i, offset, d in decisions_at(files):
            c = d.candidate
            self.counts[StageCounts.key(d)] += 1
            if d.kept or samples_rejected(d, self.sample_config):
                drawable.append(SampleView.of(d))
            index.append((STRATUM_LEVELS.index(stratum_level(c.level)), c.id, i, offset))
        index.sort()
        picked = {s.decision.candidate.id: s
                  for s in stratified_sample(drawable, self.sample_config, [category], self.thresholds)}
        del drawable
        handles = [f.path.open("rb") for f in files]
        try:
            for _, _, i, offset in index:
                handles[i].seek(offset)
                d = parse(handles[i].readline(), files[i].rows)
                if fresh and d.kept:
                    d = d.model_copy(update={"rubric": self.rubric_of(d)})
                if d.kept:
                    self.rubrics.add(category, d.rubric)
                if d.votes:
                    labels = jury.vote_labels(d.votes)
                    self.votes.append(self._labels.setdefault(labels, labels))
                if d.candidate.id in picked:
                    s = picked[d.candidate.id]
                    self._sampled[d.source].append(
                        Sampled(d.model_copy(update={"rubric": None}), s.stratum, s.probability))
                yield SnapshotRow.from_decision(d)
        finally:
            for fh in handles:
                fh.close()


def rubric_maker(inputs: BuildInputs) -> Callable[[Decision], Rubric]:
    """A kept prompt's rubric, rendered from its category's rubric template and its seed
    (inputs/rubrics.py), then the rubric writer's criteria when the jury stage drafted some
    (its `rubric` holds the draft). A template that reads neither `prompt` nor `level`
    renders the same rubric for every prompt of a seed: it is rendered once per seed
    (and level, and prompt, if it reads them) among the last RUBRICS_HELD rendered."""
    seeds = {s.id: s for c in inputs.categories for s in inputs.seeds[c]}
    entries = {c: inputs.taxonomy.entry(c).model_dump() for c in inputs.categories}
    rendered: dict[tuple, Rubric] = {}

    def own(c: Candidate) -> Rubric:
        template = inputs.rubric_templates[c.category]
        if (used := template.variables) is None:
            return candidate_rubric(template, seeds[c.seed_id], entries[c.category], c)
        key = (c.category, c.seed_id, "level" in used and c.level, "prompt" in used and c.prompt)
        if key not in rendered:
            if len(rendered) >= RUBRICS_HELD:
                rendered.clear()
            rendered[key] = candidate_rubric(template, seeds[c.seed_id], entries[c.category], c)
        return rendered[key]

    def rubric(d: Decision) -> Rubric:
        base, draft = own(d.candidate), d.rubric
        if draft is None:
            return base
        return base.model_copy(update={"criteria": base.criteria + draft.criteria, "writer": draft.writer})

    return rubric
