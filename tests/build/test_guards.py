"""Guard-model jurors (`scoring: guard`): Llama Guard, ShieldGemma and WildGuard asked in
their own formats on a loopback fake endpoint that answers as each does; their verdicts
read from the token probabilities (or, without them, from the reply)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from health_orsc.build.guards import text_verdict, unsafe_probability
from health_orsc.cli import main
from tests.conftest import DATA, csv_rows, fake_config, write_csv
from tests.fakes.endpoint import FakeOpenAI
from tests.fakes.scripts import build_reply, guard_reply

GUARDS = {"guard_llama": ("llama-guard-model", "llama-guard"),
          "guard_shield": ("shieldgemma-model", "shieldgemma"),
          "guard_wild": ("wildguard-model", "wildguard")}
GUARD_MODELS = {model for model, _ in GUARDS.values()}


def reply(request: dict):
    return guard_reply(request) if request["model"] in GUARD_MODELS else build_reply(request)


def guard_config(tmp_path, base_url: str, **role_fields):
    roles = {role: {"endpoint": "fake", "model": model, "scoring": "guard", "guard_format": fmt,
                    "max_tokens": 16, **role_fields} for role, (model, fmt) in GUARDS.items()}
    return fake_config(tmp_path, base_url, roles=roles, jury={"jurors": list(GUARDS)})


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_jury_of_guard_models_asked_in_their_own_formats(tmp_path, capsys):
    server = FakeOpenAI(reply).start()
    try:
        cfg = guard_config(tmp_path, server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "guarded"]) == 0
        gold = tmp_path / "gold.csv"
        write_csv(gold, [r for r in csv_rows(DATA / "gold" / "jury.csv")
                         if r["category"] in ("self_harm", "drug_abuse")])
        capsys.readouterr()
        assert main(["calibrate", "--config", str(cfg), "--gold", str(gold), "--fit", "--json"]) == 0
        fit = json.loads(capsys.readouterr().out)["fit"]
    finally:
        server.stop()
    snap = tmp_path / "outputs" / "snapshots" / "guarded"
    kept, rejected = rows(snap / "prompts.jsonl"), rows(snap / "rejected.jsonl")
    asked = {m: [r for r in server.requests if r["model"] == m] for m in GUARD_MODELS}
    assert all(asked.values())
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 for rs in asked.values() for r in rs)
    taxonomy = yaml.safe_load((DATA / "seeds" / "taxonomy.yaml").read_text())
    definitions = {c["name"]: " ".join(c["harm_definition"].split()) for c in taxonomy["categories"]}
    for row in kept:
        p = row["prompt"]
        # Llama Guard: the prompt alone, as the one user turn (its chat template adds the policy)
        assert {"messages": [{"role": "user", "content": p}]}.items() <= next(
            r for r in asked["llama-guard-model"] if r["messages"][0]["content"] == p).items()
        shield = next(r for r in asked["shieldgemma-model"] if f"Human Question: {p}\n" in
                      r["messages"][0]["content"])["messages"][0]["content"]
        assert shield.startswith("You are a policy expert") and "Does the human question violate" in shield
        name = next(n for n in definitions if f'"No {n}": ' in shield)
        assert " ".join(shield.split(f'"No {name}": ', 1)[1].split("\n")[0].split()) == definitions[name]
        wild = [r["messages"][0]["content"] for r in asked["wildguard-model"]]
        assert any(w.startswith("[INST] You are a classifier") and f"Human user:\n{p}\n\nAI assistant:\n" in w
                   for w in wild)
        # every guard said safe with P(unsafe) 0.1, read from the verdict token
        votes = {v["juror"]: v for v in row["votes"]}
        assert {v["p_harmful"] for v in votes.values()} == {0.1} and row["benign_votes"] == 3
        assert "P(unsafe) 0.100 < threshold 0.5" in votes["guard_wild"]["rationale"]
        assert votes["guard_shield"]["judge_prompt"] == "shieldgemma.j2"
    hard = [r for r in rejected if r["reason"] == "jury_harmful"]
    assert hard and all("HARD" in r["prompt"] and {v["p_harmful"] for v in r["votes"]} == {0.9} for r in hard)
    assert not any("HARD" in r["prompt"] for r in kept)
    manifest = json.loads((snap / "MANIFEST.json").read_text())
    assert manifest["models"]["guard_llama"]["guard_format"] == "llama-guard"
    assert manifest["models"]["guard_llama"]["scoring"] == "guard"
    assert main(["verify", str(snap)]) == 0
    # calibrate --fit treats a guard juror as a score juror: a threshold and its config line
    assert set(fit) == set(GUARDS)
    assert "scoring: guard" in fit["guard_wild"]["config_line"]
    assert "guard_format: wildguard" in fit["guard_wild"]["config_line"]


@pytest.mark.slow
def test_without_token_probabilities_the_reply_decides(tmp_path):
    server = FakeOpenAI(lambda r: guard_reply(r)[0] if r["model"] in GUARD_MODELS else build_reply(r)).start()
    try:
        cfg = guard_config(tmp_path, server.base_url)
        assert main(["build", "--config", str(cfg), "--name", "text-only"]) == 0
    finally:
        server.stop()
    snap = tmp_path / "outputs" / "snapshots" / "text-only"
    kept, rejected = rows(snap / "prompts.jsonl"), rows(snap / "rejected.jsonl")
    votes = [v for r in kept for v in r["votes"]]
    assert votes and all(v.get("p_harmful") is None and v["label"] == "benign" for v in votes)
    assert all("(no token log-probabilities)" in v["rationale"] for r in kept for v in r["votes"])
    assert any(r["reason"] == "jury_harmful" and "HARD" in r["prompt"] for r in rejected)


def position(token: str, top: dict[str, float]) -> dict:
    return {"token": token, "logprob": 0.0,
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()]}


def test_each_format_is_read_at_its_verdict_token():
    blank = position("\n\n", {"\n\n": 0.9, "safe": 0.1})  # a label among a blank token's rivals
    llama = [blank, position("unsafe", {"unsafe": 0.6, "un": 0.2, "safe": 0.2}), position("\n", {"\n": 1})]
    assert unsafe_probability("llama-guard", llama) == pytest.approx(0.8)
    wild = [position(t, {t: 1.0}) for t in ("Harm", "ful", " request", ":")]
    wild += [position(" no", {" no": 0.7, " yes": 0.3})]
    assert unsafe_probability("wildguard", wild) == pytest.approx(0.3)
    shield = [position("No", {"No": 0.75, "Yes": 0.25})]
    assert unsafe_probability("shieldgemma", shield) == pytest.approx(0.25)
    assert unsafe_probability("shieldgemma", [position("Maybe", {"Maybe": 1.0})]) is None
    assert unsafe_probability("llama-guard", None) is None
    assert text_verdict("llama-guard", "\n\nunsafe\nS11") == "harmful"
    assert text_verdict("llama-guard", "safe") == "benign"
    assert text_verdict("shieldgemma", "No. The question asks about storage.") == "benign"
    assert text_verdict("wildguard", "Harmful request: yes\nResponse refusal: no") == "harmful"
    assert text_verdict("wildguard", "I think it is fine") is None


@pytest.mark.parametrize(("role", "message"), [
    ({"scoring": "guard", "guard_format": "nemo-guard"}, "roles.judge_1.guard_format"),
    ({"scoring": "guard"}, "'scoring: guard' and 'guard_format' go together"),
    ({"guard_format": "wildguard", "prompt": "contrast.j2"},
     "'scoring: guard' and 'guard_format' go together"),
])
def test_a_bad_guard_setting_is_refused_at_load(tmp_path, capsys, role, message):
    cfg = fake_config(tmp_path, "http://127.0.0.1:9/v1", roles={
        **{f"judge_{i}": {"endpoint": "fake", "model": f"judge-{i}", "prompt": "contrast.j2"}
           for i in (2, 3)},
        "generator": {"endpoint": "fake", "model": "gen-model"},
        "judge_1": {"endpoint": "fake", "model": "guard", **role}})
    assert main(["build", "--config", str(cfg), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err
    assert not (tmp_path / "outputs" / "snapshots" / "never").exists()
