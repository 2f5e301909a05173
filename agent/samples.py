"""Sample studies bundled with Loupe's dependencies, for a first look without patient data.

They come from pydicom's own test files (shipped inside the pydicom wheel), so they are on
every machine Loupe is installed on; ``download=False`` keeps the look-up offline.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from tools.errors import UnreadableStudyError

#: name -> (pydicom test file, what a clinician sees)
SAMPLES: dict[str, tuple[str, str]] = {
    "mr-liver": ("examples_overlay.dcm", "Abdominal MR with a liver lesion"),
    "ct-head": ("693_J2KI.dcm", "Head CT, 512 x 512, JPEG 2000"),
    "ct-small": ("CT_small.dcm", "Small CT slice, 128 x 128"),
    "us-cine": ("examples_ybr_color.dcm", "Colour ultrasound cine, 30 frames"),
}
DEFAULT_SAMPLE = "mr-liver"


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a bundled sample study."""
    if name not in SAMPLES:
        raise UnreadableStudyError(f"There is no sample called '{name}'; choose one of {', '.join(SAMPLES)}.")
    found = get_testdata_file(SAMPLES[name][0], download=False)
    if found is None:
        raise UnreadableStudyError(f"The sample '{name}' is missing from this installation.")
    return Path(found)
