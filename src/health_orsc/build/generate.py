"""generate: seed topic x level -> template prompt -> n LLM rewrites.

Input: the validated BuildInputs and one category.
Output: one Decision per candidate. The template's own rendering is always a
candidate (variant 0, generator `template`), so a weak rewriter cannot lose the
seed's hand-written boundary question; rewrites are variants 1..n. Kept
candidates go on to dedup (which drops a rewrite that adds nothing to its
template, or drifts off it); a rewrite that comes back empty or is not a
question is rejected with reason `unusable_rewrite`, keeping the raw call key so
the audit trail shows what the model said.

Example:
    decisions = gateway.run(generate_category(inputs, "drug_abuse", gateway))
"""

from __future__ import annotations

import functools
import re

from health_orsc.core.records import TEMPLATE_GENERATOR, Candidate, Decision, SeedTopic, content_id
from health_orsc.inputs.load import BuildInputs, generation_context, rewrite_context
from health_orsc.inputs.templates import PromptTemplate
from health_orsc.llm import Gateway

MIN_PROMPT_CHARS = 12
MAX_PROMPT_CHARS = 400
_LABEL = re.compile(r"^(?:rewritten|rewrite|new|revised)?\s*(?:question|prompt)\s*[:\-]\s*", re.I)


def clean_rewrite(text: str) -> str | None:
    """First non-empty line of a model's rewrite, without labels or wrapping quotes.

    Returns None when nothing usable is left: empty, too short or too long, or
    not a question (every prompt in the benchmark is a question a user asks).
    """
    for line in text.strip().splitlines():
        line = _LABEL.sub("", line.strip()).strip().strip('"').strip("'\u201c\u201d").strip()
        if line:
            ok = MIN_PROMPT_CHARS <= len(line) <= MAX_PROMPT_CHARS and "?" in line
            return line if ok else None
    return None


def _candidate(seed: SeedTopic, level: str, tpl: PromptTemplate, template_text: str, variant: int,
               prompt: str, generator: str, params: dict, call: str | None) -> Candidate:
    body = {"seed_id": seed.id, "level": level, "template": tpl.name, "template_sha": tpl.sha,
            "variant": variant, "generator": generator, "generator_params": params,
            "prompt": prompt}
    return Candidate(
        id=content_id(body), category=seed.category, level=level, seed_id=seed.id,
        seed_topic=seed.topic, seed_source=f"{seed.source_file}:{seed.source_line}",
        original_question=seed.original_question, template=tpl.name,
        template_sha=tpl.sha, template_text=template_text, variant=variant, prompt=prompt,
        generator=generator, generator_params=params, generation_call=call,
    )


def planned_calls(inputs: BuildInputs, category: str) -> int:
    """Model calls generate_category makes for a category (cache hits included)."""
    gen = inputs.config.generation
    templates = sum(len(inputs.generation_templates[lvl]) for lvl in gen.levels)
    return len(inputs.seeds[category]) * templates * gen.rewrites


def seeds_per_chunk(inputs: BuildInputs, chunk: int) -> int:
    """How many seed topics give about `chunk` candidates (at least one)."""
    gen = inputs.config.generation
    per_seed = sum(len(inputs.generation_templates[lvl]) for lvl in gen.levels) * (1 + gen.rewrites)
    return max(1, chunk // max(1, per_seed))


async def generate_category(inputs: BuildInputs, category: str, gateway: Gateway,
                            seeds: list[SeedTopic] | None = None) -> list[Decision]:
    """The candidates of one category (or of its `seeds` only), in a fixed order (seed,
    level, template, variant)."""
    cfg = inputs.config
    gen = cfg.generation
    entry = inputs.taxonomy.entry(category)
    role = cfg.roles[gen.role]
    generator = role.identity(cfg.endpoint_for(gen.role))

    async def one(seed: SeedTopic, level: str, tpl: PromptTemplate) -> list[Decision]:
        text = tpl.render(generation_context(seed, entry))
        template = _candidate(seed, level, tpl, text, 0, text, TEMPLATE_GENERATOR, {}, None)
        out = [Decision(candidate=template, kept=True)]
        if gen.rewrites == 0:
            return out
        messages = inputs.rewrite_template.render_messages(rewrite_context(text, level, entry))
        for variant in range(1, gen.rewrites + 1):
            offset = variant - 1  # the sampling seed offset of the variant-th rewrite
            result = await gateway.chat(gen.role, messages, seed_offset=offset)
            prompt = clean_rewrite(result.text)
            cand = _candidate(seed, level, tpl, text, variant, prompt or result.text.strip(),
                              generator, role.request_fields(offset), result.key)
            out.append(Decision(candidate=cand, kept=prompt is not None,
                                reason=None if prompt else "unusable_rewrite"))
        return out

    jobs = [functools.partial(one, seed, level, tpl)
            for seed in (inputs.seeds[category] if seeds is None else seeds)
            for level in gen.levels
            for tpl in inputs.generation_templates[level]]
    batches = await gateway.gather(jobs)
    return [d for batch in batches for d in batch]
