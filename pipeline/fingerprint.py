"""Per-category fingerprints: a hash of everything that shapes a category's prompts.

One hash per input (a *component*), so a diff can say what changed:

    taxonomy, seeds, templates, rewrite_prompt, judge_prompts  the files
    roles, generation, dedup, jury                             the config (config_components)
    dedup_model                                                the embedding model's files
    code_generate, code_dedup, code_jury                       the modules that shape each
                                                               stage's records (STAGE_MODULES)

Operational settings (concurrency, timeouts, retries, paths, batch size) are left
out: they never change a prompt. Each stage's Prefect task is keyed by the
components its stage reads (stage_fingerprint), so a change to jury.py re-runs the
jury tasks only, and a change to the CLI re-runs nothing.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pipeline.config import BuildConfig
from pipeline.inputs import BuildInputs
from pipeline.records import content_id, sha256_hex

PIPELINE_DIR = Path(__file__).resolve().parent
# The modules whose code decides what each stage writes. build.py drives every stage
# (reads and writes its records); records.py defines them.
_SHARED = ("records.py", "build.py")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "generate": ("generate.py", "templates.py", "inputs.py", *_SHARED),
    "dedup": ("dedup.py", *_SHARED),
    "jury": ("jury.py", "templates.py", "inputs.py", *_SHARED),
}
# The components each stage's output depends on (besides its input files' fingerprints).
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "generate": ("taxonomy", "seeds", "templates", "rewrite_prompt", "roles", "generation",
                 "code_generate"),
    "dedup": ("dedup", "generation", "dedup_model", "code_dedup"),  # generation.min_similarity
    "jury": ("taxonomy", "seeds", "judge_prompts", "roles", "jury", "code_jury"),
}


@functools.cache
def code_version(stage: str, root: Path = PIPELINE_DIR) -> str:
    """Hash of the source of the modules that shape a stage's records: a change to how
    prompts are generated, cleaned, judged or decided must not be hidden by Prefect's
    task cache. (Model calls stay cached.)"""
    return content_id({name: sha256_hex((root / name).read_bytes()) for name in STAGE_MODULES[stage]})


def _role(cfg: BuildConfig, name: str) -> dict:
    role = cfg.roles[name]
    endpoint = cfg.endpoints[role.endpoint]
    return {"model": role.model, "endpoint": endpoint.identity,
            "structured_output": endpoint.structured_output,
            "sampling": role.sampling().model_dump(), "prompt": role.prompt, **role.scoring_rule()}


def config_parts(cfg: BuildConfig) -> dict:
    """The parts of a fingerprint that come from the config alone (verify recomputes
    them from the config a MANIFEST records)."""
    gen = cfg.generation
    return {
        "roles": {name: _role(cfg, name) for name in [gen.role, *cfg.jury.jurors]},
        # min_similarity only when set: None hashes as configs from before the check did
        "generation": {"rewrites": gen.rewrites, "levels": gen.levels,
                       **({} if gen.min_similarity is None else {"min_similarity": gen.min_similarity})},
        # the embedder's identity is `dedup_model`; the key only when set, as before it existed
        "dedup": cfg.dedup.model_dump(exclude={"batch_size", "model_path", "embedder"}),
        "jury": {"jurors": cfg.jury.jurors, "required_benign": cfg.jury.required_benign,
                 "max_repairs": cfg.jury.max_repairs, "calibrate": cfg.jury.calibrate},
    }


def config_components(cfg: BuildConfig) -> dict[str, str]:
    return {part: content_id(value) for part, value in config_parts(cfg).items()}


def fingerprint_parts(inputs: BuildInputs, category: str) -> dict:
    return {
        "taxonomy": inputs.taxonomy.entry(category).model_dump(),
        # source_line included: it is carried into every candidate as seed_source
        "seeds": [s.model_dump() for s in inputs.seeds[category]],
        "templates": {lvl: [[t.name, t.sha] for t in tpls]
                      for lvl, tpls in inputs.generation_templates.items()},
        "rewrite_prompt": [inputs.rewrite_template.name, inputs.rewrite_template.sha],
        "judge_prompts": {j: [t.name, t.sha] for j, t in inputs.judge_templates.items()},
        **config_parts(inputs.config),
        "dedup_model": inputs.dedup_model,
        **{f"code_{stage}": code_version(stage) for stage in STAGE_MODULES},
    }


def fingerprint_components(inputs: BuildInputs, category: str) -> dict[str, str]:
    """One hash per input that shapes the category, so a diff can say *what* changed."""
    return {part: content_id(value) for part, value in fingerprint_parts(inputs, category).items()}


def category_fingerprint(inputs: BuildInputs, category: str) -> str:
    return fingerprint_of(fingerprint_components(inputs, category))


def fingerprint_of(components: dict[str, str]) -> str:
    return content_id(components)


def stage_fingerprint(stage: str, components: dict[str, str]) -> str:
    """What a stage task of one category is keyed by: only the components that stage reads."""
    return content_id({k: components[k] for k in STAGE_COMPONENTS[stage]})


def changed_inputs(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Names of the fingerprint inputs whose hashes differ between two component maps."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
