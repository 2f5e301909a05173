"""Pre-read: every new study on the PACS analysed before a clinician opens it.

- ``ledger.py`` — the job ledger in Loupe's own database (SQLite or PostgreSQL), the source of
  truth of what was done: one row per (study, image instances, analysis version), claimed with a
  lease, so a lost broker message, a duplicate trigger or a re-sent study never makes a second
  result and never loses one.
- ``job.py`` — what one job does: retrieve the study's largest image series, analyse it in a
  pre-read session of the session store (owner ``loupe-preread``), draft the report, finish.
- ``worklist.py`` — the clinician's worklist (STAT, then the strongest finding, then arrival)
  and their own session opened from a done pre-read, as a copy of its session.
- ``runner.py`` — who runs jobs: the local process pool (no broker), or Celery when
  ``LOUPE_BROKER_URL`` is set (``celery_app.py``).
"""
