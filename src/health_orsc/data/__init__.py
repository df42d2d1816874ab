"""The shipped defaults, as package data: configs/default.yaml, seeds/, prompts_templates/
and gold/ (labelled prompts and answers for `orsc calibrate` and `orsc grade`)."""
