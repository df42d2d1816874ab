"""The build, stage by stage, as plain functions: what each task of the `build-benchmark`
flow calls (health_orsc/flows/build.py only wires these into Prefect).

One candidate's path, top to bottom:

    generate_stage  seed topic x level -> template prompt and its  stages/generate/<cat>-<fp>.jsonl
                    rewrites
    embed_stage     as each category's generate task ends: its     the embedding cache
                    prompts into the embedding cache
    dedup_stage     every category's usable prompts, after the     stages/dedup/<key>/<cat>.jsonl
                    kept prompts of carried-over categories;
                    off-topic rewrites, then near-duplicates
    jury_stage      each deduplicated prompt -> jurors -> k-of-n   stages/jury/<cat>-<key>.jsonl
                    and the jury check on the seeds' harmful        (+ .calibration.jsonl)
                    requests
    export_stage    kept (each with its rubric) + rejected, rows carried over from a
    (build/export)  base, the validation sample -> outputs/snapshots/<name>/

Each stage writes its records to a content-addressed file and returns a StageOutput:
the file and the stage's counts, counted once here and read by the Prefect artifact,
the build summary and (for export) MANIFEST.json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from health_orsc.build import generate, jury
from health_orsc.build.alongside import Submit, embedded_alongside
from health_orsc.build.dedup import SLICE, Embedder, PoolTexts, dedup_files, usable
from health_orsc.cache.embeddings import EmbeddingCache
from health_orsc.core.config import BuildConfig
from health_orsc.core.records import (
    CHUNK,
    CalibrationVote,
    Decision,
    StageClock,
    StageCounts,
    content_id,
    iter_jsonl,
    slices,
    write_jsonl,
)
from health_orsc.inputs.load import BuildInputs
from health_orsc.llm import Gateway, Usage
from health_orsc.runtime.progress import TaskProgress
from health_orsc.snapshot.handle import Snapshot
from health_orsc.snapshot.store import stage_path


@dataclass(frozen=True)
class StageOutput:
    path: str
    counts: StageCounts


def generate_stage(inputs: BuildInputs, category: str, fingerprint: str, gateway: Gateway,
                   usage: Usage, embed: Submit | None = None) -> StageOutput:
    """The category's candidates, CHUNK or so at a time (by seed topic), written as each
    chunk is answered: memory holds a chunk, not the category. With `embed` (see
    build/alongside.py), each chunk's usable prompts are embedded while the next chunk's
    calls are made, and its calls are counted into `usage`."""
    usage.expect(generate.planned_calls(inputs, category))
    seeds, step = inputs.seeds[category], generate.seeds_per_chunk(inputs, CHUNK)
    parts = (generate.generate_category(inputs, category, gateway, seeds[start:start + step])
             for start in range(0, len(seeds), step))
    chunks: Iterable[list[Decision]] = (gateway.run(part, usage) for part in parts)
    if embed is not None:
        chunks = embedded_alongside(chunks, embed, usage)
    return write_decisions(stage_path(inputs.config.outputs_dir, "generate", f"{category}-{fingerprint}"),
                           chunks)


def write_decisions(out: Path, chunks: Iterable[list[Decision]]) -> StageOutput:
    """Write a stage's decisions to `out` as each chunk of them comes; the file and its counts."""
    tally: Counter = Counter()

    def each() -> Iterator[Decision]:
        for chunk in chunks:
            tally.update(map(StageCounts.key, chunk))
            yield from chunk

    write_jsonl(out, each())
    return StageOutput(str(out), StageCounts.of_tally(tally))


def embed_stage(config: BuildConfig, generated: str, gateway: Gateway | None,
                progress: TaskProgress | None = None) -> Usage:
    """Embed one category's usable prompts into the embedding cache as soon as they are
    generated, so the dedup stage finds them there. Only a head start: dedup embeds
    whatever is missing itself. Returns the embedder role's calls."""
    cache = EmbeddingCache.open(config)
    try:
        embedder = Embedder.for_config(config, cache, progress, gateway)
        for texts in slices(PoolTexts().rows(usable(Path(generated))), SLICE):
            embedder.encode(texts)
    finally:
        cache.close()
    return embedder.usage


def dedup_stage(config: BuildConfig, categories: list[str], generated: list[str], key: str,
                base: Snapshot | None, carried: list[str], progress: TaskProgress | None = None,
                gateway: Gateway | None = None) -> StageOutput:
    """Across all categories being built (`generated`: their files, in `categories`'
    order); the kept prompts of carried-over categories are fixed keepers. Writes a
    directory with one file per category, so each jury task reads only its own.
    `progress` counts the texts embedded; `gateway` serves an embedder role."""
    keepers = base.keepers(carried) if base else []
    out = dedup_dir(config.outputs_dir, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache.open(config)
    try:
        embedder = Embedder.for_config(config, cache, progress, gateway)
        files = [(Path(p), dedup_file(out, c)) for c, p in zip(categories, generated, strict=True)]
        counts = dedup_files(files, config.dedup, embedder, keepers, config.generation.min_similarity,
                             out.with_name(out.name + ".vectors.tmp"))
    finally:
        cache.close()
    return StageOutput(str(out), counts)


def dedup_dir(outputs_dir: Path, key: str) -> Path:
    return stage_path(outputs_dir, "dedup", key).with_suffix("")


def dedup_file(dedup_output: Path, category: str) -> Path:
    return dedup_output / f"{category}.jsonl"


def dedup_key(generated: list[str], dedup_fingerprint: str, carried_fingerprints: list[str]) -> str:
    """The dedup stage's inputs: every generated file, its settings and code, and what it
    dedups against (the carried-over categories)."""
    return content_id([Path(p).stem for p in generated] + [dedup_fingerprint] + carried_fingerprints)


def jury_stage(inputs: BuildInputs, category: str, deduped: str, fingerprint: str, gateway: Gateway,
               usage: Usage) -> StageOutput:
    """Writes the category's decisions, judged CHUNK candidates at a time (and the kept ones'
    rubrics drafted) and written as each chunk is done, and, beside them, the jury check's
    votes."""
    source = dedup_file(Path(deduped), category)
    usage.expect(jury.planned_calls(inputs, category, kept_lines(source)))
    seeds = inputs.seeds[category] if inputs.config.jury.calibrate else []
    others = jury.check_pairs(seeds)

    def checked() -> Iterator[CalibrationVote]:  # the jury check, CHUNK // 2 seeds at a time
        for part in slices(seeds, CHUNK // 2):
            scores = classify(inputs, jury.check_texts(part), gateway)
            check = jury.calibrate_jurors(inputs, category, part, others, gateway, scores)
            yield from gateway.run(check, usage)

    def judged_chunks() -> Iterator[list[Decision]]:
        for candidates in slices((d.candidate for d in iter_jsonl(source, Decision) if d.kept), CHUNK):
            scores = classify(inputs, [c.prompt for c in candidates], gateway)
            judged = gateway.run(jury.judge_category(inputs, category, candidates, gateway, scores), usage)
            if inputs.rubric_writer_template is not None:  # prompt-specific criteria for the kept ones
                kept = [d.candidate for d in judged if d.kept]
                usage.expect(len(kept))
                written = gateway.run(jury.write_rubrics(inputs, category, kept, gateway), usage)
                drafts = dict(zip((c.id for c in kept), written, strict=True))
                judged = [d.model_copy(update={"rubric": drafts[d.candidate.id]}) if d.kept else d
                          for d in judged]
            yield judged

    out = stage_path(inputs.config.outputs_dir, "jury",
                     f"{category}-{content_id([Path(deduped).stem, fingerprint])}")
    write_jsonl(calibration_path(out), checked())
    return write_decisions(out, judged_chunks())


def kept_lines(path: Path) -> int:
    """How many of a stage file's decisions are kept (each line parsed as plain JSON)."""
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip() and json.loads(line)["kept"])


def embed(config: BuildConfig, texts: list[str], gateway: Gateway | None = None) -> tuple[Any, str]:
    """`texts`' vectors by the config's embedder through the embedding cache (an embedding
    endpoint through `gateway`, or a gateway of its own), and the embedder's identity."""
    own = Gateway(config) if gateway is None and config.dedup.embedder is not None else None
    cache = EmbeddingCache.open(config)
    try:
        embedder = Embedder.for_config(config, cache, gateway=gateway or own)
        return embedder.encode(texts), embedder.identity
    finally:
        cache.close()
        if own is not None:
            own.close()


def classify(inputs: BuildInputs, texts: list[str], gateway: Gateway | None = None) -> jury.Scores:
    """The classifier jurors' scores of `texts`, embedded by `embed` (the dedup stage
    embedded the candidates' prompts already)."""
    if not inputs.classifiers:
        return {}
    return jury.classifier_scores(inputs, texts, lambda unique: embed(inputs.config, unique, gateway)[0])


def calibration_path(jury_output: Path) -> Path:
    return jury_output.with_name(jury_output.stem + ".calibration.jsonl")


class SummaryRow(BaseModel):
    """One category x level of a build: candidates generated, usable after the rewrite
    checks, rewrites caught off topic, left after dedup and after the jury."""

    category: str
    level: str
    generated: int
    usable: int
    off_topic: int
    after_dedup: int
    after_jury: int


class BuildResult(BaseModel):
    """What `build-benchmark` returns (and `orsc build --json` prints)."""

    snapshot: str
    digest: str
    plan: dict[str, str]                   # category -> rebuilt / carried over / dropped, and why
    summary: list[SummaryRow]              # the built categories
    jury_calibration: dict[str, dict[str, Any]]  # juror -> the jury check (MANIFEST.json's)
    model_calls: dict[str, int]            # role -> calls made
    cache_hits: dict[str, int]             # role -> calls served by the request cache
    calls_by_category: dict[str, int]
    stages: dict[str, StageClock]
    stage_tasks: int
    stage_tasks_cached: int                # of those, from Prefect's cache
    task_runner: str


def summary_rows(generated: StageCounts, deduped: StageCounts, judged: StageCounts,
                 order: list[str]) -> list[SummaryRow]:
    """Per category x level of the built categories: generated / usable / off-topic rewrites
    caught / after dedup / after jury."""
    return [SummaryRow(category=row["category"], level=row["level"], generated=row["candidates"],
                       usable=row["kept"],
                       off_topic=deduped.total(row["category"], row["level"], "off_topic_rewrite"),
                       after_dedup=deduped.total(row["category"], row["level"], "kept"),
                       after_jury=judged.total(row["category"], row["level"], "kept"))
            for row in generated.table(order)]
