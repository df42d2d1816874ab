"""cache: the request cache (every model call's request and reply, keyed by what was
asked) and the embedding cache, in SQLite under outputs/cache/ or in PostgreSQL
(database), and `orsc cache migrate` between them (migrate)."""
