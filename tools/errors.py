"""The errors Loupe shows to a clinician.

Every failure that reaches a person is one of these, carrying one plain sentence in
``message`` (no stack trace, no library jargon). Lower-layer exceptions (pydicom, Pillow,
zipfile, the model SDK) are translated once, where they are caught, and chained with
``raise ... from error`` so the technical cause stays available in logs.

::

    LoupeError
     ├── StudyError                  something is wrong with the study the clinician opened
     │    ├── UnreadableStudyError   empty, not an image, truncated, damaged data
     │    ├── UnsupportedStudyError  a valid file Loupe does not display (no pixels, mixed series)
     │    │    ├── NotAnImageError   a DICOM object without pixel data (SR, RT plan, DICOMDIR)
     │    │    └── MissingCodecError compressed with a codec that is not installed
     │    ├── StudyTooLargeError     beyond the configured pixel / size limits
     │    └── UnsafeArchiveError     a .zip with path traversal, links or bomb-like ratios
     ├── NoStudyOpenError            a tool needs a study and none is open (or the id is unknown)
     ├── InvalidWindowError          a window preset or centre/width that makes no sense
     ├── FrameOutOfRangeError        asked for a frame the study does not have
     ├── InvalidCoordinatesError     a point or box outside the image or malformed
     ├── ModelUnavailableError       the vision/language model cannot be reached
     ├── RegistrationError           a prior and a current study that cannot be aligned
     └── PrivacyError                something may not cross to a cloud model
          └── ImageWithheldError     the image may carry burned-in text; held until confirmed
"""

from __future__ import annotations


class LoupeError(Exception):
    """Base of all clinician-facing errors.

    Parameters
    ----------
    message:
        One sentence a clinician understands; shown as is.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StudyError(LoupeError):
    """The study could not be opened as asked."""


class UnreadableStudyError(StudyError):
    """The bytes are not a readable image: empty, random, truncated or damaged."""


class UnsupportedStudyError(StudyError):
    """A valid file that Loupe does not display (no pixel data, several series, ...)."""


class NotAnImageError(UnsupportedStudyError):
    """A valid DICOM object that carries no pixel data (report, plan, index, waveform)."""


class MissingCodecError(UnsupportedStudyError):
    """The pixel data is compressed with a transfer syntax no installed plugin decodes.

    ``transfer_syntax`` is the UID; ``install_hint`` names what would decode it.
    """

    def __init__(self, message: str, *, transfer_syntax: str, install_hint: str | None) -> None:
        super().__init__(message)
        self.transfer_syntax = transfer_syntax
        self.install_hint = install_hint


class StudyTooLargeError(StudyError):
    """The study exceeds a configured limit (pixels per frame, total bytes, file count)."""


class UnsafeArchiveError(StudyError):
    """A .zip whose entries could escape the extraction folder or are bomb-like."""


class NoStudyOpenError(LoupeError):
    """No study is open, or the study id named is not one of the open studies."""


class InvalidWindowError(LoupeError):
    """A window preset name or centre/width pair that cannot be applied."""


class FrameOutOfRangeError(LoupeError):
    """A frame index outside the study."""


class InvalidCoordinatesError(LoupeError):
    """A point or box that is malformed or lies outside the image."""


class ModelUnavailableError(LoupeError):
    """The model backend cannot be reached or keeps failing."""


class RegistrationError(LoupeError):
    """Two studies that cannot be brought into one frame (another body part, another
    orientation, too little overlap) and so cannot be compared."""


class PrivacyError(LoupeError):
    """Something was about to cross the privacy boundary that may not."""


class ImageWithheldError(PrivacyError):
    """The study's pixels may carry burned-in identifying text and are held until the
    clinician confirms they do not."""
