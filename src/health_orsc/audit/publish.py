"""publish: a snapshot, as it is, to a dataset repo on the Hugging Face Hub.

`orsc publish SNAPSHOT --repo ORG/NAME [--private] [--gated]` uploads the snapshot's files
unchanged, in one commit, so that a clone of the repo verifies with the snapshot's digest
(`orsc verify` ignores only what a clone adds: `.git/`, `.gitattributes`,
`.cache/huggingface/`). The snapshot is ready for the Hub as it was written (schema 4 on):
its card has a content warning, typed parquet configs (a `test` split per category and
`all`), the access prompt gating shows and a citation, with the validity report's figures
when it is a validation snapshot; croissant.json describes its parquet files.

Before any upload: the snapshot must verify and be publishable, a token must be found
(`HF_TOKEN`, or huggingface_hub's stored login; it is passed to the Hub and never written
or logged), and the repo must be new, hold only the Hub's initial `.gitattributes`, or
already hold this very snapshot (then nothing is uploaded). The Hub's address is
huggingface_hub's: `HF_ENDPOINT`, default https://huggingface.co.

Example:
    result = publish(Path("outputs/snapshots/v1"), "my-org/health-orsc-v1", private=False, gated=True)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel

from health_orsc.audit.verify import open_verified
from health_orsc.core.errors import InputError
from health_orsc.snapshot.compat import publishable
from health_orsc.snapshot.store import MANIFEST

HUB_OWN_FILES = {".gitattributes"}  # what the Hub puts in a new repo
REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"


class PublishResult(BaseModel):
    """Schema of `orsc publish --json`."""

    snapshot: str
    digest: str
    repo: str
    url: str
    commit: str | None   # None: the repo already held this snapshot; nothing was uploaded
    files: int
    private: bool
    gated: bool


def git_blob_id(path: Path) -> str:
    """A file's git blob id (what the Hub lists as a file's `oid`)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def hub_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise InputError(None, "HF_TOKEN", "no Hugging Face token: HF_TOKEN is not set and there is no"
                         " stored login", "set HF_TOKEN to a token with write access, or run `hf auth login`")
    return token


def publish(snapshot_path: Path, repo: str, private: bool = False, gated: bool = False) -> PublishResult:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    if not re.match(REPO_ID, repo):
        raise InputError(None, "--repo", f"'{repo}' is not a repo id",
                         "pass ORG/NAME, e.g. my-org/health-orsc-v1")
    snap = open_verified(snapshot_path, "publish", "SNAPSHOT")
    m = snap.manifest
    if not publishable(m):
        raise InputError(snap.path, "SNAPSHOT", "was written before snapshots were ready to publish (schema"
                         f" version {m.schema_version}: no per-category parquet, croissant.json or content"
                         f" warning)", f"write it again: `orsc build --base {snap.path} --name NEW` carries"
                         " every category over unchanged")
    api = HfApi(token=hub_token())
    files = [*m.files, MANIFEST]  # exactly the snapshot's files (not a clone's metadata)
    result = PublishResult(snapshot=str(snap.path), digest=m.digest, repo=repo, commit=None,
                           url=f"{api.endpoint}/datasets/{repo}", files=len(files), private=private,
                           gated=gated)
    try:
        remote = {f.path: f.blob_id for f in api.list_repo_tree(repo, repo_type="dataset", recursive=True)
                  if hasattr(f, "blob_id")}
    except RepositoryNotFoundError:
        remote = None
    others = sorted(set(remote or {}) - HUB_OWN_FILES)
    if others and remote and remote.get(MANIFEST) == git_blob_id(snap.path / MANIFEST):
        return result  # published before: the MANIFEST names every file by its sha256
    if others:
        raise InputError(None, "--repo", f"{repo} already holds other files ({len(others)}, e.g. {others[0]})"
                         " than this snapshot",
                         "publish to a new repo; a published snapshot is never overwritten")
    if remote is None:
        api.create_repo(repo, repo_type="dataset", private=private)
    commit = api.upload_folder(folder_path=snap.path, repo_id=repo, repo_type="dataset", allow_patterns=files,
                               commit_message=f"health-orsc snapshot {snap.path.name} ({m.digest})")
    if gated:
        api.update_repo_settings(repo, gated="auto", repo_type="dataset")
    return result.model_copy(update={"commit": commit.oid})
