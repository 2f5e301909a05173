"""De-identified export: a PS3.15 Basic Application Level Confidentiality Profile copy.

``deidentify(source, target, pseudonym_map=...)`` writes a de-identified copy of one DICOM file
or of a folder (mirrored file by file), and keeps the only original <-> pseudonym link in a
local JSON map.

What each file goes through:

- Table E.1-1 of PS3.15 (the dicom-anonymizer package's transcription of the standard, by
  table version ``PROFILE_TABLE``) decides each attribute's action, *at every nesting level*:
  X remove, Z empty, D dummy value, U UID pseudonym; sequences that are kept are cleaned item
  by item with the same table.
- Private attributes are removed (the profile's action for them is X).
- Beyond the table, any person name, date, time or free-text (LT/ST/UT) attribute it does not
  list is emptied: none is needed to display or measure, and vendors put identifiers there.
- Overlay planes are removed whole: the table removes their data, and an overlay without data
  is an invalid module.
- PatientName / PatientID become the patient's pseudonym (``LOUPE-`` + 8 hex digits); instance
  UIDs become ``2.25.<random 128-bit int>``. Both come from the pseudonym map, so one study gets
  the same pseudonyms in every run that uses the same map and references stay consistent.
- PatientIdentityRemoved, DeidentificationMethod and DeidentificationMethodCodeSequence
  (DCM 113100) are set.

Pixel data is copied byte for byte, so is everything needed to display and measure (spacing,
windowing, LUTs, photometric interpretation, geometry). The basic profile does not clean
pixels: files that may show burned-in names are listed in the report, and nothing claims the
pixels are clean.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from agent.store.files import write_atomically
from tools.errors import LoupeError, NotAnImageError, UnreadableStudyError
from tools.study.dicom import MEDIA_STORAGE_DIRECTORY
from tools.study.sources import sniff

__all__ = [
    "DeidError", "DeidReport", "PseudonymMap", "SkippedFile", "apply_basic_profile",
    "default_pseudonym_map", "deidentify",
]

PROFILE_TABLE = "dicomfields_2026c"
PSEUDONYM_PREFIX = "LOUPE-"
METHOD_TEXT = "PS3.15 Basic Profile (Loupe); pixels not cleaned"  # LO: 64 chars at most
MAP_FORMAT = "loupe-pseudonym-map/1"
# Modalities whose pixels commonly carry burned-in names and dates (screen captures,
# ultrasound and angiography consoles, endoscopy and camera photographs).
BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XA", "ES", "XC"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

Action = Literal["X", "Z", "D", "U"]
# E.1-1 compound actions pick a *kept* variant (Z over X, D over Z), as dicom-anonymizer does:
# without the IOD's attribute types we cannot tell when removal would break conformance.
# X/Z/U* sequences (Referenced/Source Image) stay so references keep pointing at the new UIDs.
_CATEGORY_ACTIONS: dict[str, Action] = {
    "X_TAGS": "X", "Z_TAGS": "Z", "X_Z_TAGS": "Z", "D_TAGS": "D", "Z_D_TAGS": "D",
    "X_D_TAGS": "D", "X_Z_D_TAGS": "D", "U_TAGS": "U", "X_Z_U_STAR_TAGS": "U",
}
_UNLISTED_EMPTIED_VRS = frozenset({"PN", "DA", "DT", "TM", "LT", "ST", "UT"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_NUMBER_VRS = frozenset({"FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"})
_DUMMY_BY_VR: dict[str, object] = {
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0", "IS": "0",
}
# File meta elements naming the sending / receiving stations or carrying private data.
_META_IDENTIFYING = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
# What pydicom raises while parsing or re-encoding damaged data. Caught around one file only
# and turned into a typed error chained to the original.
_DAMAGED_DATA = (ValueError, TypeError, OSError, EOFError, KeyError, IndexError, AttributeError,
                 NotImplementedError, OverflowError, InvalidDicomError)


class DeidError(LoupeError):
    """The export cannot run as asked (target inside the source, damaged pseudonym map, ...)."""


class SkippedFile(BaseModel):
    """A source file that has no de-identified copy, and why."""

    model_config = ConfigDict(frozen=True)

    path: Path = Field(description="The source file.")
    reason: str = Field(description="One sentence for the clinician.")


class DeidReport(BaseModel):
    """What one export did. Holds paths and counts only, never an original identifier."""

    model_config = ConfigDict(frozen=True)

    source: Path
    target: Path
    pseudonym_map: Path
    files_written: tuple[Path, ...] = ()
    files_skipped: tuple[SkippedFile, ...] = ()
    burned_in_risk: tuple[Path, ...] = Field(
        default=(),
        description="Written files whose pixels may still show names or dates (BurnedInAnnotation "
                    "YES, or a modality that usually has them); the basic profile leaves pixels as is.",
    )
    new_patients: int = Field(default=0, description="Patients first given a pseudonym in this run.")
    new_uids: int = Field(default=0, description="UIDs first given a pseudonym in this run.")

    @computed_field
    @property
    def written_count(self) -> int:
        return len(self.files_written)

    @computed_field
    @property
    def skipped_count(self) -> int:
        return len(self.files_skipped)

    def notes(self) -> list[str]:
        """Plain sentences a clinician should read before sharing the export."""
        notes = [f"{self.written_count} file(s) de-identified, {self.skipped_count} skipped."]
        if self.burned_in_risk:
            notes.append(
                f"{len(self.burned_in_risk)} file(s) may still show names or dates burned into the "
                "image itself; the basic profile does not clean pixels, so check them before sharing."
            )
        notes.append("File and folder names are copied as they are; rename any that identify the patient.")
        return notes


class PseudonymMap(BaseModel):
    """The local original <-> pseudonym link. The only place it exists: never share this file."""

    format: Literal["loupe-pseudonym-map/1"] = MAP_FORMAT
    patients: dict[str, str] = Field(default_factory=dict, description="Patient key -> pseudonym.")
    uids: dict[str, str] = Field(default_factory=dict, description="Original UID -> 2.25 UID.")

    def patient_pseudonym(self, key: str) -> str:
        """The pseudonym of ``key`` (``id:...``, ``name:...`` or ``study:...``), made on first use."""
        if key not in self.patients:
            taken = set(self.patients.values())
            pseudonym = PSEUDONYM_PREFIX + secrets.token_hex(4).upper()
            while pseudonym in taken:
                pseudonym = PSEUDONYM_PREFIX + secrets.token_hex(4).upper()
            self.patients[key] = pseudonym
        return self.patients[key]

    def uid_pseudonym(self, original: str) -> str:
        """The 2.25 UID standing for ``original``; random, so it reveals nothing of the original."""
        if original not in self.uids:
            self.uids[original] = f"2.25.{uuid.uuid4().int}"
        return self.uids[original]


def default_pseudonym_map(target: Path) -> Path:
    """Where the map goes when the caller names none: beside (never inside) the output."""
    return target.resolve().parent / "loupe-pseudonym-map.json"


def deidentify(source: Path, target: Path, *, pseudonym_map: Path) -> DeidReport:
    """Write a PS3.15 basic-profile de-identified copy of ``source`` at ``target``.

    Parameters
    ----------
    source:
        A DICOM file, or a folder searched recursively.
    target:
        For a file: the output file (or an existing folder to write it into). For a folder:
        the output folder, mirroring the source's layout; created if needed.
    pseudonym_map:
        The local JSON map of originals to pseudonyms; read and merged if it exists, written
        atomically (owner-only) when it gains entries. It must lie outside the source and the
        target, which is meant to be shared.

    Raises
    ------
    DeidError
        The target is the source or inside it (or the reverse), the map would be exported, or
        the map is damaged.
    UnreadableStudyError, NotAnImageError
        Single-file mode only: the file is not DICOM, is damaged, or is a DICOMDIR index. In
        folder mode such files are listed in ``DeidReport.files_skipped`` instead.
    """
    source, target, map_path = source.resolve(), target.resolve(), pseudonym_map.resolve()
    if not source.exists():
        raise DeidError("There is no file or folder to de-identify at the path given.")
    if source.is_file() and target.is_dir():
        target = target / source.name
    _refuse_unsafe_paths(source, target, map_path)
    mapping = _load_map(map_path)
    known_patients, known_uids = len(mapping.patients), len(mapping.uids)
    outcome = _Outcome()
    try:
        if source.is_dir():
            _export_folder(source, target, mapping, outcome)
        else:
            outcome.wrote(target, _export_file(source, target, mapping))
    finally:
        # Saved even when a file fails, so outputs already written keep their link.
        if (len(mapping.patients), len(mapping.uids)) != (known_patients, known_uids):
            _save_map(mapping, map_path)
    return DeidReport(
        source=source, target=target, pseudonym_map=map_path, files_written=tuple(outcome.written),
        files_skipped=tuple(outcome.skipped), burned_in_risk=tuple(outcome.burned_in_risk),
        new_patients=len(mapping.patients) - known_patients, new_uids=len(mapping.uids) - known_uids,
    )


# -- paths and the map ---------------------------------------------------------------------------

def _refuse_unsafe_paths(source: Path, target: Path, map_path: Path) -> None:
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise DeidError("The de-identified copy must go outside the original file or folder.")
    if map_path.is_relative_to(target) or map_path.is_relative_to(source):
        raise DeidError("The pseudonym map must be kept outside both the original and the de-identified copy.")


def _load_map(path: Path) -> PseudonymMap:
    if not path.exists():
        return PseudonymMap()
    try:
        return PseudonymMap.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        raise DeidError("The pseudonym map file is damaged or unreadable; nothing was exported.") from error


def _save_map(mapping: PseudonymMap, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(mapping.model_dump(), indent=1, sort_keys=True).encode())
    os.chmod(path, 0o600)  # it links pseudonyms back to patients: owner only


# -- files and folders ---------------------------------------------------------------------------

@dataclass
class _Outcome:
    """What an export has done so far."""

    written: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    burned_in_risk: list[Path] = field(default_factory=list)

    def wrote(self, path: Path, may_show_burned_in_text: bool) -> None:
        self.written.append(path)
        if may_show_burned_in_text:
            self.burned_in_risk.append(path)


def _export_file(source: Path, target: Path, mapping: PseudonymMap) -> bool:
    """Write the de-identified copy; True if its pixels may show burned-in text."""
    data, burned_in = _deidentified_bytes(source, mapping)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
    except OSError as error:
        raise DeidError("The de-identified copy could not be written (no space or no permission).") from error
    return burned_in


def _export_folder(source: Path, target: Path, mapping: PseudonymMap, outcome: _Outcome) -> None:
    for path in _files_under(source):
        output = target / path.relative_to(source)
        try:
            outcome.wrote(output, _export_file(path, output, mapping))
        except LoupeError as error:
            outcome.skipped.append(SkippedFile(path=path, reason=error.message))


def _files_under(folder: Path) -> Iterator[Path]:
    # Links are not followed: they could lead outside the folder the clinician chose.
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def _deidentified_bytes(path: Path, mapping: PseudonymMap) -> tuple[bytes, bool]:
    """The de-identified file's bytes, and whether its pixels may show burned-in text."""
    if sniff(path) != "dicom":
        raise UnreadableStudyError("This file is not a DICOM file, so it was not de-identified.")
    try:
        with warnings.catch_warnings():
            # pydicom's warnings about odd values quote those values: keep them off the terminal.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            _check_is_complete_object(ds)
            burned_in = _may_show_burned_in_text(ds)
            apply_basic_profile(ds, mapping)
            buffer = io.BytesIO()
            ds.save_as(buffer)
    except _DAMAGED_DATA as error:
        raise UnreadableStudyError(
            "This DICOM file is damaged and could not be de-identified; no copy was written."
        ) from error
    return buffer.getvalue(), burned_in


def _check_is_complete_object(ds: Dataset) -> None:
    """Refuse what pydicom reads without complaint: random bytes after 'DICM', cut-off files."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if not sop_class and "Rows" not in ds:
        raise UnreadableStudyError("This file is not a readable DICOM object, so it was not de-identified.")
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(
            "This is a DICOMDIR index, which would no longer match the copied files; it was not copied."
        )
    if len(ds) == 0:
        # pydicom returns an empty data set when pixel data lacks its end delimiter.
        raise ValueError("no data elements could be read")
    for _ in ds.iterall():  # converts every raw element now, so damage shows up here
        pass
    if "PixelData" in ds:
        _check_pixel_data_complete(ds)
    elif UID(sop_class).name.endswith("Image Storage") and "Rows" not in ds:
        raise ValueError("image object cut off before its image attributes")


def _check_pixel_data_complete(ds: Dataset) -> None:
    # pydicom silently shortens a value cut off by the end of the file.
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if transfer_syntax is not None and UID(transfer_syntax).is_encapsulated:
        for _ in generate_fragments(ds.PixelData):
            pass
    elif len(ds.PixelData) < get_expected_length(ds):
        raise ValueError("pixel data shorter than the image attributes require")


def _may_show_burned_in_text(ds: Dataset) -> bool:
    # A missing BurnedInAnnotation means unknown, not NO: fall back on what the modality implies.
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return True
    if str(ds.get("Modality", "")).upper() in BURNED_IN_MODALITIES:
        return True
    return str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX)


# -- the profile ---------------------------------------------------------------------------------

def apply_basic_profile(ds: Dataset, mapping: PseudonymMap) -> None:
    """De-identify ``ds`` in place (PS3.15 E.1-1 basic profile plus Loupe's extra removals)."""
    pseudonym = mapping.patient_pseudonym(_patient_key(ds))
    ds.remove_private_tags()
    _remove_overlay_planes(ds)
    _clean_dataset(ds, mapping)
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_TEXT
    ds.DeidentificationMethodCodeSequence = [_basic_profile_code()]
    _clean_file_meta(ds)


def _patient_key(ds: Dataset) -> str:
    """What names one patient: the id if coded, else the name, else the study (no identity)."""
    patient_id = str(ds.get("PatientID") or "").strip()
    if patient_id:
        return f"id:{patient_id}"
    name = str(ds.get("PatientName") or "").strip()
    if name:
        return f"name:{name}"
    return f"study:{ds.get('StudyInstanceUID') or ''}"


def _basic_profile_code() -> Dataset:
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    return code


def _remove_overlay_planes(ds: Dataset) -> None:
    overlay_tags = [element.tag for element in ds if _is_overlay_group(element.tag.group)]
    for tag in overlay_tags:
        del ds[tag]


def _is_overlay_group(group: int) -> bool:
    return 0x6000 <= group <= 0x601E and group % 2 == 0


def _clean_file_meta(ds: Dataset) -> None:
    meta: FileMetaDataset | None = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in _META_IDENTIFYING:
        if tag in meta:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _clean_dataset(ds: Dataset, mapping: PseudonymMap) -> None:
    """Apply the table to every element of ``ds``, then to the items of the sequences kept."""
    rules = profile_rules()
    for element in list(ds):
        action = rules.action_for(element.tag) or _unlisted_action(element)
        if action is not None:
            _apply_action(ds, element, action, mapping)
        if element.tag in ds and element.VR == "SQ":
            for item in element.value:
                _clean_dataset(item, mapping)


def _unlisted_action(element: DataElement) -> Action | None:
    return "Z" if element.VR in _UNLISTED_EMPTIED_VRS else None


def _apply_action(ds: Dataset, element: DataElement, action: Action, mapping: PseudonymMap) -> None:
    if action == "X":
        del ds[element.tag]
    elif element.VR == "UI" and action in ("U", "D"):
        element.value = _replaced_uids(element.value, mapping)
    elif action == "U":
        return  # an X/Z/U* sequence: its items are cleaned, their UIDs by the U rows
    elif action == "Z" or element.VR == "SQ":
        # A dummy sequence would only repeat the items' content; an empty one says nothing.
        element.value = Sequence() if element.VR == "SQ" else None
    else:
        element.value = _dummy_value(element.VR)


def _replaced_uids(value: object, mapping: PseudonymMap) -> object:
    if isinstance(value, MultiValue | list):
        return [mapping.uid_pseudonym(str(uid)) for uid in value if str(uid)]
    return mapping.uid_pseudonym(str(value)) if value else value


def _dummy_value(vr: str) -> object:
    if vr in _TEXT_VRS:
        return "ANONYMIZED"
    if vr in _BINARY_NUMBER_VRS:
        return 0
    return _DUMMY_BY_VR.get(vr)  # None (empty) for binary and URL values


class ProfileRules:
    """Table E.1-1 as a lookup: exact tags, then the repeating-group rows (curves, overlays)."""

    def __init__(self, exact: dict[int, Action], masked: list[tuple[int, int, int, int, Action]]):
        self.exact = exact
        self.masked = masked

    def action_for(self, tag: BaseTag) -> Action | None:
        if tag in self.exact:
            return self.exact[tag]
        for group, element, group_mask, element_mask, action in self.masked:
            same_group = tag.group & group_mask == group & group_mask
            if same_group and tag.element & element_mask == element & element_mask:
                return action
        return None


@cache
def profile_rules() -> ProfileRules:
    """The rules of ``PROFILE_TABLE``, built once (the table is constant data)."""
    table = dicom_anonymization_database_selector(PROFILE_TABLE)
    exact: dict[int, Action] = {}
    masked: list[tuple[int, int, int, int, Action]] = []
    for category, action in _CATEGORY_ACTIONS.items():
        for row in table[category]:
            if len(row) == 2:
                exact[(row[0] << 16) | row[1]] = action
            else:
                masked.append((*row, action))
    return ProfileRules(exact, masked)
