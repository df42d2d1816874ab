"""bench/validity.py: how many labels the validity report needs, per sample design.

A simulation at paper scale, with a ground truth we know: 31,920 candidates, 7 categories x
3 levels of 1,520, harmful with probability 0.05 / 0.15 / 0.35 (easy / medium / hard). One
score juror sees each candidate: its score is N(0, 1) for a benign one and N(mu, 1) for a
harmful one, mu set so its AUROC is `--auroc` (0.85), and it rejects at score >= 1.0 (its
P(harmful) = logistic(1.5 (score - 1)), threshold 0.5). The validation sample is drawn by
the package's own code (health_orsc.build.sample) and estimated by it (health_orsc.core.survey),
with people's labels = the truth.

For each design (`stratified`, `uncertainty`) and each size per stratum on a grid, `--draws`
repeated samples (seeds 0..draws-1) give the mean 95% half-width of each category's
design-weighted benign precision, of the share of the jury's rejections that are benign
(its false rejections), and how often the intervals covered the truth. The labels a design
needs for +-5 points is the smallest grid size at which every category's mean half-width
(or the rejections' one) is at most 0.05, times the strata.

Then the per-stratum goal (`--round-draws` repeated samples): every stratum's benign share
to +-5 points, as `sample.target_halfwidth` promises, by one sample sized by it, by one
sample of 385 per stratum (enough whatever the share), and by a pilot round (`--pilot`)
followed by adaptive rounds (health_orsc.validation.rounds): labels, rounds, and the share of
strata that meet the target and whose interval covers the truth.

    python bench/validity.py --draws 100 --grid 20,30,40,50,60,80,110   # ~10 minutes
    python bench/validity.py --draws 5 --grid 40,80 --round-draws 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from statistics import NormalDist, mean

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from health_orsc.build.sample import stratified_sample  # noqa: E402
from health_orsc.core.config import SampleConfig  # noqa: E402
from health_orsc.core.records import LEVELS, Candidate, Decision, JurorVote, stratum_key  # noqa: E402
from health_orsc.core.survey import Survey, Unit  # noqa: E402
from health_orsc.validation.rounds import combined_sample, draw_round, sample_rows  # noqa: E402
from health_orsc.validation.validity import sample_units, stratum_sizes, stratum_status  # noqa: E402

CATEGORIES = ["self_harm", "drug_abuse", "medical_misinformation", "unqualified_medical_advice",
              "health_privacy", "mental_abuse", "biological_chemical_harm"]
PER_STRATUM = 1_520
HARMFUL = {"easy": 0.05, "medium": 0.15, "hard": 0.35}
CUT = 1.0
TARGET = 0.05


def population(auroc: float, seed: int = 0) -> tuple[list[Decision], dict[str, bool]]:
    """The candidates as the jury decided them, and which are truly harmful."""
    rng = random.Random(seed)
    mu = math.sqrt(2) * NormalDist().inv_cdf(auroc)
    decisions, harmful = [], {}
    for c in CATEGORIES:
        for level in LEVELS:
            for i in range(PER_STRATUM):
                cid = f"{c[:4]}{level[0]}{i:05d}"
                bad = rng.random() < HARMFUL[level]
                score = rng.gauss(mu if bad else 0.0, 1.0)
                p = 1 / (1 + math.exp(-1.5 * (score - CUT)))
                kept = score < CUT
                cand = Candidate(id=cid, category=c, level=level, seed_id=None, seed_topic=None,
                                 seed_source=None, original_question=None, template=None, template_sha=None,
                                 template_text=None, variant=0, prompt=cid, generator=None,
                                 generator_params=None, generation_call=None)
                vote = JurorVote(juror="judge", model="m", judge_prompt="p", rationale="", calls=[],
                                 repairs=0, p_harmful=p, label="benign" if kept else "harmful")
                decisions.append(Decision(candidate=cand, kept=kept, reason=None if kept else "jury_harmful",
                                          votes=[vote]))
                harmful[cid] = bad
    return decisions, harmful


def estimates(decisions: list[Decision], harmful: dict[str, bool], design: str, n: int,
              seed: int) -> dict[str, tuple[float, float, float, int]]:
    """(estimate, low, high, labels) per category's precision and for the rejections."""
    cfg = SampleConfig(per_stratum=n, design=design, seed=seed)
    picked = stratified_sample(decisions, cfg, CATEGORIES, {"judge": 0.5})
    sizes: dict[str, int] = {}
    for d in decisions:
        key = f"{d.source}:{d.candidate.category}:{d.candidate.level}"
        sizes[key] = sizes.get(key, 0) + 1
    units = [Unit(id=s.decision.candidate.id, stratum=s.stratum, population=sizes[s.stratum],
                  probability=s.probability, values={"benign": int(not harmful[s.decision.candidate.id])},
                  domains={"category": s.decision.candidate.category, "source": s.decision.source})
             for s in picked]
    survey = Survey(units)
    out = {}
    for c in CATEGORIES:
        e = survey.share("benign", {"source": "kept", "category": c})
        out[c] = (e.estimate, e.low, e.high, sum(u.domains["source"] == "kept" for u in units))
    e = survey.share("benign", {"source": "rejected"})
    out["rejections"] = (e.estimate, e.low, e.high, sum(u.domains["source"] == "rejected" for u in units))
    return out


# One sample that reaches +-5 points in every stratum whatever its share: 385 items (a share
# of one half; the report's Korn-Graubard interval takes no credit for a finite population).
SAFE_PER_STRATUM = 385


def per_stratum_goal(decisions: list[Decision], harmful: dict[str, bool], seed: int, pilot: float,
                     max_rounds: int) -> dict[str, dict]:
    """Every stratum's benign share to +-TARGET, three ways: one sample sized by
    `sample.target_halfwidth: TARGET` (at the config's expected shares, 0.9 kept and 0.5
    rejected); one sample of SAFE_PER_STRATUM per stratum (`sample.per_stratum`); and a pilot
    sized for +-`pilot` followed by rounds at TARGET (health_orsc.validation.rounds) until
    every stratum meets it or `max_rounds`. Per design: labels, rounds, strata meeting the
    target, strata whose interval covers its true share, and the categories' and rejections'
    estimates (estimate, low, high)."""
    sizes = stratum_sizes(decisions)
    members: dict[str, list[str]] = {}
    for d in decisions:
        members.setdefault(stratum_key(d.source, d.candidate.category, d.candidate.level), []).append(
            d.candidate.id)
    real = {h: sum(not harmful[i] for i in ids) / len(ids) for h, ids in members.items()}
    label = {i: "harmful" if bad else "benign" for i, bad in harmful.items()}
    out = {}
    designs = {"target_halfwidth": SampleConfig(target_halfwidth=TARGET, seed=seed),
               "per_stratum_385": SampleConfig(per_stratum=SAFE_PER_STRATUM, seed=seed),
               "rounds": SampleConfig(target_halfwidth=pilot, seed=seed)}
    for design, cfg in designs.items():
        rounds = [sample_rows(stratified_sample(decisions, cfg, CATEGORIES, {"judge": 0.5}))]
        while design == "rounds" and len(rounds) < max_rounds:
            sample = combined_sample(rounds, sizes)
            draw = draw_round(decisions, cfg, {"judge": 0.5}, CATEGORIES, sample, label, TARGET,
                              len(rounds) + 1, "majority")
            if not draw.picked:
                break
            rounds.append(sample_rows(draw.picked))
        sample = combined_sample(rounds, sizes)
        units = sample_units(sizes, sample, label)
        status = stratum_status(units, 0.95, TARGET)
        survey = Survey(units)
        figures = {c: survey.share("benign", {"source": "kept", "category": c}) for c in CATEGORIES}
        figures["rejections"] = survey.share("benign", {"source": "rejected"})
        out[design] = {
            "labels": len(sample), "rounds": len(rounds), "strata": len(status),
            "kept_labels": sum(r["source"] == "kept" for r in sample),
            "met": sum(st["met"] for st in status),
            # a stratum taken whole is known exactly (its figures rounded to 6 decimals)
            "covered": sum(st["benign"]["low"] - 1e-6 <= real[st["stratum"]] <= st["benign"]["high"] + 1e-6
                           for st in status),
            "estimates": {k: (e.estimate, e.low, e.high) for k, e in figures.items()}}
    return out


def summarise_goal(runs: list[dict[str, dict]], real: dict[str, float]) -> dict[str, dict]:
    """Per design, over the draws: mean labels and rounds, the share of strata meeting the
    target and covering their truth, and the categories' and rejections' mean half-width
    and coverage."""
    out = {}
    for design in runs[0]:
        got = [r[design] for r in runs]
        strata = sum(g["strata"] for g in got)
        figures = {}
        for key in [*CATEGORIES, "rejections"]:
            ests = [g["estimates"][key] for g in got]
            figures[key] = {"halfwidth": round(mean((hi - lo) / 2 for _, lo, hi in ests), 4),
                            "covered": round(sum(lo <= real[key] <= hi for _, lo, hi in ests) / len(ests), 3)}
        out[design] = {"labels": round(mean(g["labels"] for g in got), 1),
                       "labels_max": max(g["labels"] for g in got),
                       "kept_labels": round(mean(g["kept_labels"] for g in got), 1),
                       "rounds": round(mean(g["rounds"] for g in got), 2),
                       "strata_met": round(sum(g["met"] for g in got) / strata, 3),
                       "strata_covered": round(sum(g["covered"] for g in got) / strata, 3),
                       "figures": figures}
    return out


def truth(decisions: list[Decision], harmful: dict[str, bool]) -> dict[str, float]:
    out = {}
    for c in CATEGORIES:
        kept = [d for d in decisions if d.kept and d.candidate.category == c]
        out[c] = sum(not harmful[d.candidate.id] for d in kept) / len(kept)
    rejected = [d for d in decisions if not d.kept]
    out["rejections"] = sum(not harmful[d.candidate.id] for d in rejected) / len(rejected)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--auroc", type=float, default=0.85)
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--grid", default="10,15,20,30,40,60,80,110,150")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "validity.json"))
    ap.add_argument("--round-draws", type=int, default=20,
                    help="repeated samples for the per-stratum goal (one sample against rounds)")
    ap.add_argument("--pilot", type=float, default=0.1,
                    help="the half-width the first round of the rounds design is sized for")
    ap.add_argument("--max-rounds", type=int, default=5)
    args = ap.parse_args(argv)
    grid = [int(x) for x in args.grid.split(",")]
    started = time.monotonic()
    decisions, harmful = population(args.auroc)
    real = truth(decisions, harmful)
    kept_strata = len({(d.candidate.category, d.candidate.level) for d in decisions if d.kept})
    rejected_strata = len({(d.candidate.category, d.candidate.level) for d in decisions if not d.kept})
    rows = []
    for design in ("stratified", "uncertainty"):
        for n in grid:
            runs = [estimates(decisions, harmful, design, n, seed) for seed in range(args.draws)]
            row = {"design": design, "per_stratum": n}
            for key in [*CATEGORIES, "rejections"]:
                got = [r[key] for r in runs]
                half = [(hi - lo) / 2 for _, lo, hi, _ in got if lo is not None]
                row[key] = {"halfwidth": round(mean(half), 4) if half else None,
                            "covered": round(sum(lo is not None and lo <= real[key] <= hi
                                                 for _, lo, hi, _ in got) / len(got), 3),
                            "bias": round(mean(e for e, *_ in got if e is not None) - real[key], 4),
                            "labels": round(mean(r[3] for r in got), 1)}
            rows.append(row)
            print(json.dumps({k: (v if not isinstance(v, dict) else v["halfwidth"]) for k, v in row.items()}),
                  flush=True)

    def needed(design: str, keys: list[str], strata: int) -> dict | None:
        for row in rows:
            if row["design"] == design and all(row[k]["halfwidth"] is not None
                                               and row[k]["halfwidth"] <= TARGET for k in keys):
                return {"per_stratum": row["per_stratum"], "labels": row["per_stratum"] * strata,
                        "coverage": min(row[k]["covered"] for k in keys)}
        return None

    goal_runs = []
    for seed in range(args.round_draws):
        goal_runs.append(per_stratum_goal(decisions, harmful, seed, args.pilot, args.max_rounds))
        last = goal_runs[-1]
        print(json.dumps({d: {k: v for k, v in g.items() if k != "estimates"} for d, g in last.items()}),
              flush=True)
    goal = summarise_goal(goal_runs, real)
    summary = {d: {"precision": needed(d, CATEGORIES, kept_strata),
                   "false_rejections": needed(d, ["rejections"], rejected_strata)}
               for d in ("stratified", "uncertainty")}
    result = {"candidates": len(decisions), "kept": sum(d.kept for d in decisions), "auroc": args.auroc,
              "harmful_rate": HARMFUL, "truth": {k: round(v, 4) for k, v in real.items()},
              "draws": args.draws, "target_halfwidth": TARGET, "rows": rows, "needed": summary,
              "per_stratum_goal": {"draws": args.round_draws, "pilot_halfwidth": args.pilot,
                                   "max_rounds": args.max_rounds, "designs": goal},
              "seconds": round(time.monotonic() - started, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    brief = {d: {k: v for k, v in g.items() if k != "figures"} for d, g in goal.items()}
    print(json.dumps({"needed": summary, "per_stratum_goal": brief}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
