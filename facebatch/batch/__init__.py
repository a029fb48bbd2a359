"""The kernel every batch job shares (preprocess, annotate): pure helpers, no job of its own.

- :mod:`.listing`: what identifies an input's version (ETag, mtime) and its fingerprint.
- :mod:`.shards`: cutting sorted inputs into shards, part names, done-markers and ``--resume`` plans.
- :mod:`.retry`: backoff on transient storage errors, and the batch-then-one-by-one fallback.
- :mod:`.write`: atomic file writes (one test for an object store, :func:`~.write.is_local`).
- :mod:`.sink`: where rows go (:class:`~.sink.Sink`; :class:`~.sink.ParquetSink` by default).
- :mod:`.check`: rows in equal rows out, as sets of paths.
- :mod:`.workers`: the actor pool from the cluster's CPUs, GPUs and nodes.
- :mod:`.progress`: progress lines and bars, per-step clocks.
- :mod:`.summary`: finished shards as they come back, rates and counts; the exit status of a finished run.
- :mod:`.errors`: :class:`~.errors.JobFailed`, how worker failures reach the driver, the exit statuses.
- :mod:`.rerun`: ``python -m facebatch.batch.rerun``: run a job again while it exits 75; submit it to a
  Ray cluster and exit with the job's own status (the schedulers' side).

Imports nothing from the jobs (nor torch); Ray only inside the functions that need it.
"""
