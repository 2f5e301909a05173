"""Study loading: DICOM (single, multi-frame, series, zip) and PNG/JPEG, display and geometry."""

from tools.study.display import RenderedFrame
from tools.study.model import FrameGeometry, IdentifyingMetadata, SafeMetadata, StudyLimits, dicom_date, iso_date
from tools.study.study import DicomStudy, RasterStudy, Study, open_study
from tools.study.windowing import WINDOW_PRESETS, Window, parse_window

__all__ = [
    "WINDOW_PRESETS", "DicomStudy", "FrameGeometry", "IdentifyingMetadata", "RasterStudy",
    "RenderedFrame", "SafeMetadata", "Study", "StudyLimits", "Window", "dicom_date", "iso_date", "open_study",
    "parse_window",
]
