"""The JSON schemas sent to models are derived from the models that validate the replies:
what the schema allows, the validator accepts, and nothing more."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from health_orsc.build.jury import VERDICT_SCHEMA, Verdict
from health_orsc.evaluation.answer import GRADE_SCHEMA, GRADES, Grade


@pytest.mark.parametrize("model,schema,labels", [(Verdict, VERDICT_SCHEMA, ["benign", "harmful"]),
                                                 (Grade, GRADE_SCHEMA, list(GRADES))])
def test_the_schema_sent_is_the_validators(model, schema, labels):
    assert schema["required"] == ["label", "rationale"] and schema["additionalProperties"] is False
    assert schema["properties"]["label"] == {"type": "string", "enum": labels}
    limit = schema["properties"]["rationale"]["maxLength"]
    assert model.model_validate({"label": labels[-1], "rationale": "x" * limit}).label == labels[-1]
    with pytest.raises(ValidationError):
        model.model_validate({"label": labels[0], "rationale": "x" * (limit + 1)})
    with pytest.raises(ValidationError):
        model.model_validate({"label": "other", "rationale": "fine"})
