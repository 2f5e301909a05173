"""The patient's earlier studies on the PACS: the priors a study can be compared with.

Found by the study's Patient ID (exactly: a QIDO match may widen it) and a Study Date before the
study's own; listed with the same modality and body part first, then the same modality, each
group newest first, with the interval in days. The clinician sees the dates; only the interval
may cross to a cloud model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from agent.pacs.client import PacsConnection, PacsError
from agent.pacs.search import StudyMatch, StudyQuery, search_studies, series_of, study


@dataclass(frozen=True)
class Prior:
    match: StudyMatch
    interval_days: int
    same_modality: bool
    same_body_part: bool

    def as_json(self) -> dict[str, Any]:
        match = self.match
        return {"study_uid": match.study_uid, "study_date": match.study_date, "modalities": match.modalities,
                "description": match.description, "interval_days": self.interval_days,
                "same_modality": self.same_modality, "same_body_part": self.same_body_part,
                "series": match.series, "instances": match.instances}


def _day(study_date: str) -> date:
    return datetime.strptime(study_date[:8], "%Y%m%d").date()


def _body_parts(connection: PacsConnection, study_uid: str) -> set[str]:
    return {s.body_part for s in series_of(connection, study_uid) if s.is_image and s.body_part}


def priors_of(connection: PacsConnection, study_uid: str) -> list[Prior]:
    """The earlier studies of the patient of ``study_uid``, in the order of the module."""
    current = study(connection, study_uid)
    if not current.patient_id:
        raise PacsError(f"Study {study_uid} has no Patient ID, so the patient's earlier studies cannot be found.")
    if not current.study_date:
        raise PacsError(f"Study {study_uid} has no Study Date, so which studies came before it cannot be told.")
    day = _day(current.study_date)
    found = search_studies(connection, StudyQuery(patient_id=current.patient_id,
                                                  date=f"-{day - timedelta(days=1):%Y%m%d}"))
    earlier = [m for m in found if m.patient_id == current.patient_id and m.study_uid != study_uid and m.study_date
               and _day(m.study_date) < day]
    modalities = {m.upper() for m in current.modalities}
    parts = _body_parts(connection, study_uid)
    priors = [Prior(m, (day - _day(m.study_date)).days, bool(modalities & {x.upper() for x in m.modalities}),
                    bool(parts and parts & _body_parts(connection, m.study_uid))) for m in earlier]
    return sorted(priors, key=lambda p: (not (p.same_modality and p.same_body_part), not p.same_modality,
                                         p.interval_days))
