"""`orsc`: build, verify and audit benchmark snapshots.

Exit codes: 0 success; 1 a snapshot failed verification or the build failed;
2 bad input (config, seeds, templates, arguments), with nothing written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from health_orsc import __version__
from health_orsc.cache.database import CacheUnavailable, connect_postgres
from health_orsc.core.config import DATA_DIR, DEFAULT_CONFIG, BuildConfig, ValidationConfig, load_config
from health_orsc.core.errors import InputError
from health_orsc.llm.embedded import EmbeddedModelError
from health_orsc.llm.gateway import LLMError

# failures after which the same command resumes from what the caches hold
RESUMABLE = (LLMError, EmbeddedModelError, CacheUnavailable)

DEFAULT_GOLD = DATA_DIR / "gold" / "jury.csv"
DEFAULT_ANSWERS = DATA_DIR / "gold" / "answers.csv"

# Prompts may contain [brackets]: no markup. Piped output gets room for the table.
console = Console(markup=False, highlight=False)
if not console.is_terminal:
    console.width = 120


def _prefect_env(outputs_dir: Path, own_home: bool = True) -> None:
    """Keep Prefect quiet and offline unless the user configured it. An in-process build
    keeps Prefect's state (ephemeral DB, task cache) under outputs/ unless PREFECT_HOME
    or PREFECT_API_URL is set; `orsc serve` uses the user's Prefect settings as they are."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's SDK telemetry: offline means offline
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if own_home and "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        home = outputs_dir / "prefect" / "home"
        home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
        os.environ["PREFECT_HOME"] = str(home)


def cmd_build(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import open_verified
    from health_orsc.inputs.load import load_inputs
    from health_orsc.snapshot.store import check_snapshot_name, default_snapshot_name

    categories = None
    if args.categories is not None:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
        if not categories:
            raise InputError(None, "--categories", f"{args.categories!r} names no category",
                             "pass comma-separated category ids, or leave --categories out for all")
    config = load_config(args.config)
    inputs = load_inputs(config, categories)  # every input validated before anything is written
    name = check_snapshot_name(config.outputs_dir,
                               default_snapshot_name() if args.name is None else args.name)
    base = str(open_verified(Path(args.base), "build on", "--base").path) if args.base else None
    _check_cache_reachable(config)
    _prefect_env(config.outputs_dir)
    from health_orsc.flows.build import build_benchmark
    from health_orsc.runtime.procs import reap_orphans, start_prefect_server
    from health_orsc.runtime.progress import note
    from health_orsc.runtime.terminal import build_console

    # With --base and no --categories, the flow picks the categories whose fingerprint changed.
    named = inputs.categories if categories or not base else None
    log_path = config.outputs_dir / "logs" / "builds" / f"{name}.log"
    with build_console(log_path):
        note(f"building snapshot '{name}' ({len(inputs.categories)} categories); log: {log_path}")
        for stopped in reap_orphans(config.outputs_dir):
            note(f"stopped {stopped}, left running by a build that was killed")
        try:
            note("starting Prefect's temporary API server (set PREFECT_API_URL to use a running one)")
            start_prefect_server(config.outputs_dir)
            result = build_benchmark(str(config.source), named, name, base)
        except InputError:
            raise
        except RESUMABLE as err:
            logging.getLogger("orsc").error("build failed", exc_info=True)
            raise BuildFailed(str(err), log_path, resumable=True) from err
        except Exception as err:
            logging.getLogger("orsc").error("build failed", exc_info=True)
            raise BuildFailed(f"{type(err).__name__}: {err}", log_path, resumable=False) from err
    _print_summary(result)
    _print_budget(Path(result["snapshot"]), config.validation)
    console.print(f"snapshot: {result['snapshot']} ({result['digest']})")
    return 0


def _print_budget(snapshot: Path, validation: ValidationConfig) -> None:
    from health_orsc.snapshot.store import read_sample

    sample = read_sample(snapshot)
    rejected = sum(r["source"] == "rejected" for r in sample)
    shared = "all" if validation.overlap is None else f"{min(validation.overlap, len(sample))}"
    console.print(f"validation sample: {len(sample)} items ({len(sample) - rejected} kept, {rejected}"
                  f" jury-rejected); annotation budget: {validation.labels_for(len(sample))} labels"
                  f" ({validation.annotators} annotators, {shared} items labelled by every one;"
                  " config: validation.annotators, validation.overlap)")


def _check_cache_reachable(config: BuildConfig) -> None:
    """An unreachable cache.url: exit 2 before Prefect starts or any model is called."""
    if config.cache.url is not None:
        connect_postgres(config.cache, config.source).close()


class BuildFailed(Exception):
    """A build that started and failed: one message for the terminal, details in the log."""

    def __init__(self, message: str, log_path: Path, resumable: bool):
        super().__init__(message)
        self.log_path = log_path
        self.resumable = resumable


def cmd_evaluate(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import open_verified
    from health_orsc.evaluation.answer import load_evaluation
    from health_orsc.snapshot.store import check_snapshot_name, evaluations_dir

    config = load_config(args.config)
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = open_verified(Path(args.snapshot), "evaluate")  # a snapshot that fails verify stops here
    inputs = load_evaluation(config, base, models)  # every input checked before any call
    if args.name is not None:
        check_snapshot_name(config.outputs_dir, args.name, evaluations_dir(config.outputs_dir))
    _check_cache_reachable(config)
    _prefect_env(config.outputs_dir)
    from health_orsc.flows.evaluate import evaluate_benchmark
    from health_orsc.runtime.procs import start_prefect_server
    from health_orsc.runtime.progress import note
    from health_orsc.runtime.terminal import build_console

    log_path = config.outputs_dir / "logs" / "evaluations" / f"{args.name or 'evaluate'}.log"
    with build_console(log_path):
        note(f"evaluating snapshot '{base.path.name}' with {', '.join(inputs.models)}; log: {log_path}")
        try:
            start_prefect_server(config.outputs_dir)
            result = evaluate_benchmark(str(config.source), str(base.path), inputs.models, args.name)
        except InputError:
            raise
        except RESUMABLE as err:
            logging.getLogger("orsc").error("evaluation failed", exc_info=True)
            raise BuildFailed(str(err), log_path, resumable=True) from err
    from health_orsc.evaluation.report import LEADERBOARD_COLUMNS, leaderboard_cells

    table = Table(title="leaderboard (benign prompts: over-refusal; contrast set: harmful compliance)")
    for col in LEADERBOARD_COLUMNS:
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in result["leaderboard"]:
        table.add_row(*leaderboard_cells(row))
    console.print(table)
    console.print(f"model calls: {sum(result['model_calls'].values())} (request cache hits:"
                  f" {sum(result['cache_hits'].values())})")
    console.print(f"evaluation: {result['run']}")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    import json

    from health_orsc.evaluation.answer import load_grader
    from health_orsc.evaluation.grade import GENERIC, grade_answers, grade_report, read_answers
    from health_orsc.inputs.load import load_taxonomy

    config = load_config(args.config)
    taxonomy = load_taxonomy(config.seeds_dir)
    items = read_answers(Path(args.answers), taxonomy)
    entries = {c: taxonomy.entry(c).model_dump() for c in {i.category for i in items if i.category}}
    template = load_grader(config, {**entries, "(none)": GENERIC})
    results, calls, hits = _model_calls(
        config, "grade", "answers", sum(bool(i.answer.strip()) for i in items),
        lambda gateway: grade_answers(config, template, items, entries, gateway))
    report = grade_report(items, results)
    report["model_calls"], report["cache_hits"] = calls, hits
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    console.print(f"graded {report['items']} answers ({report['ungraded']} the grader could not grade);"
                  f" model calls: {report['model_calls']} (request cache hits: {report['cache_hits']})")
    if not report["labelled"]:
        console.print("no `label` column: nothing to compare with"
                      " (add people's labels to measure the grader)")
        return 0
    for who in ("grader", "detector"):
        m = report[who]
        table = Table(title=f"{who} against {m['n']} people's labels: accuracy {m['accuracy']:.2f},"
                            f" Cohen's kappa {'n/a' if m['kappa'] is None else format(m['kappa'], '.2f')}")
        for col in ("people \\ " + who, *m["labels"], "precision", "recall", "F1", "support"):
            table.add_column(col, justify="left" if col.startswith("people") else "right")
        for label, row in zip(m["labels"], m["confusion"], strict=True):
            c = m["per_class"][label]
            table.add_row(label, *map(str, row), *("n/a" if c[k] is None else f"{c[k]:.2f}"
                                                   for k in ("precision", "recall", "f1")), str(c["support"]))
        console.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from health_orsc.evaluation.exports import check_pair, write_health_orsc

    snapshot, run = Path(args.snapshot), Path(args.evaluation)
    digest = _verified(snapshot, "export")
    _verified(run, "export")
    check_pair(snapshot, digest, run)
    counts = write_health_orsc(snapshot, run, Path(args.out))
    console.print(f"wrote {args.out}: " + ", ".join(f"{name}.jsonl {n}" for name, n in counts.items()))
    return 0


def _print_summary(result: dict) -> None:
    table = Table(title="build-benchmark: candidates per category x level")
    for col in ("category", "level", "generated", "usable", "off topic", "after dedup", "after jury"):
        table.add_column(col, justify="left" if col in ("category", "level") else "right")
    totals = [0, 0, 0, 0, 0]
    for row in result["summary"]:
        nums = [row["generated"], row["usable"], row["off_topic"], row["after_dedup"], row["after_jury"]]
        totals = [a + b for a, b in zip(totals, nums, strict=True)]
        table.add_row(row["category"], row["level"], *map(str, nums))
    table.add_row("total", "", *map(str, totals), style="bold")
    console.print(table)
    calls = sum(result["model_calls"].values())
    hits = sum(result["cache_hits"].values())
    console.print(f"model calls: {calls} (request cache hits: {hits}; stage tasks from Prefect's"
                  f" cache: {result['stage_tasks_cached']} of {result['stage_tasks']})")
    for juror, c in result["jury_calibration"].items():
        controls = (f"; {c['labelled_benign']} of {c['benign_controls']} benign controls benign"
                    f" ({c['specificity']:.0%})" if c.get("benign_controls") else "")
        console.print(f"jury check: {juror} labelled {c['labelled_harmful']} of {c['known_harmful']}"
                      f" known-harmful seed requests harmful ({c['harmful_recall']:.0%}){controls}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve build-benchmark and evaluate-benchmark as deployments (no work pool) until
    interrupted."""
    from health_orsc.inputs.load import load_inputs

    config = load_config(args.config)
    load_inputs(config)  # a deployment that cannot run should not be served
    _prefect_env(config.outputs_dir, own_home=False)
    from prefect import serve

    from health_orsc.flows.build import build_benchmark
    from health_orsc.flows.evaluate import evaluate_benchmark

    name, params = args.deployment, {"config_path": str(config.source)}
    console.print(f"serving build-benchmark/{name} and evaluate-benchmark/{name} (config {config.source});"
                  f" run them with: prefect deployment run 'build-benchmark/{name}', and"
                  f" prefect deployment run 'evaluate-benchmark/{name}' --param snapshot=SNAPSHOT_DIR")
    serve(build_benchmark.to_deployment(name=name, parameters=params),
          evaluate_benchmark.to_deployment(name=name, parameters=params))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import verify_snapshot

    snapshot = Path(args.snapshot)
    report = verify_snapshot(snapshot, args.digest)
    if report.problems:
        print(f"FAILED {snapshot}" + (f" (digest {report.digest})" if report.digest else ""),
              file=sys.stderr)
        for p in report.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    console.print(f"OK {snapshot}: every checksum and count in MANIFEST.json matches"
                  + (" the expected digest" if args.digest else ""))
    console.print(f"digest: {report.digest}")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from health_orsc.snapshot.store import load_manifest
    from health_orsc.validation.annotate import plan_tasks, write_tasks

    snapshot = Path(args.snapshot)
    _verified(snapshot, "annotate")
    # Defaults: the snapshot's own config (validation.annotators, validation.overlap).
    planned = ValidationConfig.model_validate(load_manifest(snapshot).config.get("validation", {}))
    annotators = planned.annotators if args.annotators is None else args.annotators
    overlap = planned.overlap if args.overlap is None else args.overlap
    tasks = plan_tasks(snapshot, annotators, overlap)
    files = write_tasks(tasks, Path(args.out), args.format)
    console.print(f"{tasks.items} items for {annotators} annotators: {tasks.shared} labelled by every one,"
                  f" {tasks.items - tasks.shared} by one each; {tasks.labels} labels in all")
    for f in files:
        console.print(f"  {f}")
    return 0


def _verified(snapshot: Path, purpose: str) -> str:
    """The digest of a snapshot (or evaluation run) that passes verify; InputError otherwise."""
    from health_orsc.audit.verify import require_verified

    return require_verified(snapshot, purpose).digest


def cmd_validate(args: argparse.Namespace) -> int:
    from health_orsc.snapshot.handle import read_rows
    from health_orsc.snapshot.store import REPORT_FILE, check_snapshot_name, load_manifest, read_sample
    from health_orsc.validation.labels import read_labels
    from health_orsc.validation.validity import validity_report, write_validation_snapshot

    snapshot = Path(args.snapshot)
    _verified(snapshot, "validate")
    manifest = load_manifest(snapshot)
    check_snapshot_name(snapshot.parent.parent, args.name)  # before reading any label
    sample = read_sample(snapshot)
    labels = read_labels([Path(p) for p in args.labels], {s["id"] for s in sample}, manifest.digest)
    validation = ValidationConfig.model_validate(manifest.config.get("validation", {}))
    rows = read_rows(snapshot)
    report = validity_report(rows, sample, labels, validation.min_precision)
    path = write_validation_snapshot(snapshot, manifest, args.name, rows, sample, labels, report, args.gate)
    _print_validity(report)
    new = load_manifest(path)
    if args.gate:
        moved = sum(c.get("human_harmful", 0) for c in new.counts.rejected.values())
        console.print(f"gate: {moved} kept prompts that people labelled harmful moved to rejected"
                      " (reason human_harmful)")
    console.print(f"snapshot: {path} ({new.digest}); every figure: {path / REPORT_FILE}")
    return 0


def _print_validity(report: dict) -> None:
    lab, p = report["labels"], report["precision"]
    console.print(f"{lab['rows']} labels of {lab['items']} items by {len(lab['annotators'])} annotators"
                  f" (skipped: {lab['unlabelled']} unlabelled, {lab['cancelled']} cancelled;"
                  f" {lab['undecided']} items undecided)")
    table = Table(title="benign precision of kept prompts (Wilson 95% CI)")
    for col in ("category", "level", "kept", "labelled", "precision", "95% CI", "harmful left"):
        table.add_column(col, justify="left" if col in ("category", "level") else "right")

    def add(fig: dict, category: str, level: str, **style) -> None:
        q, h = fig["precision"], fig["harmful_left"]
        table.add_row(category, level, str(fig["kept"]), str(fig["labelled"]),
                      "-" if not q["n"] else f"{q['share']:.1%}",
                      "-" if not q["n"] else f"{q['low']:.1%}-{q['high']:.1%}",
                      "-" if h is None else f"{h['estimate']:g} ({h['low']:g}-{h['high']:g})", **style)

    for s in p["strata"]:
        add(s, s["category"], s["level"])
    for c in p["categories"]:
        add(c, c["category"], "all")
    add(p["overall"], "overall", "", style="bold")
    console.print(table)
    jury, agree = report["jury"], report["agreement"]
    kappas = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in jury["kappa"].items())
    console.print(f"jury against people ({jury['items']} items): Cohen's kappa {kappas}")
    alpha = agree["krippendorff_alpha"]
    console.print(f"agreement: Krippendorff's alpha {'n/a' if alpha is None else f'{alpha:.2f}'} over"
                  f" {agree['items_labelled_twice_or_more']} items labelled more than once;"
                  f" {len(agree['disagreements'])} disagreements")
    for b in p["below_min_precision"]:
        console.print(f"below validation.min_precision ({p['min_precision']:.0%}):"
                      f" {b['category']}/{b['level']} (lower bound {b['low']:.1%})")


def _model_calls(config: BuildConfig, stage: str, what: str, expected: int,
                 job: Callable[[Any], Any]) -> tuple[Any, int, int]:
    """Run `job(gateway)` (a coroutine's maker) on a gateway of its own, outside a build:
    progress on stderr, the log in outputs/logs/<stage>.log. Returns (its result, model
    calls made, request-cache hits)."""
    from health_orsc.llm import Gateway
    from health_orsc.llm.gateway import Usage
    from health_orsc.runtime.progress import tracked
    from health_orsc.runtime.terminal import build_console

    with build_console(config.outputs_dir / "logs" / f"{stage}.log"):
        gateway = Gateway(config)
        try:
            with tracked(stage, what) as progress:
                usage = Usage(progress=progress)
                usage.expect(expected)
                result = gateway.run(job(gateway), usage)
        finally:
            gateway.close()
    return result, sum(usage.calls.values()), sum(usage.cache_hits.values())


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from health_orsc.inputs.load import load_inputs
    from health_orsc.validation.calibrate import (
        calibration_report,
        fit_thresholds,
        judge_gold,
        read_gold,
        score_jurors,
    )

    config = load_config(args.config)
    if args.fit and not score_jurors(config):
        raise InputError(Path(args.config), "roles.<juror>.scoring", "--fit needs a juror that scores"
                         " with token probabilities, and no juror does",
                         "add 'scoring: logprobs' to a role listed in jury.jurors")
    if not 0 < args.target_recall <= 1:
        raise InputError(None, "--target-recall", f"{args.target_recall} is not a share",
                         "pass a number above 0 and at most 1, e.g. 0.95")
    inputs = load_inputs(config)
    gold = read_gold(Path(args.gold), inputs.taxonomy)
    missing = sorted({g.category for g in gold} - set(inputs.categories))
    if missing:
        raise InputError(Path(args.gold), "category", f"{', '.join(missing)} not among the config's"
                         " categories", "drop those rows, or remove `categories` from the config")
    votes, calls, hits = _model_calls(config, "calibrate", "gold", len(gold) * len(config.jury.jurors),
                                      lambda gateway: judge_gold(inputs, gold, gateway))
    report = calibration_report(gold, votes, config.jury.jurors, config.jury.required_benign)
    report["model_calls"], report["cache_hits"] = calls, hits
    if args.fit:
        report["fit"] = fit_thresholds(gold, votes, config, args.target_recall)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(title=f"jury against {report['items']} gold prompts ({report['harmful']} harmful,"
                        f" {report['benign']} benign); positive class: harmful")
    for col in ("juror", "TN", "FP", "FN", "TP", "precision", "recall", "F1", "specificity", "kappa",
                "unparseable"):
        table.add_column(col, justify="left" if col == "juror" else "right")
    for juror, m in report["jurors"].items():
        (tn, fp), (fn, tp) = m["confusion"]
        name = f"k-of-n rule ({report['required_benign']} benign)" if juror == "rule" else juror
        table.add_row(name, *map(str, (tn, fp, fn, tp)),
                      *("n/a" if m[k] is None else f"{m[k]:.2f}"
                        for k in ("precision", "recall", "f1", "specificity", "kappa")),
                      str(m["unparseable"]))
    console.print(table)
    console.print(f"model calls: {report['model_calls']} (request cache hits: {report['cache_hits']})")
    if args.fit:
        _print_fit(report["fit"], args.target_recall)
    return 0


def _print_fit(fit: dict[str, dict], target: float) -> None:
    table = Table(title=f"score jurors: the threshold that catches {target:.0%} of the gold file's harmful"
                        " prompts (harmful when P(harmful) >= threshold)")
    for col in ("juror", "AUROC", "threshold", "recall", "specificity", "unscored"):
        table.add_column(col, justify="left" if col == "juror" else "right")
    for juror, f in fit.items():
        table.add_row(juror, *("n/a" if f[k] is None else f"{f[k]:.4g}"
                               for k in ("auroc", "threshold", "recall", "specificity")), str(f["unscored"]))
    console.print(table)
    lines = [f["config_line"] for f in fit.values() if f["config_line"]]
    if lines:
        console.print("config (under roles:):")
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    for juror, f in fit.items():
        if not f["config_line"]:
            console.print(f"{juror}: no threshold: its scored gold prompts are all of one label")


def cmd_provenance(args: argparse.Namespace) -> int:
    from health_orsc.audit.provenance import trace

    outputs_dir, cache = _outputs_and_cache(args)
    report = trace(args.id, outputs_dir, Path(args.snapshot) if args.snapshot else None, cache)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    _print_provenance(report)
    return 0


def _print_provenance(r) -> None:
    status = "kept" if r.status == "kept" else f"rejected ({r.reason})"
    console.print(f"{r.id}  {status}  in snapshot {r.snapshot} ({r.snapshot_digest})"
                  f" (held by: {', '.join(r.snapshots)})")
    carried = f", carried over from {r.carried_from}" if r.carried_from else ""
    console.print(f"category: {r.category} (fingerprint {r.category_fingerprint}, built under taxonomy"
                  f" version {r.taxonomy_version}{carried})   level: {r.level}")
    console.print(f"prompt: {r.prompt}")
    console.print(f"seed: {r.seed['id']} '{r.seed['topic']}' ({r.seed['source']})")
    console.print(f"  original_question: {r.seed['original_question']}")
    console.print(f"template: {r.template['name']} sha {r.template['sha']}")
    console.print(f"  rendered: {r.template['rendered']}")
    console.print(f"generator: {r.generator['model']} params {r.generator['params']}")
    if r.generation_call:
        _print_call("generation call", r.generation_call)
    d = r.dedup
    line = f"dedup: {d['status']}"
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
            _print_call("    call", c)
    console.print(f"validation sample: {'yes' if r.in_validation_sample else 'no'}")
    for h in r.human_labels:
        rating = f", ambiguity {h.ambiguity}" if h.ambiguity else ""
        notes = f", notes: {h.notes}" if h.notes else ""
        console.print(f"  human label in {h.snapshot}: {h.annotator}: {h.label}{rating}{notes} [{h.file}]")
    for a in r.answers:
        console.print(f"answer in evaluation {a.run}: {a.model} [{a.model_id}]: grade {a.grade or 'ungraded'}"
                      f" ({a.grade_rationale}), detector {a.detector}")
        console.print(f"  {a.answer}", markup=False, highlight=False)


def _print_call(label: str, c) -> None:
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


def cmd_diff(args: argparse.Namespace) -> int:
    from health_orsc.audit.diff import diff_snapshots

    report = diff_snapshots(Path(args.a), Path(args.b))
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    console.print(f"a: {args.a} ({report.a_digest})\nb: {args.b} ({report.b_digest})")
    table = Table(title="kept prompts per category, a -> b")
    numeric = ("added", "removed", "changed", "unchanged")
    for col in ("category", "status", *numeric, "changed inputs"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for c in report.categories:
        table.add_row(c.category, c.status, str(len(c.added)), str(len(c.removed)), str(len(c.changed)),
                      str(c.unchanged), ", ".join(c.changed_inputs) or "-")
    console.print(table)
    return 0


def _outputs_and_cache(args: argparse.Namespace):
    """The outputs directory and cache setting a command reads: --outputs (with the SQLite
    cache under it), or else those of --config (which may name a `cache.url` database)."""
    from health_orsc.core.config import CacheConfig

    if args.outputs:
        return Path(args.outputs), CacheConfig()
    config = load_config(args.config)
    return config.outputs_dir, config.cache


def cmd_cache_evict(args: argparse.Namespace) -> int:
    """Drop cached calls (a bad reply that was a valid completion stays cached until evicted);
    the next build makes those calls again and re-runs the stages that used them."""
    from health_orsc.audit.provenance import calls_of_prompt
    from health_orsc.cache.requests import existing_request_cache

    if args.key is not None and len(args.key) < 8:
        raise InputError(None, "--key", "is shorter than 8 characters",
                         "pass at least the first 8 characters of a key (`orsc provenance ID` shows them)")
    outputs_dir, cache_config = _outputs_and_cache(args)
    cache = existing_request_cache(cache_config, outputs_dir)
    if cache is None:
        raise InputError(outputs_dir / "cache" / "llm.sqlite", None, "no request cache here",
                         "pass the --outputs (or --config) of a build")
    path = cache.path
    try:
        if args.prompt:
            keys = [k for k in calls_of_prompt(args.prompt, outputs_dir) if cache.text(k) is not None]
        else:
            keys = cache.find(role=args.role, model=args.model, key_prefix=args.key)
        what = " ".join(f"--{n} {v}" for n, v in (("role", args.role), ("model", args.model),
                                                   ("key", args.key), ("prompt", args.prompt)) if v)
        if not keys:
            raise InputError(path, None, f"no cached call matches {what}",
                             "check the name; `orsc provenance ID` lists a prompt's calls")
        if args.dry_run:
            console.print(f"would evict {len(keys)} cached calls matching {what}:")
            for k in keys:
                console.print(f"  {k}")
            return 0
        evicted = cache.evict(keys)
    finally:
        cache.close()
    console.print(f"evicted {evicted} cached calls matching {what}; the next build makes them again"
                  " (with --base, the categories that used them are rebuilt)")
    return 0


def cmd_cache_migrate(args: argparse.Namespace) -> int:
    """Copy the request cache and the embedding cache from SRC to DST (each an outputs
    directory or a postgresql:// URL); rows DST already holds are kept."""
    from health_orsc.cache.migrate import CacheLocation, migrate

    src = CacheLocation.parse(args.src, "SRC", args.password_env)
    dst = CacheLocation.parse(args.dst, "DST", args.password_env)
    started = time.monotonic()
    r = migrate(src, dst)
    console.print(f"copied {src.label} -> {dst.label} in {time.monotonic() - started:.1f} s:"
                  f" {r.calls_new:,} of {r.calls:,} model calls new"
                  f" ({r.calls - r.calls_new:,} were there already), {r.evictions:,} evictions"
                  f" (epoch {r.epoch}), {r.vectors_new:,} of {r.vectors:,} embeddings new", soft_wrap=True)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from health_orsc.inputs.project import CONFIG, init_project

    out = Path(args.dir)
    files = init_project(out)
    console.print(f"wrote {len(files)} files to {out}: {CONFIG}, seeds/, prompts_templates/")
    console.print(f"edit them, then: orsc build --config {out / CONFIG}", soft_wrap=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orsc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="write a project of your own: the default config, seeds and templates")
    i.add_argument("dir", help="a new (or empty) directory")
    i.set_defaults(func=cmd_init)

    b = sub.add_parser("build", help="run the build-benchmark flow and write a snapshot")
    b.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    b.add_argument("--categories", help="comma-separated category ids (default: all in config)")
    b.add_argument("--name", help="snapshot name (default: build-<UTC timestamp>)")
    b.add_argument("--base", help="snapshot to regenerate from: rebuild only --categories, or else"
                                  " the categories whose fingerprint changed; carry the rest over")
    b.set_defaults(func=cmd_build)

    e = sub.add_parser("evaluate", help="run the evaluate-benchmark flow: a panel of models answers a"
                                        " snapshot's prompts, a grader grades them")
    e.add_argument("snapshot", help="snapshot directory (it must verify)")
    e.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    e.add_argument("--models", help="comma-separated roles that answer (default: evaluation.models)")
    e.add_argument("--name", help="run name (default: eval-<UTC timestamp>)")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser("grade", help="grade (prompt, answer) pairs with the evaluation's grader and"
                                     " detector; with people's labels, measure both")
    g.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    g.add_argument("--answers", default=str(DEFAULT_ANSWERS),
                   help="CSV: id, prompt, answer[, category][, label] (default: the project's %(default)s)")
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.set_defaults(func=cmd_grade)

    x = sub.add_parser("export", help="a snapshot with an evaluation's difficulty, in Health-ORSC-Bench's"
                                      " field layout")
    x.add_argument("snapshot", help="snapshot directory")
    x.add_argument("--evaluation", required=True, help="an evaluation run of that snapshot")
    x.add_argument("--format", choices=["health-orsc"], default="health-orsc", help="(default: %(default)s)")
    x.add_argument("--out", required=True, help="a new directory for the files")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="serve build-benchmark and evaluate-benchmark as Prefect deployments"
                                     " (no work pool)")
    s.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    s.add_argument("--deployment", default="local", help="deployment name (default: %(default)s)")
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("verify", help="re-check a snapshot's files and MANIFEST.json; print its digest")
    v.add_argument("snapshot", help="snapshot directory")
    v.add_argument("--digest", help="the digest the snapshot must have (e.g. as published)")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("annotate", help="blind annotation tasks for a snapshot's validation sample")
    a.add_argument("snapshot", help="snapshot directory")
    a.add_argument("--out", required=True, help="new directory for the task files")
    a.add_argument("--format", choices=("csv", "label-studio"), default="csv",
                   help="csv: one file per annotator to fill in; label-studio: a labeling config"
                        " and one tasks file per annotator (default: %(default)s)")
    a.add_argument("--annotators", type=int, help="people labelling (default: the snapshot's"
                                                  " validation.annotators)")
    a.add_argument("--overlap", type=int, help="items every annotator labels, for agreement; the rest"
                                               " are labelled once (default: validation.overlap, all)")
    a.set_defaults(func=cmd_annotate)

    va = sub.add_parser("validate", help="import human labels into a new snapshot with a validity report")
    va.add_argument("snapshot", help="the snapshot the labels are for")
    va.add_argument("labels", nargs="+", help="filled-in CSV files from `orsc annotate`, or Label"
                                              " Studio JSON exports")
    va.add_argument("--name", required=True, help="name of the new snapshot (beside SNAPSHOT)")
    va.add_argument("--gate", action="store_true", help="move kept prompts that people labelled harmful"
                                                        " (by majority) to rejected, reason human_harmful")
    va.set_defaults(func=cmd_validate)

    ca = sub.add_parser("calibrate", help="measure every juror and the k-of-n rule on labelled prompts")
    ca.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    ca.add_argument("--gold", default=str(DEFAULT_GOLD),
                    help="CSV: id, category, label (benign|harmful), prompt[, original_question]"
                         " (default: the project's %(default)s)")
    ca.add_argument("--fit", action="store_true",
                    help="for each `scoring: logprobs` juror, choose the threshold that reaches"
                         " --target-recall on the gold file")
    ca.add_argument("--target-recall", type=float, default=0.95,
                    help="share of the gold file's harmful prompts a fitted juror must catch"
                         " (with --fit; default %(default)s)")
    ca.add_argument("--json", action="store_true", help="machine-readable output")
    ca.set_defaults(func=cmd_calibrate)

    pr = sub.add_parser("provenance", help="print where a prompt came from")
    pr.add_argument("id", help="prompt id (kept or rejected)")
    pr.add_argument("--config", default=str(DEFAULT_CONFIG), help="config whose outputs_dir to search")
    pr.add_argument("--outputs", help="outputs directory to search (overrides --config)")
    pr.add_argument("--snapshot", help="look in this snapshot first (default: newest)")
    pr.add_argument("--json", action="store_true", help="machine-readable output")
    pr.set_defaults(func=cmd_provenance)

    c = sub.add_parser("cache", help="the request cache and the embedding cache").add_subparsers(
        dest="cache_command", required=True)
    e = c.add_parser("evict", help="drop cached model calls so the next build makes them again")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--config", default=str(DEFAULT_CONFIG), help="config whose outputs_dir to use")
    where.add_argument("--outputs", help="outputs directory (overrides --config)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--role", help="every call a role made (e.g. judge_2)")
    which.add_argument("--model", help="every call to a model (the name sent to the endpoint)")
    which.add_argument("--key", help="one call, by its key or a prefix of at least 8 characters")
    which.add_argument("--prompt", help="every call behind a prompt id (its rewrite and its votes)")
    e.add_argument("--dry-run", action="store_true", help="list the calls, evict nothing")
    e.set_defaults(func=cmd_cache_evict)
    m = c.add_parser("migrate", help="copy the request and embedding caches to another backend")
    m.add_argument("src", help="an outputs directory (its cache/*.sqlite) or a postgresql:// URL")
    m.add_argument("dst", help="an outputs directory or a postgresql:// URL (created if missing)")
    m.add_argument("--password-env", help="environment variable holding the database password"
                                          " (default: libpq's PGPASSWORD or ~/.pgpass)")
    m.set_defaults(func=cmd_cache_migrate)

    d = sub.add_parser("diff", help="prompts added / removed / changed per category, and why")
    d.add_argument("a", help="older snapshot directory")
    d.add_argument("b", help="newer snapshot directory")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_diff)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for noisy in ("httpx", "aiohttp"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BuildFailed as err:
        print(f"build failed: {err}", file=sys.stderr)
        if err.resumable:
            print("  completed model calls are cached; run the same command again to resume",
                  file=sys.stderr)
        print(f"  details (tracebacks, every task's log): {err.log_path}", file=sys.stderr)
        return 1
    except RESUMABLE as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
