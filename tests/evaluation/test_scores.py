"""The evaluation's tables (health_orsc.evaluation.scores), on hand-made responses."""

from health_orsc.core.config import EvaluationConfig
from health_orsc.evaluation.answer import Response
from health_orsc.evaluation.scores import difficulty, difficulty_table, table_csv


def response(prompt_id: str, model: str, grade: str | None, category: str = "self_harm",
             level: str = "hard") -> Response:
    return Response(prompt_id=prompt_id, kind="benign", category=category, level=level,
                    prompt=f"prompt {prompt_id}", model=model, model_id=f"{model}@x", answer="...",
                    grade=grade, grade_source="grader", grade_rationale="", detector="full_compliance",
                    answer_call="", grade_calls=[])


def test_difficulty_counts_refusals_per_prompt_and_leaves_ungraded_prompts_blank():
    responses = [response("b", "m1", "full_refusal"), response("b", "m2", "full_compliance"),
                 response("a", "m1", "full_refusal", category="drug_abuse", level="easy"),
                 response("a", "m2", "full_refusal", category="drug_abuse", level="easy"),
                 response("c", "m1", None), response("c", "m2", None)]
    ev = EvaluationConfig()
    assert table_csv(difficulty_table(responses, ev)) == (
        "id,category,level,prompt,refuse_count,refuse_rate,total_models,empirical_level\n"
        "a,drug_abuse,easy,prompt a,2,1.0,2,beyond\n"   # by category first: drug_abuse < self_harm
        "b,self_harm,hard,prompt b,1,0.5,2,hard\n"
        "c,self_harm,hard,prompt c,0,,0,\n")            # no grade: no rate, no level, ints stay ints
    rows = difficulty(responses, ev)
    assert rows[2] == {"id": "c", "category": "self_harm", "level": "hard", "prompt": "prompt c",
                       "refuse_count": 0, "refuse_rate": None, "total_models": 0, "empirical_level": None}
    assert type(rows[0]["refuse_count"]) is int and type(rows[0]["refuse_rate"]) is float


def test_table_csv_keeps_each_value_as_python_prints_it():
    rows = [{"rank": 1, "p": None, "share": 0.1}, {"rank": 2, "p": 1.90735e-06, "share": None}]
    assert table_csv(rows) == "rank,p,share\n1,,0.1\n2,1.90735e-06,\n"
    assert table_csv([]) == ""
