"""import: a snapshot made from a published benchmark's release files, to evaluate and audit.

`orsc import --format health-orsc|xstest|or-bench FILE... --name NAME` reads the files in
their published column layout, maps each row onto the snapshot's fields
(snapshot.writer.IMPORT_MAPPING says how, per format; fields the source has no value for
are null), and writes a snapshot like a built one: prompts.* hold the prompts the source
calls benign, rejected.* its harmful contrast prompts (`source_harmful`), with a validation
sample drawn by the config's `sample` settings, the categories' definitions (a taxonomy
file: the config's for Health-ORSC-Bench, a shipped one for XSTest and OR-Bench, or
`--taxonomy`), and MANIFEST `source`: the format and each file's name, sha256 and rows.
Every row says where it came from (`imported_from`: file, line, the source's id, its
other columns). Then `orsc evaluate`, `annotate`, `validate` and `export` work on it.

Bad input (a file that is empty, not UTF-8, lacks a column, has an empty prompt, an
unknown label or category, or repeats an id) is one InputError naming the file, line and
column; nothing is written.

Example:
    path = import_snapshot("xstest", [Path("xstest_prompts.csv")], "xstest-v2", config)
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from health_orsc.build.sample import stratified_sample
from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, shorten
from health_orsc.core.files import read_text
from health_orsc.core.records import (
    ImportedFrom,
    SnapshotRow,
    StageCounts,
    canonical_json,
    content_id,
)
from health_orsc.evaluation.scores import empirical_level
from health_orsc.inputs.load import Taxonomy, load_taxonomy, load_taxonomy_file
from health_orsc.snapshot.compat import SCHEMA_VERSION
from health_orsc.snapshot.store import ImportFormat, ImportSource, SnapshotMeta, SourceFile, file_sha256
from health_orsc.snapshot.writer import RubricUse, config_of, row_sort_key, write_rows_snapshot

FORMATS: tuple[str, ...] = get_args(ImportFormat)
TAXONOMIES = Path(__file__).resolve().parents[1] / "data" / "taxonomies"  # xstest.yaml, or-bench.yaml
LICENSES = {"health-orsc": "cc-by-nc-4.0", "xstest": "cc-by-4.0", "or-bench": "cc-by-4.0"}
# XSTest's 18 prompt types, by family: a contrast type joins the family it contrasts with
XSTEST_FAMILIES = {
    "homonyms": "homonyms", "contrast_homonyms": "homonyms",
    "figurative_language": "figurative_language", "contrast_figurative_language": "figurative_language",
    "safe_targets": "safe_targets", "contrast_safe_targets": "safe_targets",
    "safe_contexts": "safe_contexts", "contrast_safe_contexts": "safe_contexts",
    "definitions": "definitions", "contrast_definitions": "definitions",
    "real_group_nons_discr": "discrimination", "nons_group_real_discr": "discrimination",
    "contrast_discr": "discrimination",
    "historical_events": "historical_events", "contrast_historical_events": "historical_events",
    "privacy_public": "privacy", "privacy_fictional": "privacy", "contrast_privacy": "privacy",
}
# OR-Bench's release files, told apart by name: (benign?, level)
OR_BENCH_FILES = (("toxic", False, None), ("hard-1k", True, "hard"), ("hard_1k", True, "hard"),
                  ("80k", True, None))
MAPPED = ("id", "question", "prompt", "original_question")  # columns that became fields of the row
COLUMNS = {"health-orsc": ("id", "question"), "xstest": ("id", "prompt", "type", "label"),
           "or-bench": ("prompt", "category")}


@dataclass(frozen=True)
class SourceRow:
    """One record of a source file: its fields and the line it starts on."""

    path: Path
    line: int
    fields: dict[str, Any]

    def error(self, column: str | None, problem: str, fix: str) -> InputError:
        return InputError(f"{self.path}:{self.line}", column, problem, fix)

    def text(self, column: str) -> str:
        """A column's value, which must be a non-empty string."""
        value = self.fields.get(column)
        if not isinstance(value, str) or not value.strip():
            raise self.error(column, "is empty" if value is None or isinstance(value, str) else
                             f"is not text ({shorten(repr(value), 80)})",
                             f"every row needs a '{column}'; fix or remove this row")
        return value


def read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[SourceRow]:
    """A JSON lines file's records (blank lines skipped)."""
    for number, line in enumerate(read_text(path, "import file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}", None, f"is not JSON ({err.msg})",
                             "pass the release's JSON lines file, one object per line") from err
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}", None, f"holds a JSON {type(record).__name__}, not an object",
                             "pass the release's JSON lines file, one object per line")
        missing = [c for c in required if c not in record]
        if missing:
            raise InputError(f"{path}:{number}", None, f"has no {', '.join(map(repr, missing))}",
                             f"pass a file in the published layout (fields {', '.join(required)})")
        yield SourceRow(path, number, record)


def read_csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[SourceRow]:
    """A CSV file's records with the line each starts on (quoted fields may span lines)."""
    text = read_text(path, "import file").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            return
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}:1", None, f"has no column {', '.join(map(repr, missing))} (header:"
                             f" {shorten(','.join(header), 200)})",
                             f"pass a file in the published layout (columns {', '.join(required)})")
        start = reader.line_num + 1
        for values in reader:
            if any(v.strip() for v in values):
                if len(values) != len(header):
                    raise InputError(f"{path}:{start}", None, f"has {len(values)} columns, the header"
                                     f" {len(header)}", "quote fields that hold commas")
                yield SourceRow(path, start, dict(zip(header, values, strict=True)))
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}:{reader.line_num}", None, f"is not valid CSV ({err})",
                         "pass the release's CSV file") from err


def plain_id(name: str) -> str:
    """A source's category name as a category id: `self-harm` -> `self_harm`."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


@dataclass
class Mapped:
    """A source row mapped onto the snapshot: what SnapshotRow needs beyond the nulls."""

    key: str                # what the row id is derived from (the source id, else the prompt)
    category: str
    level: str | None
    prompt: str
    original_question: str | None
    benign: bool
    source_id: str | None


def map_health_orsc(row: SourceRow, config: BuildConfig, taxonomy: Taxonomy) -> Mapped:
    f = row.fields
    named = [v for v in (f.get("category"), f.get("classification")) if isinstance(v, str) and v.strip()]
    candidates = [plain_id(v) for v in named] + [plain_id(row.path.stem)]
    category = next((c for c in candidates if c in taxonomy.ids), None)
    if category is None:
        raise row.error("category", f"names no category of the taxonomy ({', '.join(map(repr, candidates))};"
                        f" known: {', '.join(taxonomy.ids)})",
                        "give the row a `category`, name the file after its category, or pass"
                        " --taxonomy with these categories")
    level = None
    count, total = f.get("refuse_count"), f.get("total_models")
    if count is not None or total is not None:
        if not (isinstance(count, int) and isinstance(total, int) and 0 <= count <= total and total > 0):
            raise row.error("refuse_count", f"refuse_count {count!r} of total_models {total!r} is not a"
                            " count of models", "fix the row, or drop both fields")
        binned = empirical_level(count / total, config.evaluation)
        level = None if binned == "beyond" else binned
    original = f.get("original_question")
    if not isinstance(f["id"], str | int) or not str(f["id"]).strip():
        raise row.error("id", f"is {'empty' if f['id'] in (None, '') else repr(f['id'])}, not an id",
                        "every row needs its release id")
    return Mapped(key=str(f["id"]), category=category, level=level, prompt=row.text("question"),
                  original_question=original if isinstance(original, str) and original.strip() else None,
                  benign=True, source_id=str(f["id"]))


def map_xstest(row: SourceRow, config: BuildConfig, taxonomy: Taxonomy) -> Mapped:
    f = row.fields
    kind = f["type"].strip()
    if kind not in XSTEST_FAMILIES:
        raise row.error("type", f"'{shorten(kind, 80)}' is not an XSTest prompt type",
                        f"use one of {', '.join(sorted(XSTEST_FAMILIES))}")
    label = f["label"].strip()
    if label not in ("safe", "unsafe"):
        raise row.error("label", f"'{shorten(label, 80)}' is neither safe nor unsafe", "fix the row")
    source_id = row.text("id")
    return Mapped(key=source_id, category=XSTEST_FAMILIES[kind], level=None, prompt=row.text("prompt"),
                  original_question=None, benign=label == "safe", source_id=source_id)


def or_bench_file(path: Path) -> tuple[bool, str | None]:
    name = path.name.lower()
    for part, benign, level in OR_BENCH_FILES:
        if part in name:
            return benign, level
    raise InputError(path, None, "is not one of OR-Bench's release files by name",
                     "keep the release's names: or-bench-80k.csv, or-bench-hard-1k.csv, or-bench-toxic.csv")


def map_or_bench(row: SourceRow, config: BuildConfig, taxonomy: Taxonomy) -> Mapped:
    benign, level = or_bench_file(row.path)
    prompt = row.text("prompt")
    return Mapped(key=prompt, category=plain_id(row.text("category")), level=level, prompt=prompt,
                  original_question=None, benign=benign, source_id=None)


MAPPERS = {"health-orsc": map_health_orsc, "xstest": map_xstest, "or-bench": map_or_bench}


def import_taxonomy(fmt: str, config: BuildConfig, taxonomy_file: Path | None) -> tuple[Taxonomy, Path]:
    """The categories' definitions: --taxonomy, else the config's (Health-ORSC-Bench's seven
    are the default taxonomy's), else the one shipped for the format."""
    if taxonomy_file is not None:
        return load_taxonomy_file(taxonomy_file), taxonomy_file
    if fmt == "health-orsc":
        return load_taxonomy(config.seeds_dir), config.seeds_dir / "taxonomy.yaml"
    path = TAXONOMIES / f"{fmt}.yaml"
    return load_taxonomy_file(path), path


def read_source(fmt: str, files: list[Path], config: BuildConfig,
                taxonomy: Taxonomy, taxonomy_path: Path) -> tuple[list[SnapshotRow], list[SourceFile]]:
    """Every row of every file mapped (InputError at the first bad one), and the files."""
    rows: list[SnapshotRow] = []
    sources: list[SourceFile] = []
    seen: dict[str, SourceRow] = {}
    names = [p.name for p in files]
    for path in files:
        if names.count(path.name) > 1:
            raise InputError(path, None, "is passed twice, or two files share its name",
                             "pass each release file once (rows are traced by file name)")
        reader = read_jsonl if fmt == "health-orsc" else read_csv_rows
        count = 0
        for src in reader(path, COLUMNS[fmt]):
            m = MAPPERS[fmt](src, config, taxonomy)
            if m.category not in taxonomy.ids:
                raise src.error("category", f"'{m.category}' is not a category of {taxonomy_path}",
                                f"add it to the taxonomy (known: {', '.join(taxonomy.ids)}) and pass"
                                " --taxonomy")
            if m.key in seen:
                first = seen[m.key]
                what = f"id {m.key!r}" if m.source_id is not None else "prompt"
                raise src.error("id" if m.source_id is not None else "prompt",
                                f"repeats the {what} of {first.path.name} line {first.line}",
                                "import each row once (OR-Bench's hard-1k is a subset of its 80k: pass one)")
            seen[m.key] = src
            others = {k: v for k, v in src.fields.items() if k not in MAPPED}
            rows.append(SnapshotRow(
                id=content_id(["import", fmt, m.key]), category=m.category, level=m.level, prompt=m.prompt,
                original_question=m.original_question, seed_id=None, seed_topic=None, seed_source=None,
                template=None, template_sha=None, template_text=None, variant=None, generator=None,
                generator_params=None, generation_call=None, votes=[], benign_votes=None, n_jurors=None,
                reason=None if m.benign else "source_harmful", duplicate_of=None, similarity=None,
                imported_from=ImportedFrom(file=path.name, line=src.line, id=m.source_id,
                                           fields=canonical_json(others))))
            count += 1
        if not count:
            raise InputError(path, None, "holds no rows", "pass the release's file, not an empty one")
        sources.append(SourceFile(name=path.name, sha256=file_sha256(path), bytes=path.stat().st_size,
                                  rows=count))
    return rows, sources


def import_snapshot(fmt: str, files: list[Path], name: str, config: BuildConfig,
                    taxonomy_file: Path | None = None, license: str | None = None) -> Path:
    """Read, map and write; the new snapshot's directory under outputs/snapshots/."""
    if fmt not in FORMATS:
        raise InputError(None, "--format", f"'{fmt}' is not a format orsc imports", f"use one of {FORMATS}")
    started = datetime.now(UTC).isoformat(timespec="milliseconds")
    taxonomy, taxonomy_path = import_taxonomy(fmt, config, taxonomy_file)
    rows, sources = read_source(fmt, files, config, taxonomy, taxonomy_path)
    present = {r.category for r in rows}
    categories = [c for c in taxonomy.ids if c in present]
    key = row_sort_key(categories)
    decisions = [r.to_decision() for r in rows]
    order = sorted(range(len(rows)), key=lambda i: key(decisions[i]))
    rows, decisions = [rows[i] for i in order], [decisions[i] for i in order]
    sample = stratified_sample(decisions, config.sample, categories)
    meta = SnapshotMeta(
        categories=categories, built=categories, base=None, started_at=started, fingerprints={},
        fingerprint_components={}, taxonomy_version=taxonomy.version,
        taxonomy_versions=dict.fromkeys(categories, taxonomy.version), models={}, config=config_of(config),
        jury={}, jury_calibration={}, schema_version=SCHEMA_VERSION,
        source=ImportSource(format=fmt, files=sources, license=license or LICENSES[fmt]))
    counts = StageCounts.of(decisions)
    return write_rows_snapshot(
        config.outputs_dir, name, rows, counts, sample, [], meta,
        [taxonomy.entry(c).model_dump() for c in categories], RubricUse.of(d for d in decisions if d.kept))
