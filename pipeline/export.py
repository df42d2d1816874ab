"""export: an immutable, checksummed snapshot directory.

Input: kept and rejected Decisions, the validation sample, build metadata.
Output: outputs/snapshots/<name>/ with prompts.parquet, prompts.jsonl,
rejected.parquet, rejected.jsonl, validation_sample.csv, data/<category>.jsonl,
jury_calibration.jsonl (each juror's verdict on the seeds' harmful requests)
(one Hugging Face config per category), README.md (dataset card) and
MANIFEST.json (sha256 of every file, counts, config, fingerprints, models).

Written to a temporary directory and renamed into place; an existing name is
refused, never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel

from pipeline import __version__
from pipeline.inputs import BuildInputs
from pipeline.records import CATEGORIES, LEVELS, Candidate, Decision, JurorVote, canonical_json
from pipeline.store import MANIFEST, check_snapshot_name, file_sha256, snapshots_dir

ANNOTATION_COLUMNS = ("annotator_id", "annotator_label", "annotator_notes")

VOTE_TYPE = pa.struct([
    ("juror", pa.string()), ("model", pa.string()), ("judge_prompt", pa.string()),
    ("label", pa.string()), ("rationale", pa.string()), ("calls", pa.list_(pa.string())),
    ("repairs", pa.int32()),
])
ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("category", pa.string()), ("level", pa.string()),
    ("prompt", pa.string()), ("seed_id", pa.string()), ("seed_topic", pa.string()),
    ("seed_source", pa.string()), ("original_question", pa.string()), ("template", pa.string()),
    ("template_sha", pa.string()),
    ("template_text", pa.string()), ("variant", pa.int32()), ("generator", pa.string()),
    ("generator_params", pa.string()), ("generation_call", pa.string()),
    ("votes", pa.list_(VOTE_TYPE)), ("benign_votes", pa.int32()), ("n_jurors", pa.int32()),
    ("reason", pa.string()), ("duplicate_of", pa.string()), ("similarity", pa.float64()),
])


def decision_row(d: Decision) -> dict[str, Any]:
    """One row of prompts.* / rejected.*: the candidate, its votes, and its fate."""
    c = d.candidate
    return {
        "id": c.id, "category": c.category, "level": c.level, "prompt": c.prompt,
        "seed_id": c.seed_id, "seed_topic": c.seed_topic,
        "seed_source": c.seed_source, "original_question": c.original_question,
        "template": c.template, "template_sha": c.template_sha, "template_text": c.template_text,
        "variant": c.variant, "generator": c.generator,
        "generator_params": canonical_json(c.generator_params),
        "generation_call": c.generation_call,
        "votes": [v.model_dump() for v in d.votes], "benign_votes": d.benign_votes,
        "n_jurors": len(d.votes) if d.votes else None,
        "reason": d.reason, "duplicate_of": d.duplicate_of, "similarity": d.similarity,
    }


def decision_from_row(row: dict[str, Any]) -> Decision:
    """The inverse of decision_row: a snapshot row back into a Decision (for carry-over)."""
    fields = Candidate.model_fields
    cand = Candidate(**{k: row[k] for k in fields if k != "generator_params"},
                     generator_params=json.loads(row["generator_params"]))
    return Decision(candidate=cand, kept=row["reason"] is None, reason=row["reason"],
                    duplicate_of=row["duplicate_of"], similarity=row["similarity"],
                    votes=[JurorVote(**v) for v in row["votes"] or []],
                    benign_votes=row["benign_votes"])


def _sort_key(d: Decision) -> tuple:
    c = d.candidate
    return (CATEGORIES.index(c.category), LEVELS.index(c.level), c.id)


def _write_rows(directory: Path, stem: str, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), directory / f"{stem}.parquet")
    _write_jsonl(directory / f"{stem}.jsonl", rows)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _sample_csv(sample: list[Decision]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "category", "level", "prompt", "original_question", "benign_votes",
                     "n_jurors", *ANNOTATION_COLUMNS])
    for d in sample:
        c = d.candidate
        writer.writerow([c.id, c.category, c.level, c.prompt, c.original_question, d.benign_votes,
                         len(d.votes), *([""] * len(ANNOTATION_COLUMNS))])
    return buf.getvalue()


def snapshot_meta(inputs: BuildInputs, categories: list[str], fingerprints: dict[str, str],
                  components: dict[str, dict[str, str]], jury_calibration: dict[str, dict],
                  base: str | None = None, started_at: str = "") -> dict[str, Any]:
    """What MANIFEST.json and the dataset card say about how the snapshot was built.
    `categories` may include categories carried over from `base` unchanged."""
    cfg = inputs.config
    roles = [cfg.generation.role, *cfg.jury.jurors]
    return {
        "categories": categories,
        "base": base,
        "started_at": started_at,
        "fingerprints": fingerprints,
        "fingerprint_components": components,
        "models": {r: {"endpoint": cfg.endpoint_for(r).identity, "model": cfg.roles[r].model,
                       "sampling": cfg.roles[r].sampling(), "prompt": cfg.roles[r].prompt}
                   for r in roles},
        "config": cfg.model_dump(mode="json", exclude={"seeds_dir", "templates_dir", "outputs_dir"}),
        "taxonomy_version": inputs.taxonomy.version,
        "jury": {"jurors": cfg.jury.jurors, "required_benign": cfg.jury.required_benign,
                 "models": sorted({cfg.roles[j].identity(cfg.endpoint_for(j)) for j in cfg.jury.jurors})},
        "license": cfg.snapshot.license,
        "pretty_name": cfg.snapshot.pretty_name,
        "package_version": __version__,
        "rewrites": cfg.generation.rewrites,
        "generator": cfg.roles[cfg.generation.role].identity(cfg.endpoint_for(cfg.generation.role)),
        "dedup_threshold": cfg.dedup.threshold,
        "jury_calibration": jury_calibration,
    }


def stage_summary(generated: list[Decision], deduped: list[Decision],
                  judged: list[Decision]) -> list[dict]:
    """Rows of category x level: generated / usable / after dedup / after jury."""
    rows: dict[tuple[str, str], dict] = {}
    for stage, decisions in (("generated", generated), ("usable", generated),
                             ("after_dedup", deduped), ("after_jury", judged)):
        for d in decisions:
            key = (d.candidate.category, d.candidate.level)
            row = rows.setdefault(key, dict.fromkeys(("generated", "usable", "after_dedup",
                                                      "after_jury"), 0))
            row.update(category=key[0], level=key[1])
            row[stage] += d.kept or stage == "generated"
    return list(rows.values())


def counts_by_stratum(decisions: list[Decision]) -> dict[str, dict[str, int]]:
    counts = Counter((d.candidate.category, d.candidate.level) for d in decisions)
    cats = sorted({c for c, _ in counts}, key=CATEGORIES.index)
    return {c: {lvl: counts[(c, lvl)] for lvl in LEVELS if counts[(c, lvl)]} for c in cats}


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def dataset_card(kept: list[Decision], rejected: list[Decision], meta: dict) -> str:
    cats = sorted({d.candidate.category for d in kept} | set(meta["categories"]), key=CATEGORIES.index)
    header = {
        "license": meta["license"], "language": ["en"],
        "task_categories": ["text-generation", "text-classification"],
        "size_categories": [size_category(len(kept))],
        "pretty_name": meta["pretty_name"],
        "tags": ["safety", "over-refusal", "healthcare", "benchmark", "synthetic"],
        "configs": [{"config_name": "all", "data_files": "prompts.jsonl", "default": True}]
        + [{"config_name": c, "data_files": f"data/{c}.jsonl"} for c in cats],
    }
    counts = counts_by_stratum(kept)
    reasons = Counter(d.reason for d in rejected)
    table = "\n".join(
        f"| {c} | " + " | ".join(str(counts.get(c, {}).get(lvl, 0)) for lvl in LEVELS) + " |"
        for c in cats
    )
    jury = meta["jury"]
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {meta['pretty_name']}

Benign *boundary* prompts in sensitive health categories, in the style of
Health-ORSC-Bench: questions an over-cautious model may refuse but should
answer, each paired with the harmful request it neighbours
(`original_question`). Built by health-orsc {meta['package_version']}.

## How it was built

1. **Seeds**: taxonomy version {meta['taxonomy_version']}; hand-written seed topics per category.
2. **Generate**: a Jinja2 template per intent-ambiguity level (easy: benign intent stated;
   medium: benign intent implicit; hard: wording close to the harmful request), rewritten
   {meta['rewrites']} time(s) per template by `{meta['generator']}`.
3. **Dedup**: all-MiniLM-L6-v2 embeddings, searched across all categories (exactly up to
   {meta['config']['dedup']['exact_max']:,} prompts, with a FAISS IVF index beyond),
   cosine threshold {meta['dedup_threshold']}; the earliest prompt of a group is kept.
4. **Jury**: {len(jury['jurors'])} jurors ({', '.join(jury['models'])}); a prompt is kept
   when at least {jury['required_benign']} of {len(jury['jurors'])} say benign.
5. **Sample**: `validation_sample.csv`, a stratified sample for human validation
   (annotator columns are empty until people fill them).

Rejected candidates are in `rejected.parquet` with their reason
({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items())) or 'none'}).
`MANIFEST.json` lists the sha256 of every file; `orsc verify <dir>` re-checks them.

## How good was the jury?

{_calibration_text(meta["jury_calibration"])}

## Counts (kept prompts)

| category | easy | medium | hard |
|---|---|---|---|
{table}

## Fields

`id`, `category`, `level` (intended intent ambiguity), `prompt` (the benign
boundary question; Health-ORSC-Bench calls it `question`), `original_question`
(the harmful request it neighbours), `seed_id`, `seed_topic`, `template`,
`generator`, `votes` (every juror's label and rationale), `benign_votes`,
`n_jurors`. `orsc provenance <id>` prints the full chain for any row.

## Limitations

- `level` is the template's intended ambiguity, not a measured refusal rate.
- The jurors' verdicts are model judgements; an audit of a benchmark of this kind
  found about a third of its "benign" hard prompts still carried harmful intent.
  Treat every prompt as unvalidated until the validation sample has been annotated.
- With the embedded default model (SmolLM2-135M-Instruct) the rewrites and
  verdicts are for plumbing and demos only; use strong models for a real benchmark.
"""


def _calibration_text(calibration: dict[str, dict]) -> str:
    if not calibration:
        return "The jury was not checked for this snapshot (`jury.calibrate: false`)."
    lines = "\n".join(
        f"| {juror} | {c['labelled_harmful']} of {c['known_harmful']} | {c['harmful_recall']:.0%} |"
        for juror, c in calibration.items())
    return f"""Each juror was also asked about the harmful requests the seeds neighbour
(`original_question`, all known to be harmful). A juror that calls them benign
cannot be relied on to catch harmful intent left in the hard prompts
(`jury_calibration.jsonl` holds every vote). A juror whose prompt compares a
question with its harmful request sees each request paired with itself here,
which is the easiest case.

| juror | labelled harmful | recall on known-harmful requests |
|---|---|---|
{lines}"""


def write_snapshot(outputs_dir: Path, name: str, kept: list[Decision], rejected: list[Decision],
                   sample: list[Decision], calibration: list[BaseModel], meta: dict[str, Any]) -> Path:
    """Write the snapshot atomically and return its directory."""
    root = snapshots_dir(outputs_dir)
    final = root / check_snapshot_name(outputs_dir, name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        kept = sorted(kept, key=_sort_key)
        rejected = sorted(rejected, key=_sort_key)
        kept_rows = [decision_row(d) for d in kept]
        _write_rows(tmp, "prompts", kept_rows)
        _write_rows(tmp, "rejected", [decision_row(d) for d in rejected])
        for cat in meta["categories"]:
            _write_jsonl(tmp / "data" / f"{cat}.jsonl", [r for r in kept_rows if r["category"] == cat])
        if calibration:
            _write_jsonl(tmp / "jury_calibration.jsonl", [v.model_dump() for v in calibration])
        (tmp / "validation_sample.csv").write_text(_sample_csv(sample), encoding="utf-8")
        (tmp / "README.md").write_text(dataset_card(kept, rejected, meta), encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "name": name,
            "started_at": meta["started_at"],
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "package": {"name": "health-orsc", "version": meta["package_version"]},
            "files": files,
            "counts": {
                "kept": counts_by_stratum(kept),
                "rejected": {c: dict(sorted(Counter(d.reason for d in rejected
                                                   if d.candidate.category == c).items()))
                             for c in meta["categories"]},
                "validation_sample": len(sample),
            },
            **{k: meta[k] for k in ("categories", "base", "fingerprints", "fingerprint_components",
                                    "models", "config", "taxonomy_version", "jury",
                                    "jury_calibration")},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                    encoding="utf-8")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
