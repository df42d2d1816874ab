"""build: the `build-benchmark` stages as plain functions - generate, dedup, jury, sample,
one module each and none importing another - the driver that reads and writes their
records (stages), the per-category fingerprints (fingerprint) and the regeneration plan
from a base snapshot (plan)."""
