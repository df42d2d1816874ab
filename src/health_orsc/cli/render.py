"""How each command's result reads on a terminal: one renderer per result model. `--json`
prints the same models instead (cli.common.emit)."""

from __future__ import annotations

import sys

from rich.table import Table

from health_orsc.cli.common import console
from health_orsc.core.records import STRATUM_LEVELS, stratum_level


def _num(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def build(result, budget: str) -> None:
    table = Table(title="build-benchmark: candidates per category x level")
    for col in ("category", "level", "generated", "usable", "off topic", "after dedup", "after jury"):
        table.add_column(col, justify="left" if col in ("category", "level") else "right")
    totals = [0, 0, 0, 0, 0]
    for row in result.summary:
        nums = [row.generated, row.usable, row.off_topic, row.after_dedup, row.after_jury]
        totals = [a + b for a, b in zip(totals, nums, strict=True)]
        table.add_row(row.category, row.level, *map(str, nums))
    table.add_row("total", "", *map(str, totals), style="bold")
    console.print(table)
    console.print(f"model calls: {sum(result.model_calls.values())} (request cache hits:"
                  f" {sum(result.cache_hits.values())}; stage tasks from Prefect's cache:"
                  f" {result.stage_tasks_cached} of {result.stage_tasks})")
    for juror, c in result.jury_calibration.items():
        controls = (f"; {c['labelled_benign']} of {c['benign_controls']} benign controls benign"
                    f" ({c['specificity']:.0%})" if c.get("benign_controls") else "")
        console.print(f"jury check: {juror} labelled {c['labelled_harmful']} of {c['known_harmful']}"
                      f" known-harmful seed requests harmful ({c['harmful_recall']:.0%}){controls}")
    console.print(budget)
    console.print(f"snapshot: {result.snapshot} ({result.digest})")


def evaluation(result) -> None:
    from health_orsc.evaluation.report import LEADERBOARD_COLUMNS, leaderboard_cells, leaderboard_warnings

    table = Table(title="leaderboard (benign prompts: over-refusal; contrast set: harmful compliance)")
    for col in LEADERBOARD_COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in result.leaderboard:
        table.add_row(*leaderboard_cells(row))
    console.print(table)
    graded = [r for r in result.leaderboard if "safe_completion_score" in r]
    if graded:  # runs that graded rubrics
        sc = Table(title="Safe Completion, graded against each prompt's rubric")
        for col in ("model", "score (95% CI)", "safe completions", "crossed into harm",
                    "Wilcoxon p vs above"):
            sc.add_column(col, justify="left" if col == "model" else "right")
        for r in graded:
            low, high = r["safe_completion_score_low"], r["safe_completion_score_high"]
            ci = "" if low is None else f" ({low:.2f}-{high:.2f})"
            p = r.get("score_wilcoxon_p")
            sc.add_row(r["model"], _num(r["safe_completion_score"]) + ci,
                       _num(r["graded_safe_completion"], ".1%"), _num(r["harm"], ".1%"),
                       "" if p is None else f"{p:.3g}")
        console.print(sc)
    for line in leaderboard_warnings(result.leaderboard):
        console.print(line, style="bold yellow")
    console.print(f"model calls: {sum(result.model_calls.values())} (request cache hits:"
                  f" {sum(result.cache_hits.values())})")
    console.print(f"evaluation: {result.run}")


def grade(report) -> None:
    console.print(f"graded {report.items} answers ({report.ungraded} the grader could not grade);"
                  f" model calls: {report.model_calls} (request cache hits: {report.cache_hits})")
    if not report.labelled:
        console.print("no `label` column: nothing to compare with"
                      " (add people's labels to measure the grader)")
        return
    for who in ("grader", "detector"):
        m = getattr(report, who)
        table = Table(title=f"{who} against {m.n} people's labels: accuracy {_num(m.accuracy)},"
                            f" Cohen's kappa {_num(m.kappa)}")
        for col in ("people \\ " + who, *m.labels, "precision", "recall", "F1", "support"):
            table.add_column(col, justify="left" if col.startswith("people") else "right")
        for label, row in zip(m.labels, m.confusion, strict=True):
            c = m.per_class[label]
            table.add_row(label, *map(str, row), *(_num(x) for x in (c.precision, c.recall, c.f1)),
                          str(c.support))
        console.print(table)


def rubric_grade(report) -> None:
    console.print(f"graded {report.criteria} criteria of {report.items} answers against people's judgements"
                  f" ({report.ungraded} criteria the grader could not grade); model calls:"
                  f" {report.model_calls} (request cache hits: {report.cache_hits})")
    table = Table(title="rubric grader against people, met / not met per criterion")
    for col in ("criteria", "n", "people met", "grader met", "accuracy", "Cohen's kappa", "macro F1"):
        table.add_column(col, justify="left" if col == "criteria" else "right")
    for kind, m in report.by_kind.items():
        (tp, fn), (fp, _) = m.confusion
        table.add_row(kind, str(m.n), str(tp + fn), str(tp + fp), _num(m.accuracy), _num(m.kappa),
                      _num(m.macro_f1))
    console.print(table)
    for what, m in (("harm (any harm criterion met)", report.harm),
                    (f"safe completion by the rubric (no harm, score >= {report.safe_completion_min})",
                     report.safe)):
        console.print(f"answers, {what}: agree on {_num(m.accuracy)} of {m.n}, Cohen's kappa {_num(m.kappa)}")
    apart = [a for a in report.answers if a.disagree]
    if apart:
        console.print(f"{len(apart)} answers with a criterion judged differently, e.g. "
                      + "; ".join(f"{a.id}: {', '.join(a.disagree)}" for a in apart[:5]))


def probe(report) -> None:
    console.print(f"{report.items} answers graded as they are ({report.baseline_ungraded} could not be"
                  f" graded) and as perturbed copies; grader {report.grader['model']}; model calls:"
                  f" {report.model_calls} (request cache hits: {report.cache_hits})")
    table = Table(title="the rubric grader under manipulation: verdict flips per perturbation")
    for col in ("perturbation", "answers", "verdict flips", "95% CI", "toward safe", "harm hidden",
                "criteria flipped"):
        table.add_column(col, justify="left" if col == "perturbation" else "right")
    for name, r in report.perturbations.items():
        f = r.verdict_flips
        table.add_row(name, str(r.compared), f"{f.count} ({_num(f.share, '.0%')})",
                      f"{_num(f.low, '.0%')}-{_num(f.high, '.0%')}", str(r.toward_safe), str(r.harm_hidden),
                      f"{r.criteria_flips} of {r.criteria}")
    console.print(table)
    console.print(f"written to {report.written_to}")


def verify(report, expected_digest: bool) -> None:
    if report.problems:  # on stderr, as a failure is
        print(f"FAILED {report.snapshot}" + (f" (digest {report.digest})" if report.digest else ""),
              file=sys.stderr)
        for p in report.problems:
            print(f"  {p}", file=sys.stderr)
        return
    console.print(f"OK {report.snapshot}: every checksum and count in MANIFEST.json matches"
                  + (" the expected digest" if expected_digest else ""))
    console.print(f"digest: {report.digest}")


def annotation(result) -> None:
    if result.round > 1:
        console.print(f"round {result.round}: {result.strata_wide} strata still wider than"
                      f" +-{result.target_halfwidth:g}, {result.strata_met} meet it")
        if not result.items:
            console.print(f"nothing to label: round {result.round} draws no item, and nothing was written")
            return
    console.print(f"{result.items} items for {result.annotators} annotators: {result.shared} labelled by"
                  f" every one, {result.items - result.shared} by one each; {result.labels} labels in all")
    if result.rubric_reviews:
        console.print(f"and {result.rubric_reviews} rubric reviews of kept prompts (*.rubrics.*): they show"
                      " which prompts were kept, so hand them out after the labels are in")
    for f in result.files:
        console.print(f"  {f}")


def validation(result) -> None:
    report = result.report
    lab, p = report.labels, report.precision
    console.print(f"{lab.rows} labels of {lab.items} items by {len(lab.annotators)} annotators"
                  f" (skipped: {lab.unlabelled} unlabelled, {lab.cancelled} cancelled;"
                  f" {lab.undecided} items undecided)")
    conf = f"{report.confidence:.0%}"
    w = report.weighted
    table = Table(title=f"benign precision of kept prompts ({conf} CI: Wilson per stratum"
                        f"{', design-weighted per category and overall' if w else ''})")
    for col in ("category", "level", "kept", "labelled", "precision", f"{conf} CI", "harmful left"):
        table.add_column(col, justify="left" if col in ("category", "level") else "right")

    def add(fig: dict, category: str, level: str, weighted: dict | None = None, **style) -> None:
        q, h = fig["precision"], fig["harmful_left"]
        if weighted is not None:
            q, h = weighted["precision"], weighted["harmful_left"]
            share = "-" if q["estimate"] is None else f"{q['estimate']:.1%}"
        else:
            share = "-" if not q["n"] else f"{q['share']:.1%}"
        interval = "-" if q["low"] is None else f"{q['low']:.1%}-{q['high']:.1%}"
        left = "-" if h is None else f"{h['estimate']:g} ({_num(h['low'], 'g')}-{_num(h['high'], 'g')})"
        table.add_row(category, level, str(fig["kept"]), str(fig["labelled"]), share, interval, left, **style)

    for s in p["strata"]:
        add(s, s["category"], stratum_level(s["level"]))
    for i, c in enumerate(p["categories"]):
        add(c, c["category"], "all", w["precision"]["categories"][i] if w else None)
    add(p["overall"], "overall", "", w["precision"]["overall"] if w else None, style="bold")
    console.print(table)
    if w and w["jury"]:
        j = w["jury"]

        def pct(e: dict) -> str:
            return _num(e["estimate"], ".1%")

        console.print(f"jury, design-weighted: {pct(j['rejections_benign']['share'])} of its rejections"
                      f" benign; rejected {pct(j['false_rejection_rate'])} of benign prompts, kept"
                      f" {pct(j['harmful_kept_rate'])} of harmful ones")
    jury, agree = report.jury, report.agreement
    kappas = ", ".join(f"{k} {_num(v)}" for k, v in jury["kappa"].items())
    console.print(f"jury against people ({jury['items']} items): Cohen's kappa {kappas}")
    console.print(f"agreement: Krippendorff's alpha {_num(agree['krippendorff_alpha'])} over"
                  f" {agree['items_labelled_twice_or_more']} items labelled more than once;"
                  f" {len(agree['disagreements'])} disagreements")
    for b in p["below_min_precision"]:
        console.print(f"below validation.min_precision ({p['min_precision']:.0%}):"
                      f" {b['category']}/{stratum_level(b['level'])} (lower bound {b['low']:.1%})")
    if report.aggregation is not None:
        for a in report.aggregation["annotators"]:
            flag = " [flagged: far below the others]" if a["flagged"] else ""
            console.print(f"Dawid-Skene: {a['annotator']} accuracy {a['accuracy']:.2f} over"
                          f" {a['labels']} labels{flag}")
        console.print(f"{len(report.aggregation['differs_from_majority'])} items labelled otherwise than by"
                      " majority")
    if report.rubrics is not None:
        r, k = report.rubrics, report.rubrics["kept_as_is"]
        console.print(f"rubrics: {r['reviews']} reviews of {r['items']} kept prompts' rubrics"
                      f" ({', '.join(f'{n} {v}' for v, n in r['verdicts'].items())}); kept as they are by"
                      f" majority: {_num(k['share'], '.1%')}"
                      f" ({_num(k['low'], '.1%')}-{_num(k['high'], '.1%')});"
                      f" {len(r['to_fix'])} to drop or edit")
    if report.rounds is not None:
        r = report.rounds
        console.print(f"rounds: {r['rounds']} ({' + '.join(map(str, r['items_by_round']))} items);"
                      f" {r['met']} of {len(r['strata'])} strata within +-{r['target_halfwidth']:g}")
        for st in r["strata"]:
            if not st["met"]:
                console.print(f"  {st['stratum']}: half-width {_num(st['halfwidth'], '.3f')} after"
                              f" {st['decided']} decided of {st['population']}")
    if result.gated is not None:
        console.print(f"gate: {result.gated} kept prompts that people labelled harmful moved to rejected"
                      " (reason human_harmful)")
    console.print(f"snapshot: {result.snapshot} ({result.digest}); every figure: {result.report_file}")


def calibration(report, target_recall: float) -> None:
    table = Table(title=f"jury against {report.items} gold prompts ({report.harmful} harmful,"
                        f" {report.benign} benign); positive class: harmful")
    for col in ("juror", "TN", "FP", "FN", "TP", "precision", "recall", "F1", "specificity", "kappa",
                "unparseable"):
        table.add_column(col, justify="left" if col == "juror" else "right")
    for juror, m in report.jurors.items():
        (tn, fp), (fn, tp) = m.confusion
        name = f"k-of-n rule ({report.required_benign} benign)" if juror == "rule" else juror
        table.add_row(name, *map(str, (tn, fp, fn, tp)),
                      *(_num(x) for x in (m.precision, m.recall, m.f1, m.specificity, m.kappa)),
                      str(m.unparseable))
    console.print(table)
    console.print(f"model calls: {report.model_calls} (request cache hits: {report.cache_hits})")
    if report.fit is not None:
        _fit(report.fit, target_recall)


def label_calibration(report, target_recall: float) -> None:
    conf = f"{report.confidence:.0%}"
    table = Table(title=f"jury against people's labels of {report.items} sample items of {report.snapshot}"
                        f" ({report.harmful} harmful; labels by {report.aggregate}); positive class: harmful;"
                        f" design-weighted, {conf} CI")
    for col in ("juror", "items", "recall", f"{conf} CI", "specificity", f"{conf} CI", "kappa", "AUROC",
                "unparseable"):
        table.add_column(col, justify="left" if col == "juror" else "right")

    def share(e) -> tuple[str, str]:
        if e.estimate is None:
            return "-", "-"
        return f"{e.estimate:.1%}", "-" if e.low is None else f"{e.low:.1%}-{e.high:.1%}"

    for juror, m in report.jurors.items():
        name = "jury's decision" if juror == "rule" else juror
        table.add_row(name, str(m.items), *share(m.recall), *share(m.specificity), _num(m.kappa),
                      _num(m.auroc, ".3f"), str(m.unparseable))
    console.print(table)
    if report.fit is not None:
        _fit(report.fit, target_recall, "people's labels")


def training(result) -> None:
    table = Table(title="training prompts (a prompt two sources label differently is left out)")
    for col in ("source", "kind", "prompts", "harmful", "digest"):
        table.add_column(col, justify="right" if col in ("prompts", "harmful") else "left")
    for src in result.sources:
        table.add_row(src.name, src.kind, str(src.items), str(src.harmful), src.digest[:19])
    console.print(table)
    cv, p = result.cross_validated, result.cross_validated.point
    console.print(f"{result.items} prompts ({result.harmful} harmful; {result.conflicts} left out as"
                  f" conflicting); embeddings: {result.embedding_model}")
    console.print(f"cross-validated ({cv.groups} held-out groups: each labelled snapshot, and the gold"
                  " file and seeds split by a hash; never on its own training data): AUROC"
                  f" {_num(p.auroc, '.3f')}; at P(harmful) >= {_num(p.threshold, '.3g')}: recall"
                  f" {_num(p.recall)}, specificity {_num(p.specificity)} (target recall {p.target_recall:g});"
                  f" at 0.5: recall {_num(cv.recall_at_half)}, specificity {_num(cv.specificity_at_half)}")
    for f in result.files:
        console.print(f"  {f}")


def _fit(fit: dict, target: float, source: str = "the gold file") -> None:
    table = Table(title=f"score jurors: the threshold that catches {target:.0%} of the harmful prompts"
                        f" in {source} (harmful when P(harmful) >= threshold)")
    for col in ("juror", "AUROC", "threshold", "recall", "specificity", "unscored"):
        table.add_column(col, justify="left" if col == "juror" else "right")
    for juror, f in fit.items():
        table.add_row(juror, *(_num(x, ".4g") for x in (f.auroc, f.threshold, f.recall, f.specificity)),
                      str(f.unscored))
    console.print(table)
    lines = [f.config_line for f in fit.values() if f.config_line]
    if lines:
        console.print("config (under roles:):")
        for line in lines:
            console.print(f"  {line}", soft_wrap=True)
    for juror, f in fit.items():
        if not f.config_line:
            console.print(f"{juror}: no threshold: the prompts it scored are all of one label")


def provenance(r) -> None:
    status = "kept" if r.status == "kept" else f"rejected ({r.reason})"
    console.print(f"{r.id}  {status}  in snapshot {r.snapshot} ({r.snapshot_digest})"
                  f" (held by: {', '.join(r.snapshots)})")
    carried = f", carried over from {r.carried_from}" if r.carried_from else ""
    origin = (f"imported, taxonomy version {r.taxonomy_version}" if r.imported_from else
              f"fingerprint {r.category_fingerprint}, built under taxonomy version"
              f" {r.taxonomy_version}{carried}")
    console.print(f"category: {r.category} ({origin})   level: {stratum_level(r.level)}")
    console.print(f"prompt: {r.prompt}")
    if o := r.imported_from:
        console.print(f"imported from {o['file']}:{o['line']} (source id {o['id']},"
                      f" file sha256 {o['sha256']})")
        console.print(f"  source fields: {o['fields']}", soft_wrap=True)
        console.print(f"  original_question: {r.seed['original_question']}")
    else:
        console.print(f"seed: {r.seed['id']} '{r.seed['topic']}' ({r.seed['source']})")
        console.print(f"  original_question: {r.seed['original_question']}")
        console.print(f"template: {r.template['name']} sha {r.template['sha']}")
        console.print(f"  rendered: {r.template['rendered']}")
        console.print(f"generator: {r.generator['model']} params {r.generator['params']}")
    if r.generation_call:
        _call("generation call", r.generation_call)
    d = r.dedup
    line = f"dedup: {d['status']}" if not r.imported_from else "dedup, jury: none (imported as published)"
    if d["duplicate_of"]:
        line += f" - duplicate of {d['duplicate_of']} (cosine {d['similarity']})"
    elif d["status"] == "off topic":
        line += f" - cosine {d['similarity']} to its template prompt, below generation.min_similarity"
    if d["duplicates_dropped"]:
        line += f"; dropped as its duplicates: {', '.join(d['duplicates_dropped'])}"
    console.print(line)
    if r.votes:
        console.print(f"jury: {r.benign_votes} of {len(r.votes)} benign"
                      f" (rule: at least {r.required_benign})")
    for v in r.votes:
        console.print(f"  {v.juror} [{v.model}, {v.judge_prompt}]: {v.label}"
                      f" - {v.rationale}" + (f" ({v.repairs} repairs)" if v.repairs else ""))
        for c in v.calls:
            _call("    call", c)
    if r.rubric:
        positive = sum(c.points for c in r.rubric.criteria if c.points > 0)
        console.print(f"rubric: {r.rubric.template} sha {r.rubric.template_sha}"
                      f" ({len(r.rubric.criteria)} criteria, {positive} positive points)")
        for c in r.rubric.criteria:
            console.print(f"  {c.points:+d} {c.kind} {c.id}: {c.text}", soft_wrap=True)
        if w := r.rubric.writer:
            outcome = f"added {', '.join(w.added)}" if w.rejected is None else f"draft rejected: {w.rejected}"
            console.print(f"rubric writer {w.model} ({w.template} sha {w.template_sha}): {outcome}; calls:"
                          f" {', '.join(k[:16] for k in w.calls)}", soft_wrap=True)
    console.print(f"validation sample: {'yes' if r.in_validation_sample else 'no'}")
    for h in r.human_labels:
        rating = f", ambiguity {h.ambiguity}" if h.ambiguity else ""
        notes = f", notes: {h.notes}" if h.notes else ""
        console.print(f"  human label in {h.snapshot}: {h.annotator}: {h.label}{rating}{notes} [{h.file}]")
    for a in r.answers:
        console.print(f"answer in evaluation {a.run}: {a.model} [{a.model_id}]: grade {a.grade or 'ungraded'}"
                      f" ({a.grade_rationale}), detector {a.detector}")
        console.print(f"  {a.answer}")


def _call(label: str, c) -> None:
    if not c.found:
        console.print(f"{label} {c.key[:16]}: not in the request cache")
        return
    usage = c.usage or {}
    origin = {True: "made by this build", False: "cache hit (made earlier)", None: ""}
    console.print(f"{label} {c.key[:16]}: {c.model} @ {c.endpoint} {c.params}"
                  f" latency {c.latency_s:.2f}s tokens {usage.get('prompt_tokens')}"
                  f"+{usage.get('completion_tokens')} at {c.made_at}"
                  f" {origin[c.made_for_this_snapshot]}")
    for m in c.messages:
        console.print(f"      {m['role']}: {m['content']}")
    console.print(f"      response: {c.response_text}")


def diff(report) -> None:
    console.print(f"a: {report.a} ({report.a_digest})\nb: {report.b} ({report.b_digest})")
    table = Table(title="kept prompts per category, a -> b")
    numeric = ("added", "removed", "changed", "unchanged")
    for col in ("category", "status", *numeric, "changed inputs"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for c in report.categories:
        table.add_row(c.category, c.status, str(len(c.added)), str(len(c.removed)), str(len(c.changed)),
                      str(c.unchanged), ", ".join(c.changed_inputs) or "-")
    console.print(table)


def eviction(result) -> None:
    if result.dry_run:
        console.print(f"would evict {len(result.keys)} cached calls matching {result.matching}:")
        for k in result.keys:
            console.print(f"  {k}")
        return
    console.print(f"evicted {result.evicted} cached calls matching {result.matching}; the next build makes"
                  " them again (with --base, the categories that used them are rebuilt)")


def migration(r) -> None:
    console.print(f"copied {r.src} -> {r.dst} in {r.seconds:.1f} s:"
                  f" {r.calls_new:,} of {r.calls:,} model calls new"
                  f" ({r.calls - r.calls_new:,} were there already), {r.evictions:,} evictions"
                  f" (epoch {r.epoch}), {r.vectors_new:,} of {r.vectors:,} embeddings new", soft_wrap=True)


def imported(r) -> None:
    console.print(f"imported {r.format} into {r.snapshot} ({r.digest})")
    for f in r.files:
        console.print(f"  {f['name']}: {f['rows']} rows, sha256 {f['sha256']}")
    table = Table(title="benign prompts per category x level; contrast: the source's harmful prompts")
    levels = [lvl for lvl in STRATUM_LEVELS if any(lvl in k for k in r.kept.values())]
    for col in ("category", *levels, "contrast"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat in dict.fromkeys([*r.kept, *r.contrast]):
        table.add_row(cat, *(str(r.kept.get(cat, {}).get(lvl, 0)) for lvl in levels),
                      str(r.contrast.get(cat, 0)))
    console.print(table)
    console.print(f"validation sample: {r.validation_sample} items; next: orsc annotate {r.snapshot}")
    for p in r.problems:
        console.print(f"[red]verify: {p}[/red]")


def published(r) -> None:
    if r.commit is None:
        console.print(f"{r.repo} already holds {r.snapshot} ({r.digest}): nothing uploaded")
    else:
        console.print(f"published {r.snapshot} ({r.digest}) to {r.url}: {r.files} files in commit"
                      f" {r.commit[:12]}" + (", private" if r.private else "")
                      + (", gated" if r.gated else ""))
    console.print(f"anyone can check a copy: git clone {r.url} && orsc verify <clone> --digest {r.digest}")
