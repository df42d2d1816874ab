"""runtime: the process around the work - live progress and what the terminal shows
(progress, terminal), the child processes a command starts and must stop (procs) and its
allocator (memory). It never shapes a record, so no fingerprint hashes it."""
