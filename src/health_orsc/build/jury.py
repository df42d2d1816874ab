"""jury: N jurors vote harmful / benign on every candidate; a k-of-n rule decides.

Input: deduplicated candidates of one category. Output: one Decision per
candidate, with every juror's vote and rationale. Kept when at least
`required_benign` jurors say benign. Rejected candidates stay as data:
reason `jury_harmful` (too few benign votes) or `unparseable_verdict` (a juror
gave no valid verdict after the bounded repair attempts). A score juror
(`scoring: logprobs`) answers one word instead; its vote's P(harmful) comes from the
label tokens' probabilities and its label from the juror's threshold. A classifier juror
(`scoring: classifier`) makes no call: its P(harmful) is its model's score of the prompt's
embedding (health_orsc.core.classifier), computed beforehand for every text the stage judges
(`classifier_scores`, given the embedder) and labelled by its threshold.

The jury is also checked: `calibrate_jurors` asks every juror about the
seeds' original (harmful) requests, and the share each labels harmful is
published with the snapshot.

Example:
    decisions = gateway.run(judge_category(inputs, "self_harm", candidates, gateway))
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import sparse

from health_orsc.build.guards import text_verdict, unsafe_probability
from health_orsc.core.errors import shorten
from health_orsc.core.records import (
    HARM_LABELS,
    CalibrationVote,
    Candidate,
    Criterion,
    Decision,
    HarmLabel,
    JurorVote,
    Rubric,
    RubricWriter,
    SeedTopic,
    rubric_problems,
)
from health_orsc.core.stats import fleiss_kappa
from health_orsc.inputs.load import BuildInputs, CategoryEntry, judge_context
from health_orsc.inputs.rubrics import MAX_WRITTEN, render_rubric, rubric_context, writer_context
from health_orsc.llm import Gateway
from health_orsc.llm.replies import label_mass
from health_orsc.llm.request import reply_schema

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


class Verdict(BaseModel):
    """The structured answer every juror must give."""

    model_config = ConfigDict(extra="ignore")
    label: HarmLabel
    rationale: str = Field(min_length=1, max_length=400)


VERDICT_SCHEMA = reply_schema(Verdict)
_OBJECT = re.compile(r"\{.*\}", re.S)
VERDICT_FORM = '{"label": "benign" or "harmful", "rationale": "one sentence"}'


def parse_labelled(text: str, model: type[M]) -> M:
    """The first JSON object in a reply (tolerating code fences and chatter), as `model`
    (a lower-cased `label` and a `rationale`); ValueError saying what is wrong."""
    match = _OBJECT.search(text)
    if not match:
        raise ValueError("no JSON object in the reply")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg}") from err
    if not isinstance(data, dict):
        raise ValueError("the JSON is not an object")
    if isinstance(data.get("label"), str):
        data["label"] = data["label"].strip().lower()
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from err


def parse_verdict(text: str) -> Verdict:
    return parse_labelled(text, Verdict)


def repair_message(problem: str, form: str = VERDICT_FORM) -> str:
    return (f"Your reply could not be used ({problem}). Reply again with only a JSON object of"
            f" the form {form}.")


async def ask_labelled(gateway: Gateway, role: str, messages: list[dict[str, str]], schema: dict[str, Any],
                       model: type[M], max_repairs: int, form: str) -> tuple[M | None, list[str], int, str]:
    """Ask `role` until its reply parses as `model`, with at most `max_repairs` repair turns
    (the bad reply and what was wrong with it). Returns (the answer or None, every call's
    cache key, repairs made, the last problem)."""
    messages = list(messages)
    calls: list[str] = []
    problem = ""
    for attempt in range(max_repairs + 1):
        result = await gateway.chat(role, messages, schema=schema)
        calls.append(result.key)
        try:
            return parse_labelled(result.text, model), calls, attempt, ""
        except ValueError as err:
            problem = str(err)
            messages = [*messages, {"role": "assistant", "content": result.text},
                        {"role": "user", "content": repair_message(problem, form)}]
    return None, calls, max_repairs, problem


TOP_LOGPROBS = 20  # rivals per token a score juror asks for (OpenAI's maximum)
NEAREST_BLOCK_CELLS = 1 << 21  # question pairs per block of nearest_other (16 MB of float64)


def label_probability(logprobs: list[dict[str, Any]] | None) -> float | None:
    """P(harmful) from a one-word answer's token log-probabilities: at the first token
    whose likeliest candidates include the start of a label ("harm", " Benign", ...), the
    probability mass of "harmful" tokens over that of both labels. None when no token's
    candidates name a label."""
    for position in logprobs or []:
        mass = label_mass(position, HARM_LABELS)
        total = sum(mass.values())
        if total > 0:
            return mass["harmful"] / total
    return None


def juror_messages(inputs: BuildInputs, juror: str, prompt: str, entry: CategoryEntry,
                   original_question: str) -> list[dict[str, str]]:
    """A juror's judge prompt for one question: a score juror's template is rendered to ask
    for one word (`answer` = "label"), a verdict juror's for JSON (`answer` = "verdict")."""
    return inputs.judge_templates[juror].render_messages(
        judge_context(prompt, entry, original_question, inputs.config.roles[juror].answer))


async def cast_vote(gateway: Gateway, juror: str, prompt_messages: list[dict[str, str]],
                    max_repairs: int) -> JurorVote:
    role = gateway.config.roles[juror]
    model = gateway.config.role_identity(juror)
    if role.scoring == "logprobs":
        return await _score_vote(gateway, juror, model, prompt_messages)
    if role.scoring == "guard":
        return await _guard_vote(gateway, juror, model, prompt_messages)
    verdict, calls, repairs, problem = await ask_labelled(
        gateway, juror, prompt_messages, VERDICT_SCHEMA, Verdict, max_repairs, VERDICT_FORM)
    if verdict is None:
        return JurorVote(juror=juror, model=model, judge_prompt=role.prompt or "", label="unparseable",
                         rationale=f"no valid verdict after {max_repairs} repair attempts: {problem}",
                         calls=calls, repairs=max_repairs)
    return JurorVote(juror=juror, model=model, judge_prompt=role.prompt or "", label=verdict.label,
                     rationale=verdict.rationale.strip(), calls=calls, repairs=repairs)


async def _score_vote(gateway: Gateway, juror: str, model: str, messages: list[dict[str, str]]) -> JurorVote:
    """One call, no repairs: the label is read from the token probabilities, not parsed."""
    role = gateway.config.roles[juror]
    result = await gateway.chat(juror, messages, top_logprobs=TOP_LOGPROBS)
    p = label_probability(result.logprobs)
    vote = {"juror": juror, "model": model, "judge_prompt": role.prompt or "", "calls": [result.key],
            "repairs": 0}
    if p is None:
        why = ("the endpoint returned no token log-probabilities" if not result.logprobs else
               f"no token of the reply had 'harmful' or 'benign' among its {TOP_LOGPROBS} likeliest")
        return JurorVote(**vote, label="unparseable", rationale=f"{why}: {shorten(result.text, 80)!r}")
    label = "harmful" if p >= role.threshold else "benign"
    return JurorVote(**vote, label=label, p_harmful=round(p, 4),
                     rationale=f"P(harmful) {p:.3f} {'>=' if label == 'harmful' else '<'}"
                               f" threshold {role.threshold}")


async def _guard_vote(gateway: Gateway, juror: str, model: str, messages: list[dict[str, str]]) -> JurorVote:
    """One call, no repairs: a guard model answers in its own format (build/guards.py)."""
    role = gateway.config.roles[juror]
    fmt = role.guard_format or ""
    result = await gateway.chat(juror, messages, top_logprobs=TOP_LOGPROBS)
    vote = {"juror": juror, "model": model, "judge_prompt": role.judge_template().name, "calls": [result.key],
            "repairs": 0}
    reply = shorten(result.text.strip().replace("\n", " | "), 80)
    p = unsafe_probability(fmt, result.logprobs)
    if p is not None:
        label = "harmful" if p >= role.threshold else "benign"
        return JurorVote(**vote, label=label, p_harmful=round(p, 4),
                         rationale=f"{fmt}: {reply!r}; P(unsafe) {p:.3f}"
                                   f" {'>=' if label == 'harmful' else '<'} threshold {role.threshold}")
    label = text_verdict(fmt, result.text)
    if label is None:
        return JurorVote(**vote, label="unparseable", rationale=f"not a {fmt} verdict: {reply!r}")
    return JurorVote(**vote, label=label, rationale=f"{fmt}: {reply!r} (no token log-probabilities)")


# A classifier juror's scores: juror -> text -> P(harmful).
Scores = dict[str, dict[str, float]]


def calling_jurors(inputs: BuildInputs) -> list[str]:
    return [j for j in inputs.config.jury.jurors if inputs.config.roles[j].calls]


def planned_calls(inputs: BuildInputs, category: str, candidates: int) -> int:
    """Model calls judge_category and calibrate_jurors make for a category, without repairs."""
    jury = inputs.config.jury
    checks = 2 * len(inputs.seeds[category]) if jury.calibrate else 0  # harmful + benign control
    return (candidates + checks) * len(calling_jurors(inputs))


def check_texts(seeds: list[SeedTopic]) -> list[str]:
    """The texts the jury check asks about (calibrate_jurors): each seed's harmful request
    and its benign boundary question."""
    return [t for s in seeds for t in (s.original_question, s.slots["boundary_question"])]


def check_pairs(seeds: list[SeedTopic]) -> dict[str, str]:
    """Per seed id, the harmful request the jury check shows beside the seed's own: the
    nearest other of the category's (`nearest_other`)."""
    return dict(zip([s.id for s in seeds], nearest_other([s.original_question for s in seeds]), strict=True))


def classifier_scores(inputs: BuildInputs, texts: list[str],
                      embed: Callable[[list[str]], Any]) -> Scores:
    """Every classifier juror's P(harmful) of each text, from the texts' embeddings (`embed`,
    the config's embedder): a text it was trained on is scored by the fit that never saw
    its label (health_orsc.core.classifier)."""
    if not inputs.classifiers:
        return {}
    unique = list(dict.fromkeys(texts))
    vectors = embed(unique)
    return {j: dict(zip(unique, model.p_harmful(vectors, unique), strict=True))
            for j, model in inputs.classifiers.items()}


def classifier_vote(inputs: BuildInputs, juror: str, p: float) -> JurorVote:
    role = inputs.config.roles[juror]
    label = "harmful" if p >= role.threshold else "benign"
    return JurorVote(juror=juror, model=f"classifier:{inputs.classifier_digests[juror][:16]}",
                     judge_prompt="", calls=[], repairs=0, label=label, p_harmful=round(p, 4),
                     rationale=f"classifier P(harmful) {p:.3f} {'>=' if label == 'harmful' else '<'}"
                               f" threshold {role.threshold}")


async def vote_on(inputs: BuildInputs, gateway: Gateway, juror: str, prompt: str, entry: CategoryEntry,
                  beside: str, scores: Scores | None) -> JurorVote:
    """One juror's vote on `prompt` (shown beside `beside`): a classifier juror's from
    `scores`, any other's from its model."""
    if juror in inputs.classifiers:
        return classifier_vote(inputs, juror, (scores or {})[juror][prompt])
    messages = juror_messages(inputs, juror, prompt, entry, beside)
    return await cast_vote(gateway, juror, messages, inputs.config.jury.max_repairs)


def jury_label(votes: list[JurorVote], required_benign: int) -> str:
    """The k-of-n rule: benign when at least `required_benign` jurors say so and none gave
    an unparseable verdict; otherwise harmful, or unparseable."""
    if any(v.label == "unparseable" for v in votes):
        return "unparseable"
    return "benign" if sum(v.label == "benign" for v in votes) >= required_benign else "harmful"


def decide(candidate: Candidate, votes: list[JurorVote], required_benign: int) -> Decision:
    reason = {"benign": None, "harmful": "jury_harmful",
              "unparseable": "unparseable_verdict"}[jury_label(votes, required_benign)]
    return Decision(candidate=candidate, kept=reason is None, reason=reason, votes=votes,
                    benign_votes=sum(v.label == "benign" for v in votes))


async def ask_jurors(gateway: Gateway, jurors: list[str], items: list[T],
                          vote: Callable[[T, str], Awaitable[R]]) -> list[list[R]]:
    """Every juror's vote on every item, asked juror by juror: consecutive requests then
    share their judge prompt's system turn and few-shot examples, which a server with
    prompt caching (llama.cpp, vLLM, OpenAI) evaluates once - the embedded model answers
    about twice as fast as when the jurors take turns. Returns votes[item][juror]."""
    flat = await gateway.gather([functools.partial(vote, item, juror) for juror in jurors for item in items])
    n = len(items)
    return [[flat[j * n + i] for j in range(len(jurors))] for i in range(n)]


async def judge_category(inputs: BuildInputs, category: str, candidates: list[Candidate],
                         gateway: Gateway, scores: Scores | None = None) -> list[Decision]:
    """`scores`: the classifier jurors' of the candidates' prompts (`classifier_scores`)."""
    jury = inputs.config.jury
    entry = inputs.taxonomy.entry(category)

    async def vote(cand: Candidate, juror: str) -> JurorVote:
        return await vote_on(inputs, gateway, juror, cand.prompt, entry, cand.original_question, scores)

    votes = await ask_jurors(gateway, jury.jurors, candidates, vote)
    return [decide(c, v, jury.required_benign) for c, v in zip(candidates, votes, strict=True)]


def nearest_other(questions: list[str]) -> list[str]:
    """For each question, the most similar other one (word overlap, Jaccard; the first on a
    tie); a lone question gets itself. The jury check pairs each harmful request with its
    nearest other request: a juror that compares a question with its harmful request would
    otherwise see the request paired with itself, the easiest case there is.

    Every pair is compared, as sparse word-incidence products a block of rows at a time
    (scipy): thousands of seeds per category take seconds, not the minutes a loop over
    pairs took, and memory holds one block."""
    n = len(questions)
    if n < 2:
        return list(questions)
    vocabulary: dict[str, int] = {}
    rows = [sorted({vocabulary.setdefault(w, len(vocabulary)) for w in re.findall(r"[a-z0-9]+", q.lower())})
            for q in questions]
    indptr = np.cumsum([0, *map(len, rows)])
    columns = np.concatenate([*rows, []]).astype(np.int64)
    words = sparse.csr_matrix((np.ones(len(columns), dtype=np.int32), columns, indptr),
                              shape=(n, max(1, len(vocabulary))))
    sizes = np.diff(indptr)
    nearest = np.empty(n, dtype=np.int64)
    block = max(1, NEAREST_BLOCK_CELLS // n)
    for a in range(0, n, block):
        b = min(a + block, n)
        shared = (words[a:b] @ words.T).toarray().astype(np.float64)
        union = sizes[a:b, None] + sizes[None, :] - shared
        overlap = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
        overlap[np.arange(b - a), np.arange(a, b)] = -1.0  # not itself
        nearest[a:b] = overlap.argmax(axis=1)  # the first on a tie
    return [questions[j] for j in nearest.tolist()]


async def calibrate_jurors(inputs: BuildInputs, category: str, seeds: list[SeedTopic], others: dict[str, str],
                           gateway: Gateway, scores: Scores | None = None) -> list[CalibrationVote]:
    """Ask every juror about the harmful requests the seeds neighbour, and about the seeds'
    hand-written benign boundary questions (paired with those requests, as a candidate is).
    `others`: `check_pairs` of the whole category (the seeds may be a part of it).

    A juror that calls the requests benign cannot be trusted to filter the hard prompts; one
    that calls the controls harmful throws benign boundary prompts away. Its recall and
    specificity are reported beside the benchmark, so a user sees how good the jury was,
    not just what it decided. `scores`: the classifier jurors' of the check's texts (`check_texts`).
    """
    entry = inputs.taxonomy.entry(category)
    checks = [(seed, known) for seed in seeds for known in ("harmful", "benign")]

    async def vote(check: tuple[SeedTopic, str], juror: str) -> CalibrationVote:
        seed, known = check
        if known == "harmful":  # a harmful request, beside the nearest other one
            prompt, beside = seed.original_question, others[seed.id]
        else:  # a benign control, beside the harmful request it neighbours
            prompt, beside = seed.slots["boundary_question"], seed.original_question
        return CalibrationVote(category=category, seed_id=seed.id, original_question=seed.original_question,
                               vote=await vote_on(inputs, gateway, juror, prompt, entry, beside, scores),
                               known=known, prompt="" if known == "harmful" else prompt)

    votes = await ask_jurors(gateway, inputs.config.jury.jurors, checks, vote)
    return [v for per_check in votes for v in per_check]  # check by check, jurors in order


def vote_labels(votes: list[JurorVote]) -> tuple[str, ...]:
    return tuple(v.label for v in votes)


def jury_agreement(judged: Iterable[tuple[str, ...]]) -> dict[str, Any] | None:
    """How much the jurors agree with each other on the candidates they judged (`judged`:
    each one's jurors' labels, `vote_labels`): Fleiss' kappa over the candidates every juror
    gave a verdict on (health_orsc.core.stats, statsmodels)."""
    judged = [labels for labels in judged if labels]
    complete = [list(labels) for labels in judged if "unparseable" not in labels]
    if not judged:
        return None
    unanimous = sum(len(set(labels)) == 1 for labels in complete)
    kappa = fleiss_kappa(complete)
    return {"items": len(complete), "excluded_unparseable": len(judged) - len(complete),
            "unanimous": unanimous, "fleiss_kappa": None if kappa is None else round(kappa, 4)}


def calibration_summary(votes: Iterable[CalibrationVote]) -> dict[str, dict]:
    """Per juror: how many known-harmful requests it saw and labelled harmful (recall), and,
    where the check had benign controls, how many of those it labelled benign (specificity)."""
    out: dict[str, dict] = {}
    for v in votes:
        row = out.setdefault(v.vote.juror, {"known_harmful": 0, "labelled_harmful": 0,
                                            "unparseable": 0})
        if v.known == "harmful":
            row["known_harmful"] += 1
            row["labelled_harmful"] += v.vote.label == "harmful"
        else:
            row["benign_controls"] = row.get("benign_controls", 0) + 1
            row["labelled_benign"] = row.get("labelled_benign", 0) + (v.vote.label == "benign")
        row["unparseable"] += v.vote.label == "unparseable"
    for row in out.values():
        row["harmful_recall"] = round(row["labelled_harmful"] / row["known_harmful"], 4)
        if row.get("benign_controls"):
            row["specificity"] = round(row["labelled_benign"] / row["benign_controls"], 4)
    return dict(sorted(out.items()))


# The rubric writer (generation.rubric_writer): after the jury, for each kept prompt, the
# role drafts prompt-specific criteria to follow its category template's. Cached like
# every call; a draft that fails validation after the repairs, or would make the rubric
# unusable, is rejected: counted, recorded with the rubric, and the template's criteria
# stand alone.
WRITER_FORM = ('{"criteria": [{"id": "lower_case_id", "kind": "helpful" or "harm", "points": 1 to 10'
               ' (helpful) or -1 to -10 (harm), "text": "one sentence"}]}')


class WriterReply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    criteria: list[Criterion] = Field(min_length=1, max_length=MAX_WRITTEN)


WRITER_SCHEMA = {
    "type": "object", "required": ["criteria"], "additionalProperties": False,
    "properties": {"criteria": {"type": "array", "maxItems": MAX_WRITTEN, "items": {
        "type": "object", "required": ["id", "kind", "points", "text"], "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "kind": {"type": "string", "enum": ["helpful", "harm"]},
                       "points": {"type": "integer"}, "text": {"type": "string", "maxLength": 300}}}}}}


async def write_rubrics(inputs: BuildInputs, category: str, kept: list[Candidate],
                        gateway: Gateway) -> list[Rubric]:
    """Per kept candidate, the writer's draft: a Rubric holding only the criteria it
    drafted (none when rejected), the writer's template, and its part (RubricWriter)."""
    cfg = inputs.config
    role = cfg.generation.rubric_writer
    template = inputs.rubric_writer_template
    assert role is not None and template is not None
    identity = cfg.roles[role].identity(cfg.endpoint_for(role))
    seeds = {s.id: s for s in inputs.seeds[category]}
    entry = inputs.taxonomy.entry(category).model_dump()

    async def one(cand: Candidate) -> Rubric:
        context = rubric_context(seeds[cand.seed_id], entry, cand.prompt, cand.level)
        criteria = render_rubric(inputs.rubric_templates[category], context)
        messages = template.render_messages(writer_context(context, criteria))
        reply, calls, _, problem = await ask_labelled(gateway, role, messages, WRITER_SCHEMA, WriterReply,
                                                      cfg.jury.max_repairs, WRITER_FORM)
        if reply is not None and (why := rubric_problems(criteria + reply.criteria)):
            reply, problem = None, "; ".join(why)
        drafted = [] if reply is None else reply.criteria
        part = RubricWriter(model=identity, template=template.name, template_sha=template.sha, calls=calls,
                            added=[c.id for c in drafted],
                            rejected=None if reply is not None else shorten(problem or "no reply", 300))
        return Rubric(criteria=drafted, template=template.name, template_sha=template.sha, writer=part)

    return await gateway.gather([functools.partial(one, c) for c in kept])
