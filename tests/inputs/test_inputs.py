"""Bad input stops the build before any model call: one clear message, exit 2, nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from health_orsc.cli import main
from tests.conftest import DATA, fake_config


def _build_with_edited_input(tmp_path: Path, capsys, fake_llm, rel: str, edit, **config) -> str:
    """Copy seeds/ and prompts_templates/, rewrite one file with `edit(text)` (or, if it
    returns bytes, with those bytes), build, check the build was refused with nothing
    written, and return stderr."""
    seeds, templates = tmp_path / "seeds", tmp_path / "prompts_templates"
    shutil.copytree(DATA / "seeds", seeds)
    shutil.copytree(DATA / "prompts_templates", templates)
    target = tmp_path / rel
    new = edit(target.read_text())
    target.write_bytes(new if isinstance(new, bytes) else new.encode())
    cfg = fake_config(tmp_path, fake_llm.base_url, seeds_dir=str(seeds), templates_dir=str(templates),
                      **config)
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "Traceback" not in err
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


@pytest.mark.parametrize(("role", "change", "field", "message"), [
    ("generator", {"scoring": "logprobs"}, "roles.generator.scoring", "is not a juror"),
    ("judge_2", {"threshold": 0.3}, "roles.judge_2.threshold",
     "applies to score jurors only"),
    ("judge_2", {"scoring": "logprobs", "threshold": 1.5}, "roles.judge_2.threshold",
     "less than or equal to 1"),
    ("judge_2", {"classifier": "clf"}, "roles.judge_2", "add 'scoring: classifier'"),
    ("judge_2", {"scoring": "classifier"}, "roles.judge_2", "names its model directory in 'classifier'"),
    ("generator", {"scoring": "classifier", "classifier": "clf", "endpoint": None, "model": None},
     "generation.role", "a classifier juror, which makes no model call"),
])
def test_a_misplaced_scoring_setting(tmp_path, capsys, fake_llm, role, change, field, message):
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url), lambda d: d["roles"][role].update(change))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert field in err and message in err, err


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


# -- every input checked before the first model call (issue 8.4) ----------------------

LATIN1 = "caf\u00e9".encode("latin-1")  # b"caf\xe9": not UTF-8


@pytest.mark.parametrize("rel", ["seeds/taxonomy.yaml", "seeds/self_harm.yaml",
                                 "prompts_templates/generate/easy.j2",
                                 "prompts_templates/judges/contrast.j2"])
def test_a_file_that_is_not_utf8(tmp_path, capsys, fake_llm, rel):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, rel, lambda t: t.encode() + b"\n# " + LATIN1)
    assert Path(rel).name in err and "is not UTF-8" in err and "save the file as UTF-8" in err


def test_a_config_that_is_not_utf8(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url)
    cfg.write_bytes(cfg.read_bytes() + b"# " + LATIN1 + b"\n")
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "config.yaml" in err and "is not UTF-8" in err


@pytest.mark.parametrize("bomb", ["{{ 'a' * 10**13 }}", "{{ 'a' | center(10**13) }}",
                                  "{{ '%9999999999s' % question }}",
                                  "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}"
                                  "{% endfor %}"])
def test_a_template_that_would_exhaust_memory(tmp_path, capsys, fake_llm, bomb):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "prompts_templates/generate/medium.j2",
                                   lambda _: bomb + "\n")
    assert "medium.j2" in err and "render limit" in err


@pytest.mark.parametrize("field,name", [
    ("generation.templates.easy[0]", "../../seeds/taxonomy.yaml"),
    ("generation.rewrite_prompt", "../../../../../../etc/passwd"),
    ("roles.judge_2.prompt", "../../../../../../etc/passwd"),
    ("roles.judge_1.prompt", "/etc/passwd"),
])
def test_a_template_name_may_not_leave_the_templates_dir(tmp_path, capsys, fake_llm, field, name):
    def point(d):
        if field.startswith("roles."):
            d["roles"][field.split(".")[1]]["prompt"] = name
        elif field == "generation.rewrite_prompt":
            d["generation"]["rewrite_prompt"] = name
        else:
            d["generation"]["templates"] = {"easy": [name], "medium": ["medium.j2"], "hard": ["hard.j2"]}
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url), point)
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert field in err and "points outside" in err and "root:" not in err  # nothing of the file shown


def test_a_dedup_model_path_that_does_not_exist(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url, dedup={"model_path": str(tmp_path / "no-model")})
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "dedup.model_path" in err and "no-model" in err


def test_an_outputs_dir_that_is_a_file(tmp_path, capsys, fake_llm):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    cfg = fake_config(tmp_path, fake_llm.base_url, outputs_dir=str(blocker / "outputs"))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "outputs_dir" in err and "is a file" in err and blocker.read_text() == "a file, not a directory"


@pytest.mark.parametrize("url", ["localhost:8000/v1", "api.openai.com/v1", "ftp://host/v1"])
def test_a_base_url_without_a_scheme(tmp_path, capsys, fake_llm, url):
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url),
                lambda d: d["endpoints"]["fake"].update(base_url=url))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "endpoints.fake.base_url" in err and "http://" in err


@pytest.mark.parametrize("args,field", [
    (["--name", "x" * 300], "--name"),
    (["--name", ""], "--name"),
    (["--categories", ","], "--categories"),
    (["--categories", ""], "--categories"),
])
def test_bad_names_and_category_lists_on_the_command_line(tmp_path, capsys, fake_llm, args, field):
    rc, err = _build(capsys, fake_config(tmp_path, fake_llm.base_url), *args)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert f"field '{field}'" in err and len(err) < 600


@pytest.mark.parametrize("rel,text", [
    ("seeds/taxonomy.yaml", "version: 1\nversion: 2\n"),
    ("seeds/drug_abuse.yaml", None),
])
def test_yaml_with_a_duplicate_key(tmp_path, capsys, fake_llm, rel, text):
    def duplicate(t):
        if text:
            return text + t.split("\n", 1)[1]
        return t.replace("    original_question:", "    topic: twice\n    original_question:", 1)
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, rel, duplicate)
    assert Path(rel).name in err and "duplicate key" in err


def test_a_config_with_a_duplicate_key(tmp_path, capsys, fake_llm):
    cfg = fake_config(tmp_path, fake_llm.base_url)
    cfg.write_text(cfg.read_text() + "outputs_dir: /tmp/elsewhere\n")
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "duplicate key 'outputs_dir'" in err


def test_a_message_never_echoes_a_huge_value(tmp_path, capsys, fake_llm):
    huge = ["padding " * 100] * 12_000  # ~10 MB of topics
    err = _build_with_edited_input(
        tmp_path, capsys, fake_llm, "seeds/self_harm.yaml",
        lambda t: yaml.safe_dump({"category": "self_harm", "topics": [{"topic": huge}]}))
    assert "self_harm.yaml" in err and "topics.0.topic" in err and len(err) < 2_000


def test_a_yaml_alias_bomb_gives_a_short_message(tmp_path, capsys, fake_llm):
    """`roles` is nine levels of nine references each (9**9 strings if expanded)."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url), lambda d: d.pop("roles"))
    cfg.write_text(cfg.read_text() + "roles: [" + ", ".join(levels) + "]\n")
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "config.yaml" in err and "field 'roles'" in err and len(err) < 2_000


@pytest.mark.parametrize("rel", ["prompts_templates/generate/medium.j2",
                                 "prompts_templates/judges/contrast.j2", "seeds/drug_abuse.yaml"])
def test_a_file_that_is_a_symlink_loop(tmp_path, capsys, fake_llm, rel):
    """A link to itself (through a second link): one message naming the file, exit 2."""
    seeds, templates = tmp_path / "seeds", tmp_path / "prompts_templates"
    shutil.copytree(DATA / "seeds", seeds)
    shutil.copytree(DATA / "prompts_templates", templates)
    target = tmp_path / rel
    target.unlink()
    target.symlink_to(target.with_name("loop"))
    target.with_name("loop").symlink_to(target.name)
    cfg = fake_config(tmp_path, fake_llm.base_url, seeds_dir=str(seeds), templates_dir=str(templates))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the error and its fix
    assert target.name in err


def test_a_bad_rubric_template_stops_the_build_before_any_call(tmp_path, capsys, fake_llm):
    err = _build_with_edited_input(tmp_path, capsys, fake_llm, "prompts_templates/rubrics/drug_abuse.j2",
                                   lambda text: text + "harm -20 worse: Something.\n")
    assert re.search(r"rubrics/drug_abuse\.j2: field 'rendered line \d+': is not a valid criterion", err)
    assert "(seed '" in err and "fix:" in err


@pytest.mark.parametrize(("change", "message"), [
    ({"extra_body": {"model": "other"}}, "may not set ['model']"),
    ({"extra_body": {"messages": [], "stream": True}}, "may not set ['messages', 'stream']"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"omit": ["messages"]}, "omit"),
])
def test_frontier_fields_that_cannot_work_are_refused_at_config_load(tmp_path, capsys, fake_llm, change,
                                                                    message):
    cfg = _edit(fake_config(tmp_path, fake_llm.base_url), lambda d: d["roles"]["generator"].update(change))
    rc, err = _build(capsys, cfg)
    _assert_rejected(rc, tmp_path, fake_llm)
    assert "config.yaml" in err and "roles.generator" in err and message in err, err


def test_stage_tasks_read_inputs_without_rendering_every_seed_again(tmp_path):
    """The build flow renders every template against every seed as it starts; its stage
    tasks read the same inputs without doing it again (minutes at a million candidates)."""
    from health_orsc.core.config import load_config
    from health_orsc.core.errors import InputError
    from health_orsc.inputs.load import load_inputs

    templates = tmp_path / "prompts_templates"
    shutil.copytree(DATA / "prompts_templates", templates)
    (templates / "generate" / "medium.j2").write_text("About {{ subjekt }}: {{ question }}?\n")
    config = load_config(fake_config(tmp_path, "http://127.0.0.1:9/v1", templates_dir=str(templates)))
    with pytest.raises(InputError, match="subjekt"):
        load_inputs(config)
    inputs = load_inputs(config, renders=False)
    assert inputs.seeds["self_harm"] and inputs.generation_templates["medium"][0].name.endswith("medium.j2")


def test_the_same_inputs_are_rendered_against_every_seed_once_per_process(tmp_path, monkeypatch):
    """`orsc build` checks the inputs, then its flow loads them again: the second check of
    the same content renders nothing; edited content is checked again."""
    from health_orsc.core.config import load_config
    from health_orsc.core.errors import InputError
    from health_orsc.inputs import load
    from health_orsc.inputs.templates import PromptTemplate

    templates = tmp_path / "prompts_templates"
    shutil.copytree(DATA / "prompts_templates", templates)
    config = load_config(fake_config(tmp_path, "http://127.0.0.1:9/v1", templates_dir=str(templates)))
    monkeypatch.setattr(load, "_RENDERED", set())
    renders = []
    real = PromptTemplate.render

    def counted(self, *args, **kwargs):
        renders.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PromptTemplate, "render", counted)
    load.load_inputs(config)
    first = len(renders)
    load.load_inputs(config)
    assert first > 0 and len(renders) == first
    (templates / "generate" / "medium.j2").write_text("About {{ subjekt }}: {{ question }}?\n")
    with pytest.raises(InputError, match="subjekt"):
        load.load_inputs(config)


def test_a_seed_file_is_parsed_once_per_content_and_again_once_edited(tmp_path):
    """Every stage task reads its category's seeds: the same file gives the same topics
    without a second parse, an edited one its new topics."""
    from health_orsc.inputs.load import load_seed_file

    seeds = tmp_path / "seeds"
    shutil.copytree(DATA / "seeds", seeds)
    first = load_seed_file(seeds, "self_harm", None)
    again = load_seed_file(seeds, "self_harm", 2)
    assert [s.id for s in again] == [s.id for s in first[:2]] and again[0] is first[0]  # not parsed again
    path = seeds / "self_harm.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(first[0].topic, "an edited topic", 1),
                    encoding="utf-8")
    edited = load_seed_file(seeds, "self_harm", None)
    assert edited[0].topic == "an edited topic" and edited[0].id != first[0].id
    assert [s.id for s in edited[1:]] == [s.id for s in first[1:]]
