"""STOW-RS: store Loupe's results (SRs, the PDF) in the source study on the PACS, then confirm
by a QIDO search that each one arrived."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset, dcmread

from agent.pacs.client import PacsConnection, PacsError
from agent.pacs.search import check_uid


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    description: str  # what it is, for the clinician ("measurement SR", "PDF")


def store_in_study(connection: PacsConnection, study_uid: str, documents: Sequence[tuple[str, Dataset]]
                   ) -> list[StoredInstance]:
    """Store ``(description, dataset)`` pairs, all of study ``study_uid``; return them once a
    QIDO search finds every one. Raises ``PacsError`` when the PACS refuses any of them or a
    stored one cannot be found afterwards (the local files are the caller's to keep)."""
    check_uid(study_uid)
    strangers = [d.SOPInstanceUID for _, d in documents if d.StudyInstanceUID != study_uid]
    if strangers:
        raise PacsError("A document to store belongs to another study; nothing was sent.")
    datasets = [_as_file(dataset) for _, dataset in documents]
    response = connection.run(lambda client: client.store_instances(datasets, study_instance_uid=study_uid),
                              f"store {len(datasets)} document(s) in the study")
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
        raise PacsError(f"The PACS refused {len(failed)} of {len(datasets)} document(s) (failure reason "
                        f"{', '.join(reasons)}); the local files are kept.")
    stored = [StoredInstance(str(d.SOPInstanceUID), str(d.SeriesInstanceUID), str(d.SOPClassUID), description)
              for description, d in documents]
    _confirm(connection, study_uid, stored)
    return stored


def _confirm(connection: PacsConnection, study_uid: str, stored: Sequence[StoredInstance]) -> None:
    found: set[str] = set()
    for series_uid in sorted({s.series_instance_uid for s in stored}):
        listed = connection.run(lambda client, uid=series_uid: client.search_for_instances(
            study_uid, uid, fields=["SOPInstanceUID"], get_remaining=True), "confirm the stored documents")
        found |= {str(item.get("00080018", {}).get("Value", [""])[0]) for item in listed}
    missing = [s.description for s in stored if s.sop_instance_uid not in found]
    if missing:
        raise PacsError(f"The PACS accepted the upload but does not list {', '.join(missing)} in the study; "
                        "the local files are kept.")


def _as_file(dataset: Dataset) -> Dataset:
    """The data set as a whole DICOM file (preamble, "DICM", file meta): dicomweb-client writes
    what it is given, a PACS may store that as is, and a viewer (or dicomweb-client itself) then
    cannot read back a part without the "DICM" prefix."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return dcmread(io.BytesIO(buffer.getvalue()))
