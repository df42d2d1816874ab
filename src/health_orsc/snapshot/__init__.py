"""snapshot: where snapshots live and what they hold - names, MANIFEST models and file
checks (store), the `Snapshot` handle that reads one (handle) and the atomic writer of a
new one with its dataset card (writer). Storage only: whether a snapshot verifies is
decided in audit/."""
