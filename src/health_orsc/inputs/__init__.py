"""inputs: the taxonomy, seed topics and Jinja2 templates (sandboxed), loaded and
validated before any model call; the contexts the templates are rendered with, and the
rubric templates that give every kept prompt its grading criteria."""
