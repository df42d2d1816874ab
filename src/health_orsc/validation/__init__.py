"""validation: people's labels and what they say - blind annotation tasks (annotate), the
labels read back (labels), the validity report and the validation snapshot (validity),
and the jury measured and calibrated on labelled prompts (calibrate)."""
