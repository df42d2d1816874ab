"""Taxonomy, seed topics and templates: loaded and validated before any model call.

Everything a build reads from disk besides the config goes through here, so a
malformed file stops the build with one message naming file, field and fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.config import BuildConfig
from pipeline.errors import InputError, from_validation_error
from pipeline.records import CATEGORIES, SeedTopic, content_id
from pipeline.templates import PromptTemplate, TemplateLibrary

SLOTS = ("subject", "persona", "benign_goal", "question", "boundary_question")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CategoryEntry(_Strict):
    id: str
    name: str
    harm_definition: str = Field(min_length=10)
    benign_boundary: str = Field(min_length=10)

    @field_validator("id")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in CATEGORIES:
            raise ValueError(f"unknown category '{v}'; known: {', '.join(CATEGORIES)}")
        return v


class Taxonomy(_Strict):
    version: int
    categories: list[CategoryEntry]

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


# libyaml's parser when PyYAML was built with it: ~10x faster on paper-scale seed files
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path):
    if not path.is_file():
        raise InputError(path, None, "file not found", f"create {path.name} in the seeds directory")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.load(text, Loader=_LOADER), yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as err:
        raise InputError(path, None, f"is not valid YAML ({err})", "fix the YAML syntax") from err


def load_taxonomy(seeds_dir: Path) -> Taxonomy:
    path = seeds_dir / "taxonomy.yaml"
    raw, _ = _read_yaml(path)
    try:
        tax = Taxonomy.model_validate(raw)
    except ValidationError as err:
        raise from_validation_error(path, err) from err
    ids = [c.id for c in tax.categories]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(path, "categories", f"lists {dupes} more than once", "keep one entry per id")
    return tax


def load_seed_file(seeds_dir: Path, category: str, limit: int | None) -> list[SeedTopic]:
    path = seeds_dir / f"{category}.yaml"
    raw, node = _read_yaml(path)
    try:
        parsed = SeedFile.model_validate(raw)
    except ValidationError as err:
        raise from_validation_error(path, err) from err
    if parsed.category != category:
        raise InputError(path, "category", f"says '{parsed.category}' but the file is for '{category}'",
                         f"set 'category: {category}' or rename the file")
    topic_nodes = next(v for k, v in node.value if k.value == "topics").value
    seen: dict[str, int] = {}
    seeds = []
    for i, (entry, item_node) in enumerate(zip(parsed.topics, topic_nodes, strict=True)):
        if entry.topic in seen:
            raise InputError(path, f"topics.{i}.topic", f"'{entry.topic}' repeats topics.{seen[entry.topic]}",
                             "give every topic a distinct name")
        seen[entry.topic] = i
        body = {"category": category, "topic": entry.topic,
                "original_question": entry.original_question, "slots": entry.slots}
        seeds.append(SeedTopic(id=content_id(body), **body, source_file=path.name,
                               source_line=item_node.start_mark.line + 1))
    return seeds[:limit] if limit else seeds


def judge_context(candidate_prompt: str, entry: CategoryEntry, original_question: str) -> dict:
    return {"prompt": candidate_prompt, "category": entry.model_dump(),
            "original_question": original_question}


def generation_context(seed: SeedTopic, entry: CategoryEntry) -> dict:
    return {**seed.slots, "topic": seed.topic, "category": entry.model_dump()}


def rewrite_context(template_text: str, level: str, entry: CategoryEntry) -> dict:
    return {"prompt": template_text, "level": level, "category": entry.model_dump()}


def load_inputs(config: BuildConfig, categories: list[str] | None = None) -> BuildInputs:
    """Validate taxonomy, seeds, templates and key variables for the selected categories.

    Every template is rendered once against every seed it will see, so an
    undefined variable or a sandbox violation fails here, before any model call.
    """
    cfg_file = config.source
    taxonomy = load_taxonomy(config.seeds_dir)
    known = [c.id for c in taxonomy.categories]
    selected = categories or config.categories or known
    field = "--categories" if categories else "categories"
    for c in selected:
        if c not in known:
            raise InputError(cfg_file if not categories else None, field, f"unknown category '{c}'",
                             f"use some of: {', '.join(known)}")
    selected = [c for c in known if c in selected]  # taxonomy order, no repeats

    lib = TemplateLibrary(config.templates_dir)
    gen = config.generation
    gen_templates = {
        lvl: [lib.get(f"generate/{n}", f"generation.templates.{lvl}[{i}]", cfg_file)
              for i, n in enumerate(gen.templates[lvl])]
        for lvl in gen.levels
    }
    rewrite = lib.get(gen.rewrite_prompt, "generation.rewrite_prompt", cfg_file)
    judges = {j: lib.get(f"judges/{config.roles[j].prompt}", f"roles.{j}.prompt", cfg_file)
              for j in config.jury.jurors}

    seeds = {c: load_seed_file(config.seeds_dir, c, gen.seeds_per_category) for c in selected}
    for c in selected:
        entry = taxonomy.entry(c)
        for seed in seeds[c]:
            where = f" (seed '{seed.topic}', {seed.source_file} line {seed.source_line})"
            for lvl, templates in gen_templates.items():
                for tpl in templates:
                    text = tpl.render(generation_context(seed, entry), where)
                    rewrite.render(rewrite_context(text, lvl, entry), where)
            for tpl in judges.values():
                tpl.render(judge_context("example prompt", entry, seed.original_question), where)

    used_endpoints = {config.roles[r].endpoint for r in [gen.role, *config.jury.jurors]}
    for name in sorted(used_endpoints):
        var = config.endpoints[name].api_key_env
        if var and not os.environ.get(var):
            raise InputError(cfg_file, f"endpoints.{name}.api_key_env",
                             f"environment variable {var} is not set",
                             f"export {var}=... before running, or point the roles at another endpoint")
    return BuildInputs(config, taxonomy, selected, seeds, gen_templates, rewrite, judges)
