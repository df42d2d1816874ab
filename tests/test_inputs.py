"""Bad input stops the build before any model call: one clear message, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from tests.conftest import REPO, fake_config


def _build_with_edited_input(tmp_path: Path, capsys, fake_llm, rel: str, edit) -> str:
    """Copy seeds/ and prompts_templates/, rewrite one file with `edit(text)`, build,
    check the build was refused with nothing written, and return stderr."""
    seeds, templates = tmp_path / "seeds", tmp_path / "prompts_templates"
    shutil.copytree(REPO / "seeds", seeds)
    shutil.copytree(REPO / "prompts_templates", templates)
    target = tmp_path / rel
    target.write_text(edit(target.read_text()))
    cfg = fake_config(tmp_path, fake_llm.base_url, seeds_dir=str(seeds), templates_dir=str(templates))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    return err


def _build(capsys, config: Path, *extra: str) -> tuple[int, str]:
    rc = main(["build", "--config", str(config), *extra])
    return rc, capsys.readouterr().err


def _edit(cfg: Path, change) -> Path:
    """Apply `change(data)` to a config file in place."""
    data = yaml.safe_load(cfg.read_text())
    change(data)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _assert_rejected(rc: int, tmp_path: Path, fake_llm) -> None:
    assert rc == 2
    assert not (tmp_path / "outputs").exists(), "bad input must not write anything under outputs/"
    assert fake_llm.chat_count == 0


def test_missing_config_field_names_file_and_field(tmp_path, capsys, fake_llm):
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url), lambda d: d["roles"]["judge_2"].pop("model"))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "config.yaml" in err and "roles.judge_2.model" in err and "is missing" in err
    assert "fix:" in err


def test_wrong_type_in_config(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url, dedup={"threshold": "high"})
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "dedup.threshold" in err and "'high'" in err


def test_unknown_category_on_command_line(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url)
    rc, err = _build(capsys, cfg, "--categories", "self_harm,cardiology")
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "--categories" in err and "unknown category 'cardiology'" in err
    assert "drug_abuse" in err  # the fix lists the known ids


def test_unknown_category_in_config(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url, categories=["self_harm", "dermatology"])
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "config.yaml" in err and "field 'categories'" in err and "dermatology" in err


def test_seed_topic_missing_slot(tmp_path, capsys, fake_llm):
    def drop_persona(text):
        data = yaml.safe_load(text)
        del data["topics"][3]["slots"]["persona"]
        return yaml.safe_dump(data, sort_keys=False)

    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "seeds/drug_abuse.yaml", drop_persona)
    assert "drug_abuse.yaml" in err and "topics.3.slots" in err and "persona" in err


def test_seed_file_with_wrong_category(tmp_path, capsys, fake_llm):
    err = _build_with_edited_input(
        tmp_path, capsys, fake_llm, "seeds/self_harm.yaml",
        lambda t: t.replace("category: self_harm", "category: drug_abuse"))
    assert "self_harm.yaml" in err and "field 'category'" in err


def test_undefined_template_variable(tmp_path, capsys, fake_llm):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "prompts_templates/generate/medium.j2",
                                   lambda _: "About {{ subjekt }}: {{ question }}?\n")
    assert "medium.j2" in err and "subjekt" in err and "undefined" in err


@pytest.mark.parametrize("escape", [
    "{{ question.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_template_cannot_reach_python_internals(tmp_path, capsys, fake_llm, escape):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "prompts_templates/generate/hard.j2",
                                   lambda _: escape + "\n")
    assert "hard.j2" in err and ("sandbox" in err or "undefined" in err)


def test_role_names_missing_endpoint(tmp_path, capsys, fake_llm):
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url),
                lambda d: d["roles"]["judge_3"].update(endpoint="vllm"))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "roles.judge_3.endpoint" in err and "'vllm'" in err


def test_missing_api_key_variable(tmp_path, capsys, fake_llm, monkeypatch):
    monkeypatch.delenv("ORSC_TEST_KEY", raising=False)
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url),
                lambda d: d["endpoints"]["fake"].update(api_key_env="ORSC_TEST_KEY"))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "ORSC_TEST_KEY" in err and "not set" in err


def test_config_file_not_found(tmp_path, capsys):
    rc, err = _build(capsys, tmp_path / "nope.yaml")
    assert rc == 2 and "nope.yaml" in err and "not found" in err
    assert list(tmp_path.iterdir()) == []


def test_malformed_taxonomy(tmp_path, capsys, fake_llm):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "seeds/taxonomy.yaml",
                                   lambda t: t.replace("id: mental_abuse", "id: mental-abuse"))
    assert "taxonomy.yaml" in err and "categories.5.id" in err and "mental-abuse" in err


def test_template_with_a_type_error(tmp_path, capsys, fake_llm):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "prompts_templates/generate/easy.j2",
                                   lambda _: "{{ question + 1 }}\n")
    assert "easy.j2" in err and "TypeError" in err


def test_a_key_pasted_as_api_key_env_is_refused_and_not_echoed(tmp_path, capsys, fake_llm):
    pasted = "0123456789abcdef0123456789abcdef"
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url),
                lambda d: d["endpoints"]["fake"].update(api_key_env=pasted))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "endpoints.fake.api_key_env" in err and pasted not in err
