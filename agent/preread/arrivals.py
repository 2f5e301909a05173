"""When has a study arrived? A study counts as arrived once its number of instances on the PACS
has not changed for a quiet time (``LOUPE_PREREAD_STABLE_S``), as MONAI Deploy's Informatics
Gateway waits between instances: there is no standard "received since" query, and a study is
stored one instance at a time, sometimes in halves minutes apart.

The tracker is plain bookkeeping over what successive polls saw; it forgets a study once it has
been handed on at that count, and hands it on again only when the count changes (a late series,
or Loupe's own report — which the job key leaves out, so the ledger answers "already done").
A restart forgets everything here: the next polls see each study again and wait one quiet time
more, and the ledger keeps a study from being analysed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Seen:
    instances: int
    unchanged_since: float


@dataclass
class ArrivalTracker:
    """Which studies have been quiet for ``stable_s`` seconds (times in seconds, any clock)."""

    stable_s: float
    _seen: dict[str, _Seen] = field(default_factory=dict)
    #: study UID -> the instance count it was handed on at.
    _handed_on: dict[str, int] = field(default_factory=dict)

    def observe(self, study_uid: str, instances: int, now: float) -> bool:
        """Record a poll's count for a study; True when it has just become stable at a count
        not yet handed on (the caller then enqueues it and calls ``handed_on``)."""
        seen = self._seen.get(study_uid)
        if seen is None or seen.instances != instances:
            seen = self._seen[study_uid] = _Seen(instances, now)
        quiet = now - seen.unchanged_since >= self.stable_s
        return quiet and self._handed_on.get(study_uid) != instances

    def stable_now(self, study_uid: str, instances: int, now: float) -> bool:
        """The PACS itself says the study is stable at ``instances`` (Orthanc's ``StableStudy``):
        record it as seen; True unless it was handed on at that count already."""
        seen = self._seen.get(study_uid)
        if seen is None or seen.instances != instances:
            self._seen[study_uid] = _Seen(instances, now)
        return self._handed_on.get(study_uid) != instances

    def handed_on(self, study_uid: str, instances: int) -> None:
        self._handed_on[study_uid] = instances

    def waiting(self) -> list[str]:
        """Studies seen but not yet handed on at their current count."""
        return sorted(uid for uid, seen in self._seen.items() if self._handed_on.get(uid) != seen.instances)
