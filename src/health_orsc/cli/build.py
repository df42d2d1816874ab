"""`orsc build` and `orsc serve`: the build-benchmark flow, in process or as deployments."""

from __future__ import annotations

import argparse
from pathlib import Path

from health_orsc.cli import render
from health_orsc.cli.common import (
    add_config,
    add_json,
    check_cache_reachable,
    comma_list,
    command,
    console,
    emit,
    prefect_env,
    run_logged,
)
from health_orsc.core.config import ValidationConfig, load_config


def cmd_build(args: argparse.Namespace) -> int:
    from health_orsc.audit.verify import open_verified
    from health_orsc.inputs.load import load_inputs
    from health_orsc.snapshot.store import check_snapshot_name, default_snapshot_name

    categories = comma_list(args.categories, "--categories", "category")
    config = load_config(args.config)
    inputs = load_inputs(config, categories)  # every input validated before anything is written
    name = check_snapshot_name(config.outputs_dir,
                               default_snapshot_name() if args.name is None else args.name)
    base = str(open_verified(Path(args.base), "build on", "--base").path) if args.base else None
    check_cache_reachable(config)
    prefect_env(config.outputs_dir)
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
        note("starting Prefect's temporary API server (set PREFECT_API_URL to use a running one)")

        def run():
            start_prefect_server(config.outputs_dir)
            return build_benchmark(str(config.source), named, name, base)

        result = run_logged("build", log_path, run)
    emit(args, result, lambda r: render.build(r, _budget(Path(r.snapshot), config.validation)))
    return 0


def _budget(snapshot: Path, validation: ValidationConfig) -> str:
    from health_orsc.snapshot.store import read_sample

    sample = read_sample(snapshot)
    rejected = sum(r["source"] == "rejected" for r in sample)
    shared = "all" if validation.overlap is None else f"{min(validation.overlap, len(sample))}"
    return (f"validation sample: {len(sample)} items ({len(sample) - rejected} kept, {rejected}"
            f" jury-rejected); annotation budget: {validation.labels_for(len(sample))} labels"
            f" ({validation.annotators} annotators, {shared} items labelled by every one;"
            " config: validation.annotators, validation.overlap)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve build-benchmark and evaluate-benchmark as deployments (no work pool) until
    interrupted."""
    from health_orsc.inputs.load import load_inputs

    config = load_config(args.config)
    load_inputs(config)  # a deployment that cannot run should not be served
    prefect_env(config.outputs_dir, own_home=False)
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


def register(sub) -> None:
    b = command(sub, "build", cmd_build, "run the build-benchmark flow and write a snapshot",
                "Seeds -> generate -> dedup -> jury -> sample -> export, on one config, into"
                " outputs/snapshots/NAME/. With --base, only the named categories (or else those whose"
                " fingerprint changed) are rebuilt; the rest are carried over. --json prints a"
                " BuildResult.", "orsc build --config my-benchmark/config.yaml --name v1")
    add_config(b)
    b.add_argument("--categories", help="comma-separated category ids (default: all in config)")
    b.add_argument("--name", help="snapshot name (default: build-<UTC timestamp>)")
    b.add_argument("--base", help="snapshot to regenerate from: rebuild only --categories, or else"
                                  " the categories whose fingerprint changed; carry the rest over")
    add_json(b)

    s = command(sub, "serve", cmd_serve, "serve build-benchmark and evaluate-benchmark as Prefect deployments"
                " (no work pool)", "Serve both flows as deployments named --deployment until Ctrl-C; run"
                " them with `prefect deployment run`.",
                "orsc serve & prefect deployment run 'build-benchmark/local' --param name=v1 --watch")
    add_config(s)
    s.add_argument("--deployment", default="local", help="deployment name (default: %(default)s)")
