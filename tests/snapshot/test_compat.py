"""Snapshots made before the package moved to src/health_orsc (tests/fixtures/snapshots/,
built and validated by the code at commit 8b0bb42, the last before the move) still verify,
with the digests that code printed, and still serve as bases, for annotation and for
provenance."""

from __future__ import annotations

import shutil

import pytest

from health_orsc.cli import main
from tests.conftest import REPO, fake_config
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply

pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "fixtures" / "snapshots"
DIGESTS = {"pre-package": "sha256:2c02db3f286fb27bf88b8a122c93b9dfc6860bb371670d1738701970d34b5ea2",
           "pre-package-validated":
               "sha256:c34e805f8773cf73fbfc84f450aa112d9ede3d34fef4e74ce2fbf5db5f161425"}


@pytest.mark.parametrize("name", list(DIGESTS))
def test_an_old_snapshot_verifies_with_its_digest(name, capsys):
    assert main(["verify", str(FIXTURES / name), "--digest", DIGESTS[name]]) == 0
    assert f"digest: {DIGESTS[name]}" in capsys.readouterr().out


def test_an_old_snapshot_is_a_base_annotates_and_traces(tmp_path, capsys):
    outputs = tmp_path / "outputs" / "snapshots"
    shutil.copytree(FIXTURES, outputs)
    server = FakeOpenAI(build_reply).start()
    try:
        cfg = fake_config(tmp_path, server.base_url)
        base = outputs / "pre-package"
        assert main(["build", "--config", str(cfg), "--base", str(base), "--name", "v2"]) == 0
    finally:
        server.stop()
    err = capsys.readouterr().err
    # the move changed every stage's code component once (and this fake endpoint's port, roles);
    # rubrics came after it: a snapshot without them records no rubric template
    assert ("self_harm: rebuilt (changed: code_dedup, code_generate, code_jury, roles, rubric_prompt)"
            in err)
    assert main(["diff", str(outputs / "pre-package"), str(outputs / "v2")]) == 0
    assert main(["annotate", str(outputs / "pre-package-validated"), "--out", str(tmp_path / "tasks")]) == 0
    prompt = (outputs / "pre-package-validated" / "validation_sample.csv").read_text().splitlines()[1]
    assert main(["provenance", prompt.split(",")[0], "--outputs", str(tmp_path / "outputs"),
                 "--snapshot", str(outputs / "pre-package-validated")]) == 0
    assert "human label in pre-package-validated" in capsys.readouterr().out
