"""croissant.json: a snapshot's Croissant metadata (MLCommons), written with mlcroissant.

It describes the parquet files people load (prompts.parquet, the `all` record set, and
data/<category>.parquet, one record set per category: the card's configs), each with its
sha256, plus the Responsible-AI fields dataset tracks ask for (how the data was collected,
sensitive content, biases, intended uses, limitations). Written by the snapshot writers
after the row files (schema_version 4 on); `orsc verify` checks that it names exactly
those files, with their checksums.

Example:
    write_croissant(tmp, meta)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from health_orsc.snapshot.store import CROISSANT, PROMPTS, SnapshotMeta, data_file, file_sha256

COLUMNS = ("id", "category", "level", "prompt", "original_question")  # the record sets' fields
CONTENT_WARNING = ("Prompts touch on self-harm, drugs, violence and other sensitive topics; each is"
                   " paired with (or, as a contrast prompt, is) a harmful request. For safety research"
                   " and evaluation only.")


def parquet_files(categories: list[str]) -> dict[str, str]:
    """Record set -> the parquet file it reads: `all` and one per category."""
    return {"all": f"{PROMPTS}.parquet", **{c: data_file(c, "parquet") for c in categories}}


def _rai(meta: SnapshotMeta, validated: bool) -> dict[str, str]:
    if meta.source is not None:
        collected = (f"Imported unchanged from the published {meta.source.format} release files"
                     f" ({', '.join(f.name for f in meta.source.files)}) with health-orsc; each row"
                     " names its source file and line (imported_from).")
        biases = f"Those of the {meta.source.format} release: its authors chose and labelled the prompts."
    else:
        generator = meta.models.get(meta.config["generation"]["role"], {}).get("model", "an LLM")
        collected = (f"Synthetic: hand-written seed topics per category, rendered by Jinja2 templates at"
                     f" three levels of intent ambiguity and rewritten by {generator}; near-duplicates"
                     " removed;"
                     f" kept when at least {meta.jury.get('required_benign')} of"
                     f" {len(meta.jury.get('jurors', []))} LLM jurors judged the prompt benign.")
        biases = ("English only; the seed topics' authors and the generator's and jurors' models shape"
                  " what is asked and what is kept.")
    annotation = ("People labelled a stratified sample, blind to the jury's votes; validation/report.json"
                  " holds the benign precision per stratum with intervals and their agreement."
                  if validated else "Not validated by people yet: treat every prompt as unvalidated.")
    return {
        "data_collection": collected,
        "data_annotation_protocol": annotation,
        "personal_sensitive_information": ("No personal data. " + CONTENT_WARNING),
        "data_biases": biases,
        "data_use_cases": ("Measuring whether language models refuse benign boundary prompts (over-refusal)"
                           " and answer them safely (safe completion). Not for training models to"
                           " comply with harmful requests."),
        "data_limitations": ("A prompt's level is its intended intent ambiguity, not a measured refusal rate;"
                             " model judgements decided what was kept, and an audit of a benchmark of this"
                             " kind found about a third of its benign hard prompts harmful."),
    }


def _mlcroissant():
    """mlcroissant (~0.7 s to import: only when a snapshot is written), with absl's logging
    handler pointed at the process's own stderr. absl's handler keeps the sys.stderr of the
    moment absl is imported (a build's console tee, a test's capture), and closes it when
    logging's handlers are closed (logging.config.dictConfig, which Prefect calls, closes
    them all): that stream would be closed under whoever still writes to it."""
    import mlcroissant
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)
    return mlcroissant


def title(meta: SnapshotMeta) -> str:
    return f"{meta.source.format} (imported)" if meta.source else meta.config["snapshot"]["pretty_name"]


def license_of(meta: SnapshotMeta) -> str:
    return meta.source.license if meta.source else meta.config["snapshot"]["license"]


def croissant(directory: Path, meta: SnapshotMeta, validated: bool,
              sha256: Callable[[str], str] | None = None) -> dict[str, Any]:
    """The JSON-LD of the snapshot being written in `directory` (its parquet files exist).
    Like every file of a snapshot it depends on the inputs only: neither the snapshot's
    name nor a date is in it (MANIFEST.json holds both), so rebuilding the same inputs under
    another name writes the same bytes."""
    mlc = _mlcroissant()

    files = parquet_files(meta.categories)
    distribution = [mlc.FileObject(id=f"{rs}-parquet", name=path, content_url=path,
                                   encoding_formats=["application/x-parquet"],
                                   sha256=sha256(path) if sha256 else file_sha256(directory / path))
                    for rs, path in files.items()]
    record_sets = [mlc.RecordSet(id=rs, name=rs, fields=[
        mlc.Field(id=f"{rs}/{col}", name=col, data_types=mlc.DataType.TEXT,
                  source=mlc.Source(file_object=f"{rs}-parquet", extract=mlc.Extract(column=col)))
        for col in COLUMNS]) for rs in files]
    metadata = mlc.Metadata(
        name=slug(title(meta)), description=f"{title(meta)}: benign boundary prompts for measuring"
        f" over-refusal and safe completion, a snapshot made with health-orsc. {CONTENT_WARNING}",
        license=license_of(meta), version="1.0.0", cite_as=citation(meta),
        keywords=["safety", "over-refusal", "healthcare", "benchmark"],
        distribution=distribution, record_sets=record_sets, **_rai(meta, validated))
    return metadata.to_json()


def write_croissant(directory: Path, meta: SnapshotMeta, validated: bool = False,
                    sha256: Callable[[str], str] | None = None) -> None:
    """`sha256`: a file's checksum by its path in the snapshot, when the writer took it
    already (otherwise the file is read)."""
    data = croissant(directory, meta, validated, sha256)
    (directory / CROISSANT).write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                                       encoding="utf-8")


# BibTeX of the benchmarks a snapshot follows or was imported from
SOURCES_BIBTEX = {
    "health-orsc": """@misc{zhang2026healthorscbench,
  title = {Health-ORSC-Bench: A Benchmark for Measuring Over-Refusal and Safety Completion in Health Context},
  author = {Zhang, Zhihao and Huang, Liting and Wu, Guanghao and Nakov, Preslav and Ji, Heng and
            Naseem, Usman},
  year = {2026}, eprint = {2601.17642}, archivePrefix = {arXiv}
}""",
    "xstest": """@inproceedings{rottger2024xstest,
  title = {XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models},
  author = {R{\\"o}ttger, Paul and Kirk, Hannah Rose and Vidgen, Bertie and Attanasio, Giuseppe and
            Bianchi, Federico and Hovy, Dirk},
  booktitle = {Proceedings of NAACL}, year = {2024}
}""",
    "or-bench": """@misc{cui2024orbench,
  title = {OR-Bench: An Over-Refusal Benchmark for Large Language Models},
  author = {Cui, Justin and Chiang, Wei-Lin and Stoica, Ion and Hsieh, Cho-Jui},
  year = {2024}, eprint = {2405.20947}, archivePrefix = {arXiv}
}""",
}


def slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split()) or "snapshot"


def citation(meta: SnapshotMeta) -> str:
    """BibTeX for the snapshot: this dataset, then the benchmark it follows or came from."""
    own = f"""@misc{{{slug(title(meta)).replace("-", "")},
  title = {{{title(meta)}}},
  note = {{Made with health-orsc; cite the snapshot's digest, which `orsc verify` prints}}
}}"""
    return own + "\n\n" + SOURCES_BIBTEX[meta.source.format if meta.source else "health-orsc"]
