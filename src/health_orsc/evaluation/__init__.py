"""evaluation: a panel of models on a snapshot - answers and grades (answer), the grader
checked against people (grade), the metrics (scores), the run's files (run), report.html
(report) and Health-ORSC-Bench's field layout (exports)."""
