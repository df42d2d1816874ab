"""Helpers the tests share: a scripted OpenAI-compatible server on loopback (endpoint), a
PostgreSQL server the tests start (postgres) and the scripted models' replies (scripts).
No test module imports another test module; they import from here."""
