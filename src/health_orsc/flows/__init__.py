"""flows: the Prefect flows `build-benchmark` and `evaluate-benchmark` - wiring only: tasks
at (stage x category) granularity over the library's plain functions."""
