"""Per-category fingerprints: a hash of everything that shapes a category's prompts.

Taxonomy entry, its seed topics, the templates and judge prompts it uses, the
generator and juror roles (model, endpoint identity, sampling), and the
generation / dedup / jury settings, and the pipeline's code. Operational settings (concurrency,
timeouts, retries, paths) are left out: they never change a prompt.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pipeline.inputs import BuildInputs
from pipeline.records import content_id, sha256_hex


def _role(inputs: BuildInputs, name: str) -> dict:
    role = inputs.config.roles[name]
    endpoint = inputs.config.endpoints[role.endpoint]
    return {"model": role.model, "endpoint": endpoint.identity,
            "structured_output": endpoint.structured_output,
            "sampling": role.sampling(), "prompt": role.prompt}


@functools.cache
def code_version() -> str:
    """Hash of the pipeline's own source: a change to how prompts are cleaned, judged or
    decided must not be hidden by Prefect's task cache. (Model calls stay cached.)"""
    root = Path(__file__).resolve().parent
    return content_id({p.relative_to(root).as_posix(): sha256_hex(p.read_bytes())
                       for p in sorted(root.rglob("*.py"))})


def fingerprint_parts(inputs: BuildInputs, category: str) -> dict:
    cfg = inputs.config
    gen = cfg.generation
    return {
        "taxonomy": inputs.taxonomy.entry(category).model_dump(),
        # source_line included: it is carried into every candidate as seed_source
        "seeds": [s.model_dump() for s in inputs.seeds[category]],
        "templates": {lvl: [[t.name, t.sha] for t in tpls]
                      for lvl, tpls in inputs.generation_templates.items()},
        "rewrite_prompt": [inputs.rewrite_template.name, inputs.rewrite_template.sha],
        "judge_prompts": {j: [t.name, t.sha] for j, t in inputs.judge_templates.items()},
        "roles": {name: _role(inputs, name) for name in [gen.role, *cfg.jury.jurors]},
        "generation": {"rewrites": gen.rewrites, "levels": gen.levels},
        "dedup": cfg.dedup.model_dump(exclude={"batch_size"}),
        "jury": {"jurors": cfg.jury.jurors, "required_benign": cfg.jury.required_benign,
                 "max_repairs": cfg.jury.max_repairs, "calibrate": cfg.jury.calibrate},
        "code": code_version(),
    }


def fingerprint_components(inputs: BuildInputs, category: str) -> dict[str, str]:
    """One hash per input that shapes the category, so a diff can say *what* changed."""
    return {part: content_id(value) for part, value in fingerprint_parts(inputs, category).items()}


def category_fingerprint(inputs: BuildInputs, category: str) -> str:
    return fingerprint_of(fingerprint_components(inputs, category))


def fingerprint_of(components: dict[str, str]) -> str:
    return content_id(components)


def changed_inputs(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Names of the fingerprint inputs whose hashes differ between two component maps."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
