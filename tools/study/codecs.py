"""Which compressed transfer syntaxes Loupe can decode, and what to install for the rest.

Loupe ships permissively licensed decoders only (see README): pylibjpeg-openjpeg (JPEG 2000,
MIT), pylibjpeg-rle (RLE, MIT) and python-gdcm (JPEG baseline/extended 8-bit, JPEG lossless,
JPEG-LS; BSD). 12-bit JPEG Extended needs pylibjpeg-libjpeg, which is GPL-3, so it is an
opt-in install rather than a dependency.
"""

from __future__ import annotations

from pydicom.pixels import get_decoder
from pydicom.uid import UID, JPEGExtended12Bit

from tools.errors import MissingCodecError

_VIDEO_OR_NON_IMAGE = {
    "1.2.840.10008.1.2.4.100": "MPEG-2 video",
    "1.2.840.10008.1.2.4.101": "MPEG-2 video",
    "1.2.840.10008.1.2.4.102": "MPEG-4 video",
    "1.2.840.10008.1.2.4.103": "MPEG-4 video",
    "1.2.840.10008.1.2.4.104": "MPEG-4 video",
    "1.2.840.10008.1.2.4.105": "MPEG-4 video",
    "1.2.840.10008.1.2.4.106": "MPEG-4 video",
    "1.2.840.10008.1.2.4.107": "HEVC video",
    "1.2.840.10008.1.2.4.108": "HEVC video",
}

_UNKNOWN_TO_PYDICOM = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}

#: What would decode a transfer syntax when no installed plugin does.
_INSTALL_HINTS = {
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (GPL-3 licensed, not bundled with Loupe)",
    "1.2.840.10008.1.2.4.50": "python-gdcm or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "python-gdcm or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "python-gdcm or pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "python-gdcm or pyjpegls",
    "1.2.840.10008.1.2.4.81": "python-gdcm or pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg 2.4 or newer",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg 2.4 or newer",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg 2.4 or newer",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}


_JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


def preferred_plugin(transfer_syntax: UID) -> str:
    """The pydicom decoding plugin to use, or "" to let pydicom try them in turn.

    JPEG 2000 goes to pylibjpeg-openjpeg: GDCM's bundled OpenJPEG writes errors for damaged
    streams straight to the process's stderr, which would break the CLI's one-line errors.
    """
    if str(transfer_syntax) in _JPEG_2000:
        decoder = get_decoder(UID(str(transfer_syntax)))
        if "pylibjpeg" in decoder.available_plugins:
            return "pylibjpeg"
    return ""


def ensure_decodable(transfer_syntax: UID, bits_stored: int | None) -> None:
    """Raise MissingCodecError unless an installed plugin can decode this pixel data.

    Native (uncompressed) and deflated syntaxes always pass; pydicom decodes them itself.
    """
    uid = UID(str(transfer_syntax))
    hint = _INSTALL_HINTS.get(str(uid))
    if not uid.is_transfer_syntax:
        name = _UNKNOWN_TO_PYDICOM.get(str(uid), str(uid))
        raise MissingCodecError(
            f"The image is encoded as '{name}', a transfer syntax Loupe has no decoder for.",
            transfer_syntax=str(uid), install_hint=hint,
        )
    if not uid.is_compressed:
        return
    name = uid.name
    if str(uid) in _VIDEO_OR_NON_IMAGE:
        raise MissingCodecError(
            f"This file holds {_VIDEO_OR_NON_IMAGE[str(uid)]}; Loupe opens still images only.",
            transfer_syntax=str(uid), install_hint=None,
        )
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as error:
        raise MissingCodecError(
            f"The image is compressed as '{name}', which Loupe has no decoder for.",
            transfer_syntax=str(uid), install_hint=hint,
        ) from error
    if not decoder.is_available:
        raise MissingCodecError(
            f"The image is compressed as '{name}'; installing {hint or 'a decoder plugin'} "
            "would let Loupe open it.",
            transfer_syntax=str(uid), install_hint=hint,
        )
    if uid == JPEGExtended12Bit and (bits_stored or 8) > 8 and "pylibjpeg" not in decoder.available_plugins:
        # GDCM and Pillow both refuse 12-bit JPEG Extended; only libjpeg (GPL-3) decodes it.
        hint = _INSTALL_HINTS[str(uid)]
        raise MissingCodecError(
            f"The image is compressed as 12-bit JPEG Extended; installing {hint} would let "
            "Loupe open it.",
            transfer_syntax=str(uid), install_hint=hint,
        )
