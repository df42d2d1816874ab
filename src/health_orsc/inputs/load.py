"""Taxonomy, seed topics and templates: loaded and validated before any model call.

Everything a build reads from disk besides the config goes through here, so a
malformed file stops the build with one message naming file, field and fix.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from health_orsc.core.classifier import Classifier, classifier_digest, read_classifier
from health_orsc.core.config import BuildConfig
from health_orsc.core.errors import InputError, from_validation_error, shorten
from health_orsc.core.files import load_yaml
from health_orsc.core.records import CATEGORY_ID_PATTERN, SeedTopic, content_id, sha256_hex
from health_orsc.inputs.rubrics import (
    RUBRIC_WRITERS_DIR,
    render_rubric,
    rubric_context,
    rubric_template,
    writer_context,
)
from health_orsc.inputs.templates import PromptTemplate, TemplateLibrary

SLOTS = ("subject", "persona", "benign_goal", "question", "boundary_question")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategoryEntry(_Strict):
    """One category of the taxonomy; its seed topics are in seeds/<id>.yaml."""

    id: str = Field(pattern=CATEGORY_ID_PATTERN)
    name: str = Field(min_length=1)
    harm_definition: str = Field(min_length=10)
    benign_boundary: str = Field(min_length=10)


class Taxonomy(_Strict):
    """The taxonomy file decides which categories exist and their order."""

    version: int
    categories: list[CategoryEntry] = Field(min_length=1)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.categories]

    def entry(self, category: str) -> CategoryEntry:
        return next(c for c in self.categories if c.id == category)


class SeedTopicEntry(_Strict):
    topic: str = Field(min_length=3)
    original_question: str = Field(min_length=5)
    slots: dict[str, str]

    @field_validator("slots")
    @classmethod
    def _all_slots(cls, v: dict[str, str]) -> dict[str, str]:
        missing = [s for s in SLOTS if not v.get(s, "").strip()]
        if missing:
            raise ValueError(f"missing or empty slots: {', '.join(missing)} (each topic needs {SLOTS})")
        return v


class SeedFile(_Strict):
    category: str
    topics: list[SeedTopicEntry] = Field(min_length=1)


@dataclass(frozen=True)
class BuildInputs:
    """Everything validated: what the stages and fingerprints are computed from."""

    config: BuildConfig
    taxonomy: Taxonomy
    categories: list[str]
    seeds: dict[str, list[SeedTopic]]
    generation_templates: dict[str, list[PromptTemplate]]  # level -> templates
    rewrite_template: PromptTemplate
    judge_templates: dict[str, PromptTemplate]  # juror role -> template
    dedup_model: str  # BuildConfig.embedding_identity()
    rubric_templates: dict[str, PromptTemplate]  # category -> rubrics/<category>.j2 or default.j2
    rubric_writer_template: PromptTemplate | None = None  # generation.rubric_writer's prompt
    classifiers: dict[str, Classifier] = field(default_factory=dict)  # classifier juror -> its model
    classifier_digests: dict[str, str] = field(default_factory=dict)  # ... -> sha256 of classifier.json


def load_taxonomy(seeds_dir: Path) -> Taxonomy:
    return load_taxonomy_file(seeds_dir / "taxonomy.yaml")


def load_taxonomy_file(path: Path) -> Taxonomy:
    raw, _ = load_yaml(path, "taxonomy file")
    try:
        tax = Taxonomy.model_validate(raw)
    except ValidationError as err:
        raise from_validation_error(path, err) from err
    ids = tax.ids
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(path, "categories", f"lists {dupes} more than once", "keep one entry per id")
    return tax


def load_seed_file(seeds_dir: Path, category: str, limit: int | None) -> list[SeedTopic]:
    """A category's seed topics (the first `limit`). Parsed once per content per process:
    each stage task reads its category's seeds, and at a million candidates parsing a
    category's file took ~1.4 s of CPU and ~80 MB while it lasted (seven tasks at once, at
    the start of every stage); the topics are shared, never changed."""
    path = seeds_dir / f"{category}.yaml"  # a plain name: category ids match CATEGORY_ID_PATTERN
    if not path.is_file():
        raise InputError(path, None, f"seed file for category '{category}' not found",
                         f"create {path.name} in {seeds_dir} (see seeds/self_harm.yaml), or remove"
                         f" '{category}' from taxonomy.yaml")
    seeds = _parsed_seeds(path, category, sha256_hex(path.read_bytes()))
    return list(seeds[:limit] if limit else seeds)


@functools.lru_cache(maxsize=32)
def _parsed_seeds(path: Path, category: str, digest: str) -> tuple[SeedTopic, ...]:
    """The topics of a seed file with content `digest` (the cache key: an edited file is
    parsed again)."""
    raw, node = load_yaml(path, "seed file")
    try:
        parsed = SeedFile.model_validate(raw)
    except ValidationError as err:
        raise from_validation_error(path, err) from err
    if parsed.category != category:
        raise InputError(path, "category",
                         f"says '{shorten(parsed.category, 80)}' but the file is for '{category}'",
                         f"set 'category: {category}' or rename the file")
    topic_nodes = next(v for k, v in node.value if k.value == "topics").value
    seen: dict[str, int] = {}
    seeds = []
    for i, (entry, item_node) in enumerate(zip(parsed.topics, topic_nodes, strict=True)):
        if entry.topic in seen:
            raise InputError(path, f"topics.{i}.topic",
                             f"'{shorten(entry.topic, 80)}' repeats topics.{seen[entry.topic]}",
                             "give every topic a distinct name")
        seen[entry.topic] = i
        body = {"category": category, "topic": entry.topic,
                "original_question": entry.original_question, "slots": entry.slots}
        seeds.append(SeedTopic(id=content_id(body), **body, source_file=path.name,
                               source_line=item_node.start_mark.line + 1))
    return tuple(seeds)


def judge_context(candidate_prompt: str, entry: CategoryEntry, original_question: str,
                  answer: str = "verdict") -> dict:
    """`answer`: "verdict" (JSON label and rationale) or "label" (one word, for score jurors)."""
    return {"prompt": candidate_prompt, "category": entry.model_dump(),
            "original_question": original_question, "answer": answer}


def generation_context(seed: SeedTopic, entry: CategoryEntry) -> dict:
    return {**seed.slots, "topic": seed.topic, "category": entry.model_dump()}


def rewrite_context(template_text: str, level: str, entry: CategoryEntry) -> dict:
    return {"prompt": template_text, "level": level, "category": entry.model_dump()}


# Inputs, by content, whose templates this process rendered against every seed: `orsc
# build` checks them before it starts the flow, and the flow's own check is then free.
_RENDERED: set[str] = set()


def check_renders(config: BuildConfig, taxonomy: Taxonomy, selected: list[str],
                  seeds: dict[str, list[SeedTopic]], gen_templates: dict[str, list[PromptTemplate]],
                  rewrite: PromptTemplate, judges: dict[str, PromptTemplate],
                  rubrics: dict[str, PromptTemplate], writer: PromptTemplate | None) -> None:
    """Render every template once against every seed it will see: an undefined variable or
    a sandbox violation is an InputError naming the seed. Once per content per process."""
    templates = [*(t for ts in gen_templates.values() for t in ts), rewrite, *judges.values(),
                 *rubrics.values(), *([writer] if writer else [])]
    key = content_id([config.content(), taxonomy.model_dump(), [t.sha for t in templates],
                      {c: [s.id for s in seeds[c]] for c in selected}])
    if key in _RENDERED:
        return
    gen = config.generation
    for c in selected:
        entry = taxonomy.entry(c)
        for seed in seeds[c]:
            where = f" (seed '{shorten(seed.topic, 80)}', {seed.source_file} line {seed.source_line})"
            for lvl in gen.levels:  # with the seed's boundary question standing in for a prompt
                context = rubric_context(seed, entry.model_dump(), seed.slots["boundary_question"], lvl)
                criteria = render_rubric(rubrics[c], context, where)
                if writer is not None:
                    writer.render_messages(writer_context(context, criteria), where)
            for lvl, level_templates in gen_templates.items():
                for tpl in level_templates:
                    text = tpl.render(generation_context(seed, entry), where)
                    rewrite.render(rewrite_context(text, lvl, entry), where)
            for j, tpl in judges.items():
                answer = config.roles[j].answer
                tpl.render(judge_context("example prompt", entry, seed.original_question, answer), where)
    _RENDERED.add(key)


def load_inputs(config: BuildConfig, categories: list[str] | None = None,
                renders: bool = True) -> BuildInputs:
    """Validate taxonomy, seeds, templates and key variables for the selected categories.

    With `renders`, every template is rendered once against every seed it will see, so
    an undefined variable or a sandbox violation fails here, before any model call: most
    of the time it takes (~15 renders per seed: 2.5 minutes of CPU at 66,000 seeds), done
    once per content per process (`check_renders`). A stage task reads inputs the build
    flow checked as it started, so it leaves them out.
    """
    cfg_file = config.source
    taxonomy = load_taxonomy(config.seeds_dir)
    known = taxonomy.ids
    selected = categories or config.categories or known
    field = "--categories" if categories else "categories"
    for c in selected:
        if c not in known:
            raise InputError(cfg_file if not categories else None, field,
                             f"unknown category '{shorten(c, 80)}'",
                             f"use some of: {', '.join(known)}"
                             f" (the ids in {config.seeds_dir / 'taxonomy.yaml'})")
    selected = [c for c in known if c in selected]  # taxonomy order, no repeats

    lib = TemplateLibrary(config.templates_dir)
    gen = config.generation
    gen_templates = {
        lvl: [lib.get(Path("generate", n), f"generation.templates.{lvl}[{i}]", cfg_file)
              for i, n in enumerate(gen.templates[lvl])]
        for lvl in gen.levels
    }
    rewrite = lib.get(Path(gen.rewrite_prompt), "generation.rewrite_prompt", cfg_file)
    judges = {j: lib.get(config.roles[j].judge_template(), f"roles.{j}.prompt", cfg_file)
              for j in config.jury.jurors if config.roles[j].calls}
    classifiers = {j: read_classifier(config.classifier_dir(j), f"roles.{j}.classifier")
                   for j in config.jury.jurors if not config.roles[j].calls}
    for j, model in classifiers.items():
        if model.embedding_model != config.embedding_identity():
            raise InputError(cfg_file, f"roles.{j}.classifier", f"was trained on the embeddings of"
                             f" {model.embedding_model}, and this config embeds with"
                             f" {config.embedding_identity()}: its scores would mean nothing",
                             "train it again with this config (orsc calibrate --train --config ...)")

    rubrics = {c: rubric_template(lib, c, cfg_file) for c in selected}
    writer_role = gen.rubric_writer
    writer = None
    if writer_role is not None:
        if config.roles[writer_role].prompt is None:
            raise InputError(cfg_file, f"roles.{writer_role}.prompt",
                             "the rubric writer has no prompt template",
                             f"set 'prompt' to a template under {RUBRIC_WRITERS_DIR}/ (the shipped one is"
                             " criteria.j2)")
        writer = lib.get(Path(RUBRIC_WRITERS_DIR, config.roles[writer_role].prompt),
                         f"roles.{writer_role}.prompt", cfg_file)

    seeds = {c: load_seed_file(config.seeds_dir, c, gen.seeds_per_category) for c in selected}
    if renders:
        check_renders(config, taxonomy, selected, seeds, gen_templates, rewrite, judges, rubrics, writer)

    writers = [writer_role] if writer_role is not None else []
    used_endpoints = {config.roles[r].endpoint for r in [gen.role, *config.jury.jurors, *writers]
                      if config.roles[r].calls}
    for name in sorted(used_endpoints):
        var = config.endpoints[name].api_key_env
        if var and not os.environ.get(var):
            raise InputError(cfg_file, f"endpoints.{name}.api_key_env",
                             f"environment variable {var} is not set",
                             f"export {var}=... before running, or point the roles at another endpoint")
    dedup_model = config.embedding_identity()
    return BuildInputs(config, taxonomy, selected, seeds, gen_templates, rewrite, judges, dedup_model,
                       rubrics, writer, classifiers,
                       {j: classifier_digest(config.classifier_dir(j)) for j in classifiers})
