"""A pre-read's draft stored in its study on the PACS (``LOUPE_PREREAD_SEND=sr,pdf``), as IHE AI
Results asks: ordinary DICOM objects in the study they describe, clearly a preliminary
automated result, and replaced — not piled up — when the study is pre-read again.

The objects are the same as a clinician's "Send to PACS" of a draft (the measurement and
narrative SRs, the Encapsulated PDF; ``agent.reports``), with their UIDs derived from the job
key under the ``2.25`` root: each kind's series UID from (study, image instances, analysis
version) alone, each instance UID from that and the run. A retried job (a worker killed after
storing) stores the very same instances again, which the PACS takes as already stored; a forced
re-run (``--force``) stores a newer instance in the same series (a higher Instance Number), so
viewers showing the newest show the new result and the study never gets a second set of series.
"""

from __future__ import annotations

import uuid

from agent.conversation import Conversation
from agent.pacs.send import StoredInstance
from agent.preread.ledger import JobKey
from agent.reports import export, pacs_documents, send_to_pacs
from tools.report.document import ReportError

KINDS = ("sr", "pdf")
#: The series descriptions say what the objects are before anyone opens them.
SERIES_DESCRIPTIONS = {"sr": "Loupe pre-read: PRELIMINARY automated result (SR)",
                       "pdf": "Loupe pre-read: PRELIMINARY automated result (PDF)"}


def kinds_to_send(setting: str) -> list[str]:
    """``LOUPE_PREREAD_SEND`` as a list of kinds; ``ReportError`` for an unknown one."""
    kinds = [kind.strip().lower() for kind in setting.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ReportError(f"LOUPE_PREREAD_SEND takes sr and pdf, not {', '.join(unknown)}.")
    return [kind for kind in KINDS if kind in kinds]


#: The namespace of the name-based UUIDs behind the derived UIDs.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:loupe:preread")


def derived_uid(*parts: object) -> str:
    """A UID under 2.25 (PS3.5 B.2: a UUID as a decimal integer) from ``parts``, through a
    name-based UUID: the same parts always give the same UID. (pydicom's ``generate_uid`` ignores
    its entropy sources under the 2.25 root and returns a random one.)"""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(map(str, parts))).int}"


def send_preread(conversation: Conversation, key: JobKey, run: int, kinds: list[str]) -> list[StoredInstance]:
    """Store the session's current draft as ``kinds`` in the study (see the module)."""
    files, notes = export(conversation, list(kinds))
    if notes:
        raise ReportError(f"The pre-read was not stored in the study: {notes[0]}")
    documents = pacs_documents(conversation, files)
    for file, dataset in documents:
        kind = "pdf" if file.name.endswith("-pdf.dcm") else "sr"
        part = "pdf" if kind == "pdf" else file.name.rsplit("-", 2)[-2]  # "measurements" or "narrative"
        dataset.SeriesInstanceUID = derived_uid(key.study_uid, key.instances, key.version, kind)
        dataset.SOPInstanceUID = derived_uid(key.study_uid, key.instances, key.version, part, run)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesDescription = SERIES_DESCRIPTIONS[kind]
        per_run = 2 if kind == "sr" else 1  # the two SRs share a series
        dataset.InstanceNumber = (run - 1) * per_run + int(dataset.get("InstanceNumber", 1) or 1)
    return send_to_pacs(conversation, documents, allow_draft=True)
