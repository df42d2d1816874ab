"""Per-category fingerprints: a hash of everything that shapes a category's prompts.

One hash per input (a *component*), so a diff can say what changed:

    taxonomy, seeds, templates, rewrite_prompt, judge_prompts  the files
    roles, generation, dedup, jury                             the config (config_components)
    dedup_model                                                the embedding model's files
    code_generate, code_dedup, code_jury                       the modules that shape each
                                                               stage's records (stage_sources)

Operational settings (concurrency, timeouts, retries, paths, batch size) are left
out: they never change a prompt. Each stage's Prefect task is keyed by the
components its stage reads (stage_fingerprint), so a change to jury.py re-runs the
jury tasks only, and a change to the CLI re-runs nothing.
"""

from __future__ import annotations

import ast
import functools
import threading
from pathlib import Path

from health_orsc.core.config import BuildConfig
from health_orsc.core.records import content_id, sha256_hex
from health_orsc.inputs.load import BuildInputs

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Each stage's module; its code component hashes that module and every module of the
# package it imports, directly or not (read from the source, so no list to keep), and the
# stage driver, which reads and writes every stage's records. runtime/ (progress display,
# processes) never shapes a record and is left out.
STAGE_MODULES: dict[str, str] = {"generate": "health_orsc.build.generate",
                                 "dedup": "health_orsc.build.dedup",
                                 "jury": "health_orsc.build.jury"}
STAGE_DRIVER = "health_orsc.build.stages"
NOT_RECORD_SHAPING = ("health_orsc.runtime",)
# The components each stage's output depends on (besides its input files' fingerprints).
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "generate": ("taxonomy", "seeds", "templates", "rewrite_prompt", "roles", "generation",
                 "code_generate"),
    "dedup": ("dedup", "generation", "dedup_model", "code_dedup"),  # generation.min_similarity
    "jury": ("taxonomy", "seeds", "judge_prompts", "roles", "jury", "code_jury", "rubric_writer",
             "classifiers"),
}


def _module_file(module: str, root: Path) -> Path | None:
    """The source file of a module of the package (None for a name that is not one)."""
    path = root.joinpath(*module.split(".")[1:])
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


# CPython 3.11's AST constructor is not safe to run in two threads at once ("AST constructor
# recursion depth mismatch"), and the stage tasks of a build fingerprint in parallel threads.
_PARSING = threading.Lock()


def _imported_modules(source: Path, root: Path) -> set[str]:
    """The package's modules that a source file imports, at any depth of the file."""
    found: set[str] = set()
    with _PARSING:
        tree = ast.parse(source.read_bytes(), str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from health_orsc.build import jury`: the names may be modules themselves
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == root.name and _module_file(m, root)}


def stage_sources(stage: str, root: Path = PACKAGE_DIR) -> list[Path]:
    """The files whose code decides what a stage writes: the stage's module, the package's
    modules it imports (transitively, runtime/ excepted), and the stage driver."""
    seen: set[str] = set()
    todo = [STAGE_MODULES[stage]]
    while todo:
        module = todo.pop()
        if module in seen or module.startswith(NOT_RECORD_SHAPING):
            continue
        seen.add(module)
        todo += _imported_modules(_module_file(module, root), root)
    return sorted({_module_file(m, root) for m in seen | {STAGE_DRIVER}})


@functools.cache
def code_version(stage: str, root: Path = PACKAGE_DIR) -> str:
    """Hash of the source of the modules that shape a stage's records: a change to how
    prompts are generated, cleaned, judged or decided must not be hidden by Prefect's
    task cache. (Model calls stay cached.)"""
    return content_id({f.relative_to(root).as_posix(): sha256_hex(f.read_bytes())
                       for f in stage_sources(stage, root)})


def _role(cfg: BuildConfig, name: str) -> dict:
    role = cfg.roles[name]
    if not role.calls:  # a classifier juror: its model file's digest is `classifiers`
        return role.scoring_rule()
    endpoint = cfg.endpoints[role.endpoint]
    return {"model": role.model, "endpoint": endpoint.identity,
            "structured_output": endpoint.structured_output,
            "sampling": role.request_fields(), "prompt": role.prompt, **role.scoring_rule()}


def config_parts(cfg: BuildConfig) -> dict:
    """The parts of a fingerprint that come from the config alone (verify recomputes
    them from the config a MANIFEST records)."""
    gen = cfg.generation
    writer = [] if gen.rubric_writer is None else [gen.rubric_writer]
    return {
        "roles": {name: _role(cfg, name) for name in [gen.role, *cfg.jury.jurors, *writer]},
        # min_similarity, rubric_writer only when set: None hashes as configs from before them did
        "generation": {"rewrites": gen.rewrites, "levels": gen.levels,
                       **({} if gen.min_similarity is None else {"min_similarity": gen.min_similarity}),
                       **({"rubric_writer": gen.rubric_writer} if writer else {})},
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
        # classifier jurors' model files; the key only with one, as before they existed
        **({"classifiers": inputs.classifier_digests} if inputs.classifier_digests else {}),
        # read by the export, which runs in every build: it keys the category, no stage task
        "rubric_prompt": [inputs.rubric_templates[category].name, inputs.rubric_templates[category].sha],
        # the writer (jury stage) sees the template's criteria: both key its task, only with a writer
        **({} if inputs.rubric_writer_template is None else {"rubric_writer": [
            inputs.rubric_writer_template.name, inputs.rubric_writer_template.sha,
            inputs.rubric_templates[category].name, inputs.rubric_templates[category].sha]}),
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
    return content_id({k: components[k] for k in STAGE_COMPONENTS[stage] if k in components})


def changed_inputs(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Names of the fingerprint inputs whose hashes differ between two component maps."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def stage_keys(inputs: BuildInputs, category: str, epoch: int) -> dict[str, str]:
    """Per stage, the key of a category's task: the components that stage reads and the
    request cache's eviction epoch (an eviction re-runs every stage task; its calls come
    from the cache)."""
    components = fingerprint_components(inputs, category)
    return {stage: content_id([stage_fingerprint(stage, components), epoch]) for stage in STAGE_MODULES}
