"""`orsc init` and the packaged defaults: a project of one's own, and where outputs go."""

from __future__ import annotations

from health_orsc.cli import main
from health_orsc.core.config import DATA_DIR, DEFAULT_CONFIG, load_config
from health_orsc.inputs.load import load_inputs


def test_init_writes_a_project_that_loads_from_its_own_files(tmp_path, capsys):
    assert main(["init", str(tmp_path / "demo")]) == 0
    demo = tmp_path / "demo"
    assert "orsc build --config" in capsys.readouterr().out
    cfg = load_config(demo / "config.yaml")
    assert (cfg.seeds_dir, cfg.templates_dir, cfg.outputs_dir) == (
        demo / "seeds", demo / "prompts_templates", demo / "outputs")
    inputs = load_inputs(cfg, None)
    assert len(inputs.categories) == 7
    shipped = DATA_DIR / "seeds" / "self_harm.yaml"
    assert (demo / "seeds" / "self_harm.yaml").read_bytes() == shipped.read_bytes()
    # the classifier juror's model, copied too
    assert cfg.classifier_dir("screen") == demo / "classifiers" / "health-gold"
    shipped = DATA_DIR / "classifiers" / "health-gold" / "classifier.json"
    assert (cfg.classifier_dir("screen") / "classifier.json").read_bytes() == shipped.read_bytes()
    # the same settings as the default config, but for the paths pointing at the copies
    default = load_config(DEFAULT_CONFIG)
    paths = {"seeds_dir", "templates_dir", "outputs_dir"}
    mine, theirs = cfg.model_dump(exclude=paths), default.model_dump(exclude=paths)
    assert mine["roles"]["screen"].pop("classifier") == "classifiers/health-gold"
    assert theirs["roles"]["screen"].pop("classifier") == "../classifiers/health-gold"
    assert mine == theirs


def test_init_never_overwrites(tmp_path, capsys):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "config.yaml").write_text("mine\n")
    assert main(["init", str(demo)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not an empty directory" in err and str(demo) in err
    assert [p.name for p in demo.iterdir()] == ["config.yaml"]
    assert (demo / "config.yaml").read_text() == "mine\n"


def test_the_default_config_writes_to_the_current_directory(tmp_path, monkeypatch):
    """The default config lives in the package, where nothing may be written."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.outputs_dir == tmp_path / "outputs"
    assert cfg.seeds_dir == DATA_DIR / "seeds"
