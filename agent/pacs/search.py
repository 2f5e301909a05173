"""QIDO-RS: find studies, their series and their instances.

``StudyMatch.patient_name`` / ``patient_id`` are shown to the clinician who searched, and go
nowhere else: not into a session, a log, the audit trail or a model's prompt.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from agent.pacs.client import PacsConnection, PacsError, PacsNotFoundError, match_value

#: Results of one search; the clinician narrows the query rather than paging through more.
SEARCH_LIMIT = 100
#: Series that hold no image to open (reports, presentation states, key-object notes, documents...).
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD",
                                  "RTDOSE", "FID", "ECG", "HD", "AU", "PLAN"})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")

_STUDY_FIELDS = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                 "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientName", "PatientID", "StudyTime"]
_SERIES_FIELDS = ["SeriesDescription", "SeriesNumber", "Modality", "NumberOfSeriesRelatedInstances",
                  "BodyPartExamined"]
_INSTANCE_FIELDS = ["SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"]


@dataclass(frozen=True)
class StudyQuery:
    patient_id: str | None = None
    patient_name: str | None = None
    accession: str | None = None
    modality: str | None = None
    date: str | None = None  # YYYYMMDD, or a range YYYYMMDD-YYYYMMDD (either end may be open)
    description: str | None = None

    def filters(self) -> dict[str, str]:
        """QIDO matching keys; raises ``PacsError`` for a date that is not one."""
        wanted = {"PatientID": self.patient_id, "PatientName": _name_pattern(self.patient_name),
                  "AccessionNumber": self.accession, "ModalitiesInStudy": (self.modality or "").upper() or None,
                  "StudyDescription": self.description}
        filters = {key: match_value(value) for key, value in wanted.items() if value and value.strip()}
        if self.date:
            filters["StudyDate"] = study_date_range(self.date)
        return filters


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    study_date: str
    modalities: list[str]
    description: str
    series: int
    instances: int
    accession: str
    patient_name: str  # for the clinician only
    patient_id: str  # for the clinician only

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SeriesMatch:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    instances: int
    body_part: str = ""  # BodyPartExamined, when the PACS gives it

    @property
    def is_image(self) -> bool:
        return self.modality.upper() not in NON_IMAGE_MODALITIES

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label(), "is_image": self.is_image}

    def label(self) -> str:
        number = f"#{self.number} " if self.number is not None else ""
        return f"{number}{self.modality} {self.description or '(no description)'} · {self.instances} image(s)"


@dataclass(frozen=True)
class InstanceMatch:
    sop_uid: str
    sop_class_uid: str
    number: int | None
    rows: int
    columns: int
    frames: int

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * self.frames


def search_studies(connection: PacsConnection, query: StudyQuery, *, limit: int = SEARCH_LIMIT) -> list[StudyMatch]:
    filters = query.filters()
    found = connection.run(lambda client: client.search_for_studies(
        search_filters=filters, fields=_STUDY_FIELDS, limit=limit), "search the PACS for studies")
    matches = [_study(item) for item in found]
    return sorted(matches, key=lambda m: m.study_date, reverse=True)


def study(connection: PacsConnection, study_uid: str) -> StudyMatch:
    """The study ``study_uid``; ``PacsError`` when the PACS does not have it."""
    check_uid(study_uid)
    found = connection.run(lambda client: client.search_for_studies(
        search_filters={"StudyInstanceUID": study_uid}, fields=_STUDY_FIELDS), "look up the study")
    if not found:
        raise PacsNotFoundError(f"The PACS has no study {study_uid}.")
    return _study(found[0])


def series_of(connection: PacsConnection, study_uid: str) -> list[SeriesMatch]:
    check_uid(study_uid)
    found = connection.run(lambda client: client.search_for_series(study_uid, fields=_SERIES_FIELDS),
                           "list the study's series")
    series = [SeriesMatch(study_uid=study_uid, series_uid=_text(item, "0020000E"), modality=_text(item, "00080060"),
                          description=_text(item, "0008103E"), number=_number(item, "00200011"),
                          instances=_number(item, "00201209") or 0, body_part=_text(item, "00180015").upper())
              for item in found]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0))


def instances_of(connection: PacsConnection, study_uid: str, series_uid: str) -> list[InstanceMatch]:
    check_uid(study_uid)
    check_uid(series_uid)
    found = connection.run(lambda client: client.search_for_instances(
        study_uid, series_uid, fields=_INSTANCE_FIELDS, get_remaining=True), "list the series' images")
    instances = [InstanceMatch(sop_uid=_text(item, "00080018"), sop_class_uid=_text(item, "00080016"),
                               number=_number(item, "00200013"), rows=_number(item, "00280010") or 0,
                               columns=_number(item, "00280011") or 0, frames=_number(item, "00280008") or 1)
                 for item in found]
    return sorted(instances, key=lambda i: (i.number is None, i.number or 0, i.sop_uid))


def check_uid(uid: str) -> str:
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise PacsError(f"'{uid}' is not a DICOM UID (digits separated by dots, at most 64 characters).")
    return uid


def study_date_range(text: str) -> str:
    """``YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD`` (an open end allowed), checked to be real dates."""
    text = text.strip()
    match = _DATE.match(text)
    if not match or not (match.group(1) or match.group(3)) or (match.group(1) and match.group(3) and not match.group(2)):
        raise PacsError(f"'{text}' is not a study date: give YYYYMMDD or a range YYYYMMDD-YYYYMMDD.")
    for day in (match.group(1), match.group(3)):
        if day:
            try:
                date(int(day[:4]), int(day[4:6]), int(day[6:]))
            except ValueError:
                raise PacsError(f"'{day}' is not a calendar date (YYYYMMDD).") from None
    if match.group(1) and match.group(3) and match.group(1) > match.group(3):
        raise PacsError(f"The date range '{text}' ends before it starts.")
    return text


def _name_pattern(name: str | None) -> str | None:
    """A clinician's way of writing a name ("Doe, John", "DOE^JOHN", "doe john") as a DICOM
    pattern: the parts in order with anything between them (``DOE*JOHN``)."""
    if not name or not name.strip():
        return None
    parts = [part for part in re.split(r"[\s,^]+", name.strip()) if part]
    return "*".join(parts)


def _study(item: dict[str, Any]) -> StudyMatch:
    return StudyMatch(study_uid=_text(item, "0020000D"), study_date=_text(item, "00080020"),
                      modalities=[str(v) for v in _values(item, "00080061")], description=_text(item, "00081030"),
                      series=_number(item, "00201206") or 0, instances=_number(item, "00201208") or 0,
                      accession=_text(item, "00080050"), patient_name=_person(item, "00100010"),
                      patient_id=_text(item, "00100020"))


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def _text(item: dict[str, Any], tag: str) -> str:
    values = _values(item, tag)
    return str(values[0]) if values else ""


def _number(item: dict[str, Any], tag: str) -> int | None:
    try:
        return int(_text(item, tag))
    except ValueError:
        return None


def _person(item: dict[str, Any], tag: str) -> str:
    """DICOM's ``FAMILY^GIVEN^MIDDLE`` as "FAMILY, GIVEN MIDDLE"."""
    values = _values(item, tag)
    alphabetic = values[0].get("Alphabetic", "") if values and isinstance(values[0], dict) else ""
    family, *given = alphabetic.split("^")
    given_text = " ".join(part for part in given[:3] if part)
    return f"{family}, {given_text}" if given_text else family
