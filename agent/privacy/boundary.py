"""The privacy boundary: the one module every model-bound request passes.

What may cross to a cloud model:

- **pixels**, rendered for display, unless they may carry burned-in text: ultrasound, secondary
  capture, "other", angiography and endoscopy images, and any image whose BurnedInAnnotation is
  not an explicit "NO" (a missing tag is unknown, not "no"). Those are blanked outside the
  ultrasound regions when the file defines them, and otherwise held until the clinician confirms
  there is no identifying text on them.
- **technical metadata** on an allow-list (``ALLOWED_FIELDS``): modality, body part, image size,
  frames, pixel spacing, slice thickness, window; patient age and sex only when the clinician
  turns that on.
- **text** the clinician typed and the tools' results — with every identifying value of the open
  studies (names, ids, dates, institutions, accession numbers, descriptions, UIDs, file names)
  replaced by ``[redacted]``, in case one was typed or leaked into a result.

Nothing else: ``outgoing`` refuses any image it did not approve itself. Text from the file
(descriptions, file names) never becomes part of a prompt, so it cannot carry instructions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tools.errors import ImageWithheldError, PrivacyError
from tools.study import Study, iso_date

BURNED_IN_RISK_MODALITIES = frozenset({"US", "SC", "OT", "XA", "ES"})
REDACTED = "[redacted]"
_MIN_REDACTED_LENGTH = 3  # shorter values ("M", "F", "12") would mangle ordinary text

#: The technical facts a model may see, by the name it sees them under.
ALLOWED_FIELDS = ("modality", "body part", "frames", "native size", "pixel spacing", "slice thickness",
                  "window", "patient age", "patient sex")


@dataclass(frozen=True)
class ImageRelease:
    """Whether a study's pixels may be sent, and why; ``onsite_only``: released only because the
    model runs on the site's own servers (a cloud model may not see them)."""

    status: Literal["released", "masked", "held"]
    reason: str
    onsite_only: bool = False


#: What a cloud model gets instead of an image that only the on-premises model may see.
ONSITE_ONLY_NOTE = "(An image shown only to the hospital's own model is not sent to this model.)"


@dataclass
class PrivacyBoundary:
    share_age_sex: bool = False
    confirmed: set[str] = field(default_factory=set)
    #: The model runs on the site's own servers (LOUPE_MODEL_SITE=on-premises, set by the backend
    #: that serves such a model for its requests): pixels do not leave the site, so the hold for
    #: possible burned-in text does not apply. Text is redacted and audited all the same.
    on_premises: bool = False
    #: Receives one audit entry per model request (sizes and hashes, never content).
    on_request: Callable[[dict[str, Any]], None] | None = None
    _approved_images: set[str] = field(default_factory=set, repr=False)
    #: SHA-256 of approved images that only an on-premises model may see (kept with the session:
    #: the history that holds them may later be sent by a cloud backend).
    onsite_images: set[str] = field(default_factory=set)
    _identifying_values: set[str] = field(default_factory=set, repr=False)
    #: SHA-256 of image data already seen in a request, by its (base64) text: the history
    #: resends the same images on every call, and decoding them each time is wasted work.
    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    # -- pixels ---------------------------------------------------------------------------------

    def release(self, study: Study) -> ImageRelease:
        safe = study.safe
        modality = (safe.modality or "").upper()
        burned_in = (safe.burned_in_annotation or "").upper()
        if burned_in == "NO" and modality not in BURNED_IN_RISK_MODALITIES:
            return ImageRelease("released", "the file states it has no burned-in annotation")
        if study.id in self.confirmed:
            return ImageRelease("released", "the clinician confirmed there is no identifying text on the image")
        if self.on_premises:
            return ImageRelease("released", "the model runs on this site's own servers, so the image does not "
                                            "leave the site", onsite_only=True)
        risk = (f"{modality} images often carry burned-in patient details" if modality in BURNED_IN_RISK_MODALITIES
                else "the file does not state that the image is free of burned-in text")
        if safe.ultrasound_regions:
            return ImageRelease("masked", f"{risk}; everything outside the ultrasound regions is blanked")
        return ImageRelease("held", f"{risk}; it is held until you confirm it shows no identifying text")

    def confirm(self, study_id: str) -> None:
        """The clinician has looked: no identifying text on this study's images."""
        self.confirmed.add(study_id)

    def prepare(self, study: Study, pixels: np.ndarray) -> np.ndarray:
        """The ``ImagePolicy`` the tools apply to every image meant for a vision model."""
        self.watch(study)
        release = self.release(study)
        if release.status == "held":
            raise ImageWithheldError(f"The image was not sent to the model: {release.reason}.")
        if release.status == "masked":
            pixels = _blank_outside(pixels, study.safe.ultrasound_regions)
        return pixels

    def approve(self, png: bytes, *, onsite_only: bool = False) -> None:
        """Mark an image produced under ``prepare`` (or from released pixels) as sendable; to an
        on-premises model only when ``onsite_only``."""
        digest = hashlib.sha256(png).hexdigest()
        self._approved_images.add(digest)
        if onsite_only:
            self.onsite_images.add(digest)

    def approve_sent(self, history: Iterable[dict[str, Any]]) -> None:
        """Images already in a stored history passed this boundary when they were first sent."""
        for content in history:
            for part in content.get("parts", []):
                inline = part.get("inline_data") or part.get("inlineData")
                if inline is not None:
                    self.approve(_raw(inline["data"]))

    # -- metadata and text ----------------------------------------------------------------------

    def watch(self, study: Study) -> None:
        """Remember a study's identifying values, to redact them from anything outgoing."""
        identifying = study.identifying
        values: list[str] = []
        for name, value in identifying.model_dump().items():
            if name in ("patient_sex", "patient_age"):
                continue
            values += list(value) if isinstance(value, tuple) else [value] if value else []
        if identifying.patient_name:
            values += re.split(r"[\^=\s,]+", identifying.patient_name)  # each name component alone
        values += [iso for iso in map(iso_date, (identifying.study_date, identifying.patient_birth_date)) if iso]
        self._identifying_values.update(v.strip() for v in values if v and len(v.strip()) >= _MIN_REDACTED_LENGTH)

    def technical_facts(self, study: Study, frame: int) -> dict[str, str]:
        """The allow-listed metadata of ``frame`` as short strings (see ``ALLOWED_FIELDS``)."""
        safe = study.safe
        facts = {"modality": safe.modality or "unknown", "frames": str(study.frame_count),
                 "native size": f"{safe.columns}×{safe.rows} px"}
        if safe.body_part:
            facts["body part"] = safe.body_part
        spacing = study.pixel_spacing_mm(frame)
        facts["pixel spacing"] = f"{spacing[0]:.3g}×{spacing[1]:.3g} mm" if spacing else "unknown (sizes in px)"
        if safe.slice_thickness_mm:
            facts["slice thickness"] = f"{safe.slice_thickness_mm:.3g} mm"
        if self.share_age_sex:
            if study.identifying.patient_age:
                facts["patient age"] = study.identifying.patient_age
            if study.identifying.patient_sex:
                facts["patient sex"] = study.identifying.patient_sex
        assert set(facts) <= set(ALLOWED_FIELDS)
        return facts

    def redact(self, text: str) -> str:
        for value in sorted(self._identifying_values, key=len, reverse=True):
            text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
        return text

    # -- the gate -------------------------------------------------------------------------------

    def outgoing(self, contents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The request contents as they may leave: text redacted, images checked.

        Raises PrivacyError if an image that did not pass this boundary is about to be sent.
        """
        return [{**content, "parts": [self._part(p) for p in content.get("parts", [])]} for content in contents]

    def record(self, contents: list[dict[str, Any]], **facts: Any) -> None:
        """Send the audit entry for a request: ``facts`` (model, purpose, prompt version, usage,
        outcome) plus the sizes and SHA-256 of its text and images — what was sent, not the content."""
        if self.on_request is None:
            return
        texts, images = [], []
        for content in contents:
            for part in content.get("parts", []):
                inline = part.get("inline_data") or part.get("inlineData")
                if inline is not None:
                    data = inline["data"]
                    size = len(data) if isinstance(data, bytes) else len(data) * 3 // 4  # base64: 4 chars per 3 bytes
                    images.append({"sha256": self._digest(data), "bytes": size})
                else:
                    texts.append(json.dumps(part, sort_keys=True, ensure_ascii=False))
        text = "\n".join(texts)
        self.on_request({**facts, "contents": len(contents), "text_chars": len(text),
                         "text_sha256": hashlib.sha256(text.encode()).hexdigest(), "images": images})

    def _digest(self, data: bytes | str | None) -> str:
        if isinstance(data, str):
            if data not in self._digests:
                self._digests[data] = hashlib.sha256(_raw(data)).hexdigest()
            return self._digests[data]
        return hashlib.sha256(_raw(data)).hexdigest()

    def _part(self, part: dict[str, Any]) -> dict[str, Any]:
        inline = part.get("inline_data") or part.get("inlineData")
        if inline is not None:
            digest = self._digest(inline.get("data"))
            if digest not in self._approved_images:
                raise PrivacyError("An image that did not pass Loupe's privacy checks was about to be sent to the model; it was stopped.")
            if digest in self.onsite_images and not self.on_premises:
                return {"text": ONSITE_ONLY_NOTE}  # the history may be resent by a cloud backend
            return part
        for key in ("function_response", "functionResponse"):
            if key in part:  # its id and name pair it with the model's call: only what the tool said is text
                answer = part[key]
                return {**part, key: {**answer, "response": _map_strings(answer.get("response"), self.redact)}}
        return _map_strings(part, self.redact, skip=("thought_signature", "thoughtSignature", "function_call", "functionCall"))


def _blank_outside(pixels: np.ndarray, regions) -> np.ndarray:
    keep = np.zeros(pixels.shape[:2], dtype=bool)
    for region in regions:
        keep[max(region.y0, 0):region.y1 + 1, max(region.x0, 0):region.x1 + 1] = True
    masked = pixels.copy()
    masked[~keep] = 0
    return masked


def _raw(data: bytes | str | None) -> bytes:
    """Image bytes from a part: raw, or URL-safe base64 as the SDK serialises them."""
    if isinstance(data, bytes):
        return data
    text = data or ""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _map_strings(value: Any, change, *, skip: tuple[str, ...] = ()) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: (v if k in skip else _map_strings(v, change, skip=skip)) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, change, skip=skip) for v in value]
    return value
