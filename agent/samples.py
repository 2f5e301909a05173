"""Sample studies, for a first look without patient data, and the titles sessions get.

The default is a chest CT series bundled with Loupe (``agent/sample_data``: ten slices of
LIDC-IDRI-0003, CC BY 3.0, attribution beside the files), chosen because Loupe's offline search
answers it right: its top finding is the nodule the LIDC readers outlined. The others come from
pydicom's own test files (inside the pydicom wheel, so on every machine; ``download=False`` keeps
the look-up offline); the abdominal MR stays as the example of an honest "outside what I can
judge".
"""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from tools.errors import UnreadableStudyError
from tools.study import Study, iso_date

#: The folder of the bundled sample series.
SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"

#: name -> (bundled folder under ``sample_data`` or pydicom test file, what a clinician sees)
SAMPLES: dict[str, tuple[str, str]] = {
    "ct-chest-nodule": ("lidc-idri-0003", "Chest CT, 10 slices, lung nodule (LIDC-IDRI, CC BY 3.0)"),
    "mr-liver": ("examples_overlay.dcm", "Abdominal MR with a liver lesion (outside what the offline detector judges)"),
    "ct-head": ("693_J2KI.dcm", "Head CT, 512 x 512, JPEG 2000"),
    "ct-small": ("CT_small.dcm", "Small CT slice, 128 x 128"),
    "us-cine": ("examples_ybr_color.dcm", "Colour ultrasound cine, 30 frames"),
}
DEFAULT_SAMPLE = "ct-chest-nodule"


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a sample study: a bundled series folder or a pydicom test file."""
    if name not in SAMPLES:
        raise UnreadableStudyError(f"There is no sample called '{name}'; choose one of {', '.join(SAMPLES)}.")
    source = SAMPLES[name][0]
    bundled = SAMPLE_DATA / source
    if bundled.is_dir():
        return bundled
    found = None if source.startswith("lidc-") else get_testdata_file(source, download=False)
    if found is None:
        raise UnreadableStudyError(f"The sample '{name}' is missing from this installation.")
    return Path(found)


def session_title(study: Study) -> str:
    """A session's title from the study's modality, description and date ("CT · CHEST ·
    2000-01-01"): what a clinician recognises in the list of sessions, never a name or an id."""
    identifying = study.identifying
    description = identifying.series_description or identifying.study_description or study.safe.body_part
    parts = [study.safe.modality or "Image", _short(description), iso_date(identifying.study_date)]
    return " · ".join(p for p in parts if p)[:200]


def _short(text: str | None, limit: int = 60) -> str | None:
    """Free text on one line, cut at a word, so that a long description stays a title."""
    if not text:
        return None
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + "…"
