"""verify: does a snapshot still say what it was built to say?

A snapshot protects itself in two ways:

- **Its files and its MANIFEST agree.** Every file's sha256 and size match MANIFEST.json,
  no entry points outside the snapshot, no file is unlisted; and every figure MANIFEST
  derives from something else is re-derived and compared: the counts from the rows,
  each fingerprint from its components, the config-derived components, models and jury
  from the recorded config, the validation sample from the kept rows and the sample
  settings, the jury check's summary from its votes.
- **Its digest**: the sha256 of the canonical MANIFEST (store.digest_of), which covers
  every file through its checksum. `orsc verify` prints it; `--digest` compares it with
  one published or recorded elsewhere (a derived snapshot records its parent's). An edit
  that keeps the MANIFEST self-consistent still changes the digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from health_orsc.build.fingerprint import config_components, fingerprint_of
from health_orsc.build.jury import calibration_summary, jury_agreement, vote_labels
from health_orsc.build.sample import juror_thresholds, stratified_sample
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.records import (
    CalibrationVote,
    Decision,
    SnapshotRow,
    StageCounts,
    content_id,
    rubric_problems,
)
from health_orsc.evaluation.run import verify_evaluation
from health_orsc.snapshot.compat import (
    publishable,
    recorded_config,
    required_files,
    rubrics_required,
    sample_design_recorded,
)
from health_orsc.snapshot.croissant import parquet_files
from health_orsc.snapshot.handle import Snapshot
from health_orsc.snapshot.store import (
    CALIBRATION,
    CROISSANT,
    LABELS_FILE,
    MANIFEST,
    PROMPTS,
    REJECTED,
    REPORT_FILE,
    RUBRIC_REVIEWS_FILE,
    SAMPLE,
    TAXONOMY,
    Manifest,
    check_files,
    data_file,
    digest_of,
    load_manifest,
    read_jsonl_rows,
    read_sample,
    read_taxonomy,
)
from health_orsc.snapshot.writer import jury_of, models_of
from health_orsc.validation.labels import LabelRow
from health_orsc.validation.rounds import check_rounds, combined_sample, read_rounds
from health_orsc.validation.rubric_review import ReviewRow
from health_orsc.validation.validity import (
    aggregate_of,
    human_harmful,
    stratum_sizes,
    ungated,
    validity_report,
    with_counts,
)


class VerifyReport(BaseModel):
    snapshot: str
    digest: str | None  # None when MANIFEST.json cannot be read
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def require_verified(path: Path, purpose: str, field: str | None = None) -> VerifyReport:
    """The report of a snapshot (or evaluation run) that passes verify: the gate before a
    command or flow uses one. InputError (exit 2) naming the first problem otherwise."""
    report = verify_snapshot(path)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise InputError(path, field, f"fails verification: {report.problems[0]}{more}",
                         f"run `orsc verify` on it; {purpose} a snapshot that passes")
    return report


def open_verified(path: Path, purpose: str, field: str | None = None) -> Snapshot:
    """The snapshot at `path`, once it passes verify (see `require_verified`)."""
    require_verified(path, purpose, field)
    return Snapshot.open(path)


def verify_snapshot(snapshot: Path, digest: str | None = None) -> VerifyReport:
    """Every check above; one line per problem. InputError only when `snapshot` has no
    MANIFEST.json at all (it is not a snapshot)."""
    if not (snapshot / MANIFEST).is_file():
        raise InputError(snapshot, None, f"is not a snapshot (no {MANIFEST})",
                         "pass a directory under outputs/snapshots/")
    raw = _raw_manifest(snapshot)
    if isinstance(raw, dict) and raw.get("kind") == "evaluation":
        return _verify_evaluation(snapshot, raw, digest)
    try:
        manifest = load_manifest(snapshot)
    except InputError as err:
        field = f"field '{err.field}': " if err.field else ""
        return VerifyReport(snapshot=str(snapshot), digest=None,
                            problems=[f"{MANIFEST}: {field}{err.problem}"])
    problems = check_files(snapshot, manifest) + _check_required(manifest)
    if digest is not None and digest.removeprefix("sha256:") != manifest.digest.removeprefix("sha256:"):
        problems.append(f"digest {manifest.digest} differs from the expected {shorten(digest, 80)}")
    if not problems:  # the content checks read files that passed their checksums
        problems += _check_content(snapshot, manifest)
    return VerifyReport(snapshot=str(snapshot), digest=manifest.digest, problems=problems)


def _check_required(m: Manifest) -> list[str]:
    """Files every snapshot of its kind and version holds: one removed together with its
    MANIFEST entry passes the checksums, so it is named here (the content checks never read it)."""
    return [f"{rel}: missing, and not listed in {MANIFEST}"
            for rel in required_files(m) if rel not in m.files]


@dataclass
class RowFile:
    """A row file (prompts.jsonl or rejected.jsonl) read once, a line at a time: its rows
    without what no later check reads (texts beside the prompt, rubrics, the votes'
    rationales and call keys), and what the checks of the published files and rubrics need
    from the rows in full, taken as they pass: per category the sha256 of the rows' JSON
    lines and of their ids, and the rubric problems of kept rows."""

    rows: list[SnapshotRow] = dataclasses.field(default_factory=list)
    lines: dict[str, Any] = dataclasses.field(default_factory=dict)
    ids: dict[str, Any] = dataclasses.field(default_factory=dict)
    unrubricked: set[str] = dataclasses.field(default_factory=set)     # categories whose kept rows lack one
    bad_rubrics: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, path: Path, m: Manifest, kept: bool) -> RowFile:
        out = cls()
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    out.add(SnapshotRow.model_validate(json.loads(line)), m, kept)
        return out

    def add(self, row: SnapshotRow, m: Manifest, kept: bool) -> None:
        if kept:
            self.lines.setdefault(row.category, hashlib.sha256()).update(f"{row.json_line()}\n".encode())
            self.ids.setdefault(row.category, hashlib.sha256()).update(f"{row.id}\n".encode())
            if row.rubric is None and rubrics_required(m, row.category):
                self.unrubricked.add(row.category)
            elif (row.rubric is not None and len(self.bad_rubrics) < 20
                  and (why := rubric_problems(row.rubric.criteria))):
                self.bad_rubrics.append(f"{PROMPTS}.jsonl: the rubric of {row.id}: {'; '.join(why)}")
        votes = [v.model_copy(update={"rationale": "", "calls": []}) for v in row.votes]
        self.rows.append(row.model_copy(update={
            "votes": votes, "rubric": None, "template_text": None, "original_question": None,
            "seed_topic": None, "generation_call": None}))

    def lines_sha256(self, category: str) -> str:
        """What data/<category>.jsonl's sha256 must be."""
        return self.lines.get(category, hashlib.sha256()).hexdigest()

    def ids_sha256(self, category: str) -> str:
        return self.ids.get(category, hashlib.sha256()).hexdigest()


def _check_content(snapshot: Path, m: Manifest) -> list[str]:
    problems: list[str] = []
    try:
        kept_file = RowFile.read(snapshot / f"{PROMPTS}.jsonl", m, kept=True)
        rejected_file = RowFile.read(snapshot / f"{REJECTED}.jsonl", m, kept=False)
    except (OSError, ValueError, ValidationError) as err:
        return [f"rows: unreadable ({shorten(str(err), 200)})"]
    kept, rejected = kept_file.rows, rejected_file.rows
    problems += _check_categories(m)
    if problems:
        return problems
    if any(r.reason is not None for r in kept) or any(r.reason is None for r in rejected):
        problems.append(f"{PROMPTS}.jsonl holds a rejected row, or {REJECTED}.jsonl a kept one")
    stray = sorted({r.category for r in kept + rejected} - set(m.categories))
    if stray:
        problems.append(f"rows of categories {stray} that {MANIFEST} does not list")
    for stem, rows in ((PROMPTS, kept), (REJECTED, rejected)):
        if pq.read_metadata(snapshot / f"{stem}.parquet").num_rows != len(rows):
            problems.append(f"{stem}.parquet and {stem}.jsonl hold different numbers of rows")
    for cat in m.categories:  # the files' checksums passed: MANIFEST's sha256 is the file's
        entry = m.files.get(data_file(cat))
        if entry is None or entry.sha256 != kept_file.lines_sha256(cat):
            problems.append(f"{data_file(cat)}: differs from the {cat} rows of {PROMPTS}.jsonl")
    problems += _check_rubrics(kept_file)
    if publishable(m):
        problems += _check_published_files(snapshot, m, kept_file)
    decisions = [r.to_decision() for r in kept + rejected]
    counts = StageCounts.of(decisions)
    if counts.kept_by_stratum(m.categories) != m.counts.kept:
        problems.append(f"{MANIFEST} counts.kept differ from {PROMPTS}.jsonl")
    if counts.rejected_by_category(m.categories) != m.counts.rejected:
        problems.append(f"{MANIFEST} counts.rejected differ from {REJECTED}.jsonl")
    problems += _check_sample(snapshot, m, decisions)
    problems += _check_config(m)
    problems += _check_taxonomy(snapshot, m)
    problems += _check_imported(m, kept + rejected)
    if m.kind == "validation":
        problems += _check_validation(snapshot, m, kept + rejected)
    calibration_file = snapshot / CALIBRATION
    votes = ([CalibrationVote.model_validate(r) for r in read_jsonl_rows(calibration_file)]
             if calibration_file.is_file() else [])
    agreement = jury_agreement(vote_labels(d.votes) for d in decisions)
    if m.jury_agreement is not None and agreement != m.jury_agreement:
        problems.append(f"{MANIFEST} jury_agreement differs from the rows' votes")
    if calibration_summary(votes) != m.jury_calibration:
        problems.append(f"{MANIFEST} jury_calibration differs from {CALIBRATION}")
    return problems


def _check_published_files(snapshot: Path, m: Manifest, kept: RowFile) -> list[str]:
    """data/<category>.parquet holds the category's kept rows, and croissant.json names
    exactly the parquet files people load, each with its checksum."""
    problems = []
    for cat in m.categories:
        ids = pq.read_table(snapshot / data_file(cat, "parquet"), columns=["id"]).column("id").to_pylist()
        if hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest() != kept.ids_sha256(cat):
            problems.append(f"{data_file(cat, 'parquet')}: differs from the {cat} rows of {PROMPTS}.jsonl")
    try:
        described = {f["contentUrl"]: f.get("sha256") for f in
                     json.loads((snapshot / CROISSANT).read_text(encoding="utf-8"))["distribution"]}
    except (ValueError, KeyError, TypeError) as err:
        return [*problems, f"{CROISSANT}: unreadable ({shorten(str(err), 200)})"]
    expected = set(parquet_files(m.categories).values())
    if set(described) != expected:
        problems.append(f"{CROISSANT} describes {sorted(described)}, not the snapshot's {sorted(expected)}")
    problems += [f"{CROISSANT}: the sha256 of {rel} is not the file's"
                 for rel in sorted(expected & set(described)) if described[rel] != m.files[rel].sha256]
    return problems


def _check_rubrics(kept: RowFile) -> list[str]:
    """Every kept prompt of a category built with rubrics has a usable one (each criterion
    was checked as the rows were read: kind, points, id)."""
    problems = []
    if kept.unrubricked:
        problems.append(f"{PROMPTS}.jsonl: kept rows of {sorted(kept.unrubricked)} have no rubric")
    return (problems + kept.bad_rubrics)[:20]


def _check_categories(m: Manifest) -> list[str]:
    problems = []
    # an imported snapshot was built by no config: it has no fingerprints
    fingerprinted = ("fingerprints", "fingerprint_components") if m.source is None else ()
    for field in (*fingerprinted, "taxonomy_versions"):
        if set(getattr(m, field)) != set(m.categories):
            problems.append(f"{MANIFEST} {field} do not cover exactly its categories")
    if m.source is not None and (m.fingerprints or m.fingerprint_components or m.models or m.jury):
        problems.append(f"{MANIFEST} is of an imported snapshot but records fingerprints, models or a jury")
    if problems:
        return problems
    for cat in m.categories if fingerprinted else ():
        if fingerprint_of(m.fingerprint_components[cat]) != m.fingerprints[cat]:
            problems.append(f"{MANIFEST} fingerprints.{cat} is not the hash of its components")
    if not set(m.built) <= set(m.categories) or (m.base is None and m.built != m.categories):
        problems.append(f"{MANIFEST} built lists categories it does not hold, or misses some"
                        " while naming no base")
    return problems


def _raw_manifest(directory: Path) -> Any:
    """MANIFEST.json as parsed JSON, or None when it is not JSON (load_manifest says why)."""
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _verify_evaluation(run: Path, raw: dict[str, Any], digest: str | None) -> VerifyReport:
    """An evaluation run (outputs/evaluations/RUN): health_orsc.evaluation.run.verify_evaluation."""
    try:
        problems = verify_evaluation(run, raw, digest)
    except (ValidationError, ValueError, KeyError, OSError) as err:
        problems = [f"unreadable: {shorten(str(err), 200)}"]
    return VerifyReport(snapshot=str(run), digest=digest_of(raw), problems=problems)


def _check_sample(snapshot: Path, m: Manifest, decisions: list[Decision]) -> list[str]:
    sample = read_sample(snapshot)
    problems = []
    if len(sample) != m.counts.validation_sample:
        problems.append(f"{MANIFEST} counts.validation_sample differs from {SAMPLE}")
    try:
        cfg = recorded_config(m)
    except ValidationError:
        return problems  # _check_config reports it
    # drawn before `orsc validate --gate` moved any kept prompt to rejected
    expected = stratified_sample(ungated(decisions), cfg.sample, m.categories, juror_thresholds(cfg))
    if [row["id"] for row in sample] != [s.decision.candidate.id for s in expected]:
        problems.append(f"{SAMPLE} is not the sample that {MANIFEST}'s sample settings draw")
    elif sample_design_recorded(m) and (
            [(row.get("stratum"), row.get("inclusion_probability")) for row in sample]
            != [(s.stratum, s.probability_text) for s in expected]):
        problems.append(f"{SAMPLE}: the strata or inclusion probabilities are not the draw's")
    return problems


def _check_taxonomy(snapshot: Path, m: Manifest) -> list[str]:
    """taxonomy.json holds the definitions each category was built under: the same entries
    whose hashes are the fingerprints' `taxonomy` components."""
    if TAXONOMY not in m.files:
        return []  # a schema_version 1 snapshot built before they did (_check_required)
    try:
        entries = read_taxonomy(snapshot)
    except (ValueError, KeyError, TypeError) as err:
        return [f"{TAXONOMY}: unreadable ({shorten(str(err), 200)})"]
    if list(entries) != m.categories:
        return [f"{TAXONOMY} lists {list(entries)}, {MANIFEST} categories {m.categories}"]
    if m.source is not None:
        return []  # imported: no fingerprint components to compare the entries with
    return [f"{TAXONOMY}: the entry of {cat} is not the one it was built under"
            for cat in m.categories
            if content_id(entries[cat]) != m.fingerprint_components[cat].get("taxonomy")]


def _check_validation(snapshot: Path, m: Manifest, rows: list[SnapshotRow]) -> list[str]:
    """The labels name sampled items, and the report is what they give."""
    if m.base is None:
        return [f"{MANIFEST} kind is validation but names no base snapshot"]
    try:
        labels = [LabelRow.model_validate(r) for r in read_jsonl_rows(snapshot / LABELS_FILE)]
        reviews = ([ReviewRow.model_validate(r) for r in read_jsonl_rows(snapshot / RUBRIC_REVIEWS_FILE)]
                   if (snapshot / RUBRIC_REVIEWS_FILE).is_file() else None)
        stored = json.loads((snapshot / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as err:
        return [f"validation files: unreadable ({shorten(str(err), 200)})"]
    rounds = read_rounds(snapshot)
    sample = combined_sample(rounds, stratum_sizes(ungated(rows)))
    stray = sorted({r.prompt_id for r in labels} - {s["id"] for s in sample})
    if stray:
        return [f"{LABELS_FILE} labels items outside the validation sample ({', '.join(stray[:3])})"]
    label_set = with_counts(labels, stored)
    if len(rounds) > 1 or "rounds" in stored:
        try:
            cfg = recorded_config(m)
        except ValidationError:
            return []  # _check_config reports it
        draws = (stored.get("rounds") or {}).get("draws") if isinstance(stored, dict) else None
        problems = check_rounds(ungated(rows), cfg, m.categories, rounds, label_set, draws or [])
        if problems:
            return problems
    gated = {r.id for r in rows if r.reason == "human_harmful"}
    if gated and gated != human_harmful(sample, label_set, aggregate_of(stored)):
        return [f"rows rejected as human_harmful are not the kept prompts {LABELS_FILE} labels harmful"]
    try:
        expected = validity_report(ungated(rows), sample, label_set, stored["precision"]["min_precision"],
                                   stored["confidence"], reviews, weighted="weighted" in stored,
                                   aggregate=aggregate_of(stored),
                                   draws=(stored.get("rounds") or {}).get("draws"))
    except InputError as err:  # a sample whose probabilities cannot be read
        return [str(err)]
    except (KeyError, TypeError) as err:
        return [f"{REPORT_FILE}: malformed ({shorten(str(err), 100)})"]
    if json.loads(json.dumps(expected)) != stored:
        return [f"{REPORT_FILE} is not the report that {LABELS_FILE} gives"]
    return []


def _check_imported(m: Manifest, rows: list[SnapshotRow]) -> list[str]:
    """An imported snapshot's rows each name a line of a listed source file, once, and each
    file's row count is its rows'; a built snapshot's rows name none."""
    origins = [r.imported_from for r in rows if r.imported_from is not None]
    if m.source is None:
        return [f"rows say they were imported (`imported_from`), but {MANIFEST} names no source"
                ] if origins else []
    if len(origins) != len(rows):
        return [f"{len(rows) - len(origins)} rows of an imported snapshot do not say where they came from"]
    listed = {f.name: f.rows for f in m.source.files}
    counted = Counter(o.file for o in origins)
    problems = [f"{MANIFEST} source.files: {name} lists {n} rows, the snapshot holds {counted.get(name, 0)}"
                for name, n in listed.items() if counted.get(name, 0) != n]
    problems += [f"rows come from {name}, which {MANIFEST} source.files does not list"
                 for name in sorted(set(counted) - set(listed))]
    twice = [k for k, n in Counter((o.file, o.line) for o in origins).items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} source lines are imported more than once"
                        f" (e.g. {twice[0][0]}:{twice[0][1]})")
    return problems


def _check_config(m: Manifest) -> list[str]:
    if m.source is not None:  # imported: the config only chose the validation sample
        try:
            recorded_config(m)
        except ValidationError as err:
            return [f"{MANIFEST} config is not a valid config ({shorten(str(err), 200)})"]
        return []
    try:
        cfg = recorded_config(m)
        derived = config_components(cfg)
        models, jury = models_of(cfg), jury_of(cfg)
    except (ValidationError, KeyError) as err:
        return [f"{MANIFEST} config is not a valid build config ({shorten(str(err), 200)})"]
    problems = []
    for cat in m.built:
        changed = sorted(k for k, v in derived.items() if m.fingerprint_components[cat].get(k) != v)
        if changed:
            problems.append(f"{MANIFEST} fingerprint_components.{cat} ({', '.join(changed)})"
                            " differ from its config")
    if models != m.models:
        problems.append(f"{MANIFEST} models differ from its config")
    if jury != m.jury:
        problems.append(f"{MANIFEST} jury differs from its config")
    return problems
