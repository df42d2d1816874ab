"""`orsc init DIR`: a project of one's own - the default config, seeds, templates and classifier
copied out of the package into DIR, to edit and build with `orsc build --config
DIR/config.yaml`. The copy is byte for byte except the config's paths, which point at the
copied seeds, templates and classifier and at DIR/outputs.

Example:
    files = init_project(Path("my-benchmark"))
"""

from __future__ import annotations

from pathlib import Path

from health_orsc.core.config import DATA_DIR, DEFAULT_CONFIG
from health_orsc.core.files import write_new_dir

COPIED = ("seeds", "prompts_templates", "classifiers")
CONFIG = "config.yaml"
_EDITS = {
    "without outputs_dir,\n# snapshots, caches and evaluations go to ./outputs in the current directory.":
        "snapshots, caches\n# and evaluations go to outputs/ beside this file.",
    "seeds_dir: ../seeds\n": "seeds_dir: seeds\n",
    "templates_dir: ../prompts_templates\n": "templates_dir: prompts_templates\noutputs_dir: outputs\n",
    "classifier: ../classifiers/health-gold}": "classifier: classifiers/health-gold}",
}


def project_files() -> dict[str, str]:
    """The project's files, relative name -> text."""
    config = DEFAULT_CONFIG.read_text(encoding="utf-8")
    for old, new in _EDITS.items():
        if old not in config:  # the shipped config and this module disagree: a packaging bug
            raise RuntimeError(f"{DEFAULT_CONFIG} no longer holds {old.strip()!r}")
        config = config.replace(old, new)
    files = {CONFIG: config}
    for folder in COPIED:
        for path in sorted((DATA_DIR / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(DATA_DIR).as_posix()] = path.read_text(encoding="utf-8")
    return files


def init_project(out: Path) -> list[Path]:
    """Write the project into `out` (new, or an empty directory; never overwritten)."""
    return write_new_dir(out, project_files(), None, "name a new directory, or empty this one first")
