"""audit: what a user checks after the fact - a snapshot or evaluation run re-derived from
its files (verify, and the "must verify first" gate), what changed between two snapshots
(diff) and the full chain behind one prompt (provenance)."""
