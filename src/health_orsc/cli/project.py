"""`orsc init`: a project of one's own."""

from __future__ import annotations

import argparse
from pathlib import Path

from health_orsc.cli.common import command, console


def cmd_init(args: argparse.Namespace) -> int:
    from health_orsc.inputs.project import CONFIG, init_project

    out = Path(args.dir)
    files = init_project(out)
    console.print(f"wrote {len(files)} files to {out}: {CONFIG}, seeds/, prompts_templates/, classifiers/")
    console.print(f"edit them, then: orsc build --config {out / CONFIG}", soft_wrap=True)
    return 0


def register(sub) -> None:
    p = command(sub, "init", cmd_init, "write a project of your own: the default config, seeds and templates",
                "Copy the packaged default config, seed files and templates into DIR (new, or an empty"
                " directory; nothing is overwritten), with the config's paths pointing at the copies"
                " and at DIR/outputs.",
                "orsc init my-benchmark && orsc build --config my-benchmark/config.yaml")
    p.add_argument("dir", help="a new (or empty) directory")
