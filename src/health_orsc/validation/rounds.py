"""rounds: adaptive validation rounds, further labels only where an interval is still wide.

Round 1 is the snapshot's validation sample (validation_sample.csv), labelled and validated
into a validation snapshot. Round N (N >= 2) starts from the validation snapshot of round
N - 1: per stratum (source x category x level), the design-based interval of the benign share
(health_orsc.validation.validity.stratum_status) is compared with the target half-width; a
stratum still wider gets more items, drawn at random from its items never drawn before, as many
as its interval needs to narrow to the target (`further_items`), or all that are left. Each
round draws with its own RNG, seeded by (seed, round, stratum), so the draw is a function of
the snapshot and its labels: `orsc annotate --round N` writes it as tasks,
`orsc validate --round N` draws it again to check the labels, and `orsc verify` a third time.

The combined design: round k draws n_k of the R_k items of a stratum not drawn before, so an
item's probability of being in the union of rounds 1..k is p_k = p_(k-1) + (1 - p_(k-1)) n_k / R_k,
from its first-sample probability p_1 (build/sample.py). For a stratified first sample every
item of a stratum ends at (n_1 + ... + n_k) / N, a simple random sample of that size; the
estimates take the rounds' sizes as fixed (they depend on the labels of the rounds before, a
small departure the bench measures: bench/validity.py). A validation snapshot of round N holds
`validation/round_K_sample.csv` for K = 2..N (each item's union probability as of its round)
and every round's labels in `validation/labels.jsonl` (each row's `round`).

Example:
    draw = next_round(Path("outputs/snapshots/v1-validated"), 2, target=0.05)
    draw.picked   # the items to label in round 2
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from health_orsc.build.sample import first_probabilities, juror_thresholds, sampling_strata, seeded_subset
from health_orsc.core.config import BuildConfig, SampleConfig
from health_orsc.core.errors import InputError
from health_orsc.core.records import Decision, Sampled, SnapshotRow, stratum_key
from health_orsc.core.stats import sample_size
from health_orsc.snapshot.store import (
    REPORT_FILE,
    ROUND_SAMPLE,
    RUBRIC_REVIEWS_FILE,
    Manifest,
    load_manifest,
    read_jsonl_rows,
    read_sample,
)
from health_orsc.snapshot.writer import sample_csv, sample_record
from health_orsc.validation.labels import LabelSet
from health_orsc.validation.rubric_review import ReviewRow


@dataclass
class RoundDraw:
    """Round `round`'s further items (`picked`, each with its union probability after this
    round) and what decided them: per stratum, its status before the round and the items drawn."""
    round: int
    target: float
    aggregate: str               # how the earlier rounds' labels made each item's label
    strata: list[dict[str, Any]]
    picked: list[Sampled]

    def record(self) -> dict[str, Any]:
        """What the report keeps of the draw, enough for verify to draw it again."""
        return {"round": self.round, "target_halfwidth": self.target, "aggregate": self.aggregate,
                "drawn": {s["stratum"]: s["drawn"] for s in self.strata if s["drawn"]}}


def stratum_of(row: dict[str, str]) -> str:
    return stratum_key(row["source"], row["category"], row["level"] or None)


def rounds_in(snapshot: Path) -> int:
    """The rounds a validation snapshot's labels cover (0: not a validation snapshot)."""
    if load_manifest(snapshot).kind != "validation":
        return 0
    n = 1
    while (snapshot / ROUND_SAMPLE.format(n + 1)).is_file():
        n += 1
    return n


def read_rounds(snapshot: Path) -> list[list[dict[str, str]]]:
    """Each round's items as its file records them: validation_sample.csv, then round 2's..."""
    rounds = [read_sample(snapshot)]
    while (path := snapshot / ROUND_SAMPLE.format(len(rounds) + 1)).is_file():
        with path.open(encoding="utf-8", newline="") as fh:
            rounds.append(list(csv.DictReader(fh)))
    return rounds


def _chain(p: float, qs: list[float]) -> float:
    for q in qs:
        p = p + (1 - p) * q
    return p


def round_rates(rounds: list[list[dict[str, str]]], population: Counter[str]) -> dict[str, list[float]]:
    """Per stratum, each later round's draw rate n_k / R_k (index 0: round 2)."""
    counts = [Counter(stratum_of(s) for s in r) for r in rounds]
    rates: dict[str, list[float]] = {}
    for h in population:
        before, rates[h] = counts[0][h], []
        for c in counts[1:]:
            rates[h].append(c[h] / (population[h] - before) if c[h] else 0.0)
            before += c[h]
    return rates


def combined_sample(rounds: list[list[dict[str, str]]], population: Counter[str]) -> list[dict[str, str]]:
    """The items of all rounds, each with its `round` and its probability of being in the
    union of the rounds (`inclusion_probability`; module docstring). `population`: each
    stratum's size (validity.stratum_sizes)."""
    rates = round_rates(rounds, population)
    first = Counter(stratum_of(s) for s in rounds[0])
    out = []
    for k, rows in enumerate(rounds):
        for s in rows:
            h = stratum_of(s)
            recorded = s.get("inclusion_probability")
            try:
                p = float(recorded) if recorded else first[h] / population[h]  # before schema 5: n/N
            except ValueError:  # left as it is: the report names the row (validity.sample_units)
                out.append({**s, "round": str(k + 1)})
                continue
            out.append({**s, "round": str(k + 1),
                        "inclusion_probability": repr(_chain(p, rates[h][k:]))})
    return out


def further_items(status: dict[str, Any], target: float, confidence: float) -> int:
    """How many more items a stratum needs for its interval's half-width to reach `target`.
    The interval is Korn-Graubard's with the effective sample size truncated at the items
    decided (health_orsc.core.survey), so its half-width h at m decided items shrinks as
    1/sqrt(m), whatever the stratum's size: m (h / target)^2 items in all (conservative
    near 0 and 1, where it narrows faster), never more than the stratum, which taken whole
    is known exactly. A stratum nobody decided is sized for a share of one half
    (health_orsc.core.stats.sample_size)."""
    size, decided, halfwidth = status["population"], status["decided"], status["halfwidth"]
    if not decided or not halfwidth:
        return max(sample_size(size, 0.5, target, confidence) - decided, 1)
    return max(math.ceil(decided * (halfwidth / target) ** 2) - decided, 1)


def draw_round(decisions: list[Decision], cfg: SampleConfig, thresholds: dict[str, float],
               categories: list[str], sample: list[dict[str, str]], decided: dict[str, str | None],
               target: float, n: int, aggregate: str) -> RoundDraw:
    """Round `n`'s draw from `decisions` (as before any gate; `cfg` the sample settings they
    were first sampled by, `thresholds` the score jurors', build/sample.py) given the rounds
    so far (`sample`, combined) and their items' labels (`decided`)."""
    from health_orsc.validation.validity import sample_units, stratum_sizes, stratum_status

    sizes = stratum_sizes(decisions)
    units = sample_units(sizes, sample, decided)
    status = {s["stratum"]: s for s in stratum_status(units, cfg.confidence, target)}
    rates = round_rates([[s for s in sample if s["round"] == str(k)] for k in range(1, n)], sizes)
    drawn_before = {s["id"] for s in sample}
    strata, picked = [], []
    for (source, category, level), members in sampling_strata(decisions, cfg, categories):
        h = stratum_key(source, category, level)
        st = status.get(h) or {"stratum": h, "population": len(members), "sampled": 0, "decided": 0,
                               "benign": None, "halfwidth": None, "met": False}
        left = [d for d in members if d.candidate.id not in drawn_before]
        extra = 0
        if not st["met"] and left:
            extra = min(len(left), further_items(st, target, cfg.confidence))
            chosen = seeded_subset(left, extra, f"{cfg.seed}:round{n}:{h}", lambda d: d.candidate.id)
            first = first_probabilities(members, source == "kept", cfg, thresholds)
            q = extra / len(left)
            picked += [Sampled(d, h, _chain(first[d.candidate.id], [*rates[h], q])) for d in chosen]
        strata.append({**st, "drawn": extra})
    return RoundDraw(round=n, target=target, aggregate=aggregate, strata=strata, picked=picked)


@dataclass
class Predecessor:
    """A validation snapshot that a round follows, read."""
    manifest: Manifest
    config: BuildConfig
    rows: list[SnapshotRow]              # as before any gate
    sample: list[dict[str, str]]         # its rounds' items, combined
    report: dict[str, Any]


def read_predecessor(snapshot: Path, n: int) -> Predecessor:
    """The validation snapshot round `n` follows; InputError unless it holds rounds 1..n-1."""
    from health_orsc.snapshot.compat import recorded_config
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.validation.validity import stratum_sizes, ungated

    done = rounds_in(snapshot)
    if done == 0:
        raise InputError(snapshot, "--round", f"round {n} follows round {n - 1}'s labels, and"
                         f" {snapshot.name} holds none (it is not a snapshot `orsc validate` wrote)",
                         f"validate round {n - 1} first, then pass the snapshot that wrote")
    if n != done + 1:
        raise InputError(snapshot, "--round", f"{snapshot.name} holds the labels of round"
                         f"{'s 1-' if done > 1 else ' '}{done}, so the next round is {done + 1}, not {n}",
                         f"pass --round {done + 1}")
    manifest = load_manifest(snapshot)
    rows = ungated(read_rows(snapshot))
    return Predecessor(manifest=manifest, config=recorded_config(manifest), rows=rows,
                       sample=combined_sample(read_rounds(snapshot), stratum_sizes(rows)),
                       report=json.loads((snapshot / REPORT_FILE).read_text(encoding="utf-8")))


def round_target(pred: Predecessor, given: float | None) -> float:
    """The half-width round N aims at: `--target-halfwidth`, else the last round's, else the
    config's `sample.target_halfwidth`."""
    draws = (pred.report.get("rounds") or {}).get("draws") or []
    target = given if given is not None else (
        draws[-1]["target_halfwidth"] if draws else pred.config.sample.target_halfwidth)
    if target is None:
        raise InputError(None, "--target-halfwidth", "the snapshot's sample was sized by"
                         " sample.per_stratum, so there is no half-width to aim at",
                         "pass --target-halfwidth, e.g. 0.05 for +-5 points")
    if not 0 < target < 0.5:
        raise InputError(None, "--target-halfwidth", f"{target} is not a half-width of a share",
                         "pass a number above 0 and below 0.5, e.g. 0.05")
    return target


def next_round(snapshot: Path, n: int, target: float | None) -> tuple[Predecessor, RoundDraw]:
    """Round `n`'s draw after the validation snapshot `snapshot` (of round n - 1)."""
    from health_orsc.validation.validity import aggregate_of, decided_labels

    pred = read_predecessor(snapshot, n)
    aggregate = aggregate_of(pred.report)
    decided = decided_labels(snapshot, pred.report)
    draw = draw_round([r.to_decision() for r in pred.rows], pred.config.sample,
                      juror_thresholds(pred.config), pred.manifest.categories, pred.sample, decided,
                      round_target(pred, target), n, aggregate)
    return pred, draw


def sample_rows(picked: list[Sampled]) -> list[dict[str, str]]:
    """A round's items as its sample file records them (the rows `orsc annotate` shows)."""
    return [sample_record(s) for s in picked]


@dataclass
class LaterRound:
    """What `orsc validate --round N` writes, gathered: the rows (as before any gate), every
    round's items combined and labels, the draws so far, the earlier rounds' rubric reviews
    and the later rounds' sample files."""
    rows: list[SnapshotRow]
    sample: list[dict[str, str]]
    labels: LabelSet
    draws: list[dict[str, Any]]
    aggregate: str
    reviews: list[ReviewRow]
    files: dict[str, str]


def later_round(snapshot: Path, n: int, target: float | None,
                read: Callable[[set[str]], LabelSet]) -> LaterRound:
    """Round `n` after the validation snapshot `snapshot`: its draw, its labels (`read`, given
    the drawn ids) joined to the earlier rounds', and everything the new snapshot holds."""
    from health_orsc.validation.validity import stored_labels, stratum_sizes, with_counts

    pred, draw = next_round(snapshot, n, target)
    if not draw.picked:
        raise InputError(snapshot, "--round", f"every stratum of {snapshot.name} meets"
                         f" +-{draw.target:g}, so round {n} draws no item to label",
                         "use the snapshot as it is, or pass a smaller --target-halfwidth")
    new = read({s.decision.candidate.id for s in draw.picked})
    prior = with_counts(stored_labels(snapshot).rows, pred.report)
    labels = LabelSet(rows=sorted([*prior.rows, *(r.model_copy(update={"round": n}) for r in new.rows)],
                                  key=lambda r: (r.prompt_id, r.annotator)),
                      unlabelled=prior.unlabelled + new.unlabelled, cancelled=prior.cancelled + new.cancelled,
                      repeated=prior.repeated + new.repeated, files=[*prior.files, *new.files])
    files = {ROUND_SAMPLE.format(k): (snapshot / ROUND_SAMPLE.format(k)).read_text(encoding="utf-8")
             for k in range(2, n)}
    files[ROUND_SAMPLE.format(n)] = sample_csv(draw.picked)
    reviews_file = snapshot / RUBRIC_REVIEWS_FILE
    reviews = ([ReviewRow.model_validate(r) for r in read_jsonl_rows(reviews_file)]
               if reviews_file.is_file() else [])
    return LaterRound(rows=pred.rows, labels=labels, aggregate=draw.aggregate,
                      sample=combined_sample([*read_rounds(snapshot), sample_rows(draw.picked)],
                                             stratum_sizes(pred.rows)),
                      draws=[*(pred.report.get("rounds") or {}).get("draws", []), draw.record()],
                      reviews=reviews, files=files)


def check_rounds(rows: list[SnapshotRow], cfg: BuildConfig, categories: list[str],
                 rounds: list[list[dict[str, str]]], labels: LabelSet, draws: list[Any]) -> list[str]:
    """verify: each later round's file is the draw that the rounds before it, their labels and
    the report's record of the draw (`draws`) give."""
    from health_orsc.validation.validity import by_item, item_labels, stratum_sizes

    if len(draws) != len(rounds) - 1:
        return [f"{REPORT_FILE} records {len(draws)} later rounds' draws, the snapshot has"
                f" {len(rounds) - 1} round files"]
    sizes = stratum_sizes(rows)
    decisions = [r.to_decision() for r in rows]
    for k, record in enumerate(draws, start=2):
        file = ROUND_SAMPLE.format(k)
        earlier = LabelSet(rows=[r for r in labels.rows if r.round < k])
        try:
            decided, _ = item_labels(by_item(earlier), record["aggregate"])
            draw = draw_round(decisions, cfg.sample, juror_thresholds(cfg), categories,
                              combined_sample(rounds[:k - 1], sizes), decided, record["target_halfwidth"], k,
                              record["aggregate"])
        except (KeyError, TypeError) as err:
            return [f"{REPORT_FILE}: round {k}'s draw is malformed ({err})"]
        if draw.record() != record:
            return [f"{REPORT_FILE}: round {k}'s draw is not what the rounds before it give"]
        expected = [(s.decision.candidate.id, s.stratum, s.probability_text) for s in draw.picked]
        found = [(r.get("id"), r.get("stratum"), r.get("inclusion_probability")) for r in rounds[k - 1]]
        if found != expected:
            return [f"{file} is not round {k}'s draw from the rounds before it"]
    late = sorted(r.prompt_id for r in labels.rows
                  if r.round > len(rounds) or r.prompt_id not in {s["id"] for s in rounds[r.round - 1]})
    if late:
        return [f"labels name items outside the round they are of ({', '.join(late[:3])})"]
    return []
