"""The working image the detector and the verifier look at, with its masks and polarity.

Detection runs at a reduced resolution (long side at most ``WORKING_SIDE`` px) on a greyscale
float image in [0, 1]: HU clipped to [-1000, 400] for CT, robust percentiles of the foreground
otherwise. Each modality has an expected *polarity* — the sign of a lesion's contrast: bright
nodules in CT lung fields and enhancing MR lesions, focal opacities on chest radiographs, dark
hypoechoic lesions on ultrasound — and a search mask (lungs, brain, imaged sector).

Colour frames are searched on their luma. Strongly coloured pixels (colour-Doppler flow, coloured
calipers and annotations) are not tissue: they are left out of the masks and of the intensity
statistics, and filled from the tissue around them so that their edges are not taken for blobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from tools.detection import masks
from tools.study import Study

Polarity = Literal["bright", "dark"]
WORKING_SIDE = 512

#: Modalities of projection radiographs.
RADIOGRAPHY = {"CR", "DX", "DR", "RG"}
#: Words in BodyPartExamined (DICOM PS3.16 CID 4031 and what scanners write freely: "BRAIN W/WO",
#: "HEAD_NECK", "CHEST PA", "PORT CHEST", "TORAX") that mean a head MR or a chest radiograph; any
#: of them in it counts ("THORAX", not "THORACIC": a thoracic spine is not a chest film). An
#: uncoded body part is taken as the commonest (a head for MR, a chest for a radiograph); any
#: other coded part (an abdomen, a hand, a knee) is searched over the whole body instead of
#: inside a brain or lung mask.
_HEAD_WORDS = ("HEAD", "BRAIN", "SKULL", "CEREBR", "CRANI", "PITUITARY", "SELLA")
_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG", "PECHO")


def _coded_as(body_part: str | None, words: tuple[str, ...]) -> bool:
    """True when ``body_part`` is not coded (or blank) or contains one of ``words``."""
    part = (body_part or "").upper().replace(" ", "")
    return not part or any(word in part for word in words)


def is_head(body_part: str | None) -> bool:
    return _coded_as(body_part, _HEAD_WORDS)


def is_chest(body_part: str | None) -> bool:
    return _coded_as(body_part, _CHEST_WORDS)


def expected_polarity(modality: str | None) -> Polarity:
    """The sign of a typical lesion's contrast in this modality."""
    return "dark" if (modality or "").upper() == "US" else "bright"


def row_span(mask: np.ndarray) -> tuple[int, int] | None:
    """First and last row where ``mask`` is set, or None when it spans fewer than two rows."""
    rows = np.nonzero(mask.any(axis=1))[0]
    return (int(rows[0]), int(rows[-1])) if rows.size >= 2 else None


#: A head whose outline overlaps its own mirror image at least this much (intersection over
#: union) is seen axially or coronally, with its left-right midline in the middle of its outline
#: (dev head MRs: 0.90-0.98 on such views; sagittal views, with the face on one side, down to 0.66).
_MIRROR_IOU = 0.9
#: The fraction of the image's bottom rows where a neck shows as body: a sagittal or coronal view.
_NECK_ROWS = 0.03
#: A view counts as including the neck when the body crosses this fraction of the bottom rows' width.
_NECK_WIDTH = 0.03


@dataclass(frozen=True)
class HeadExtent:
    """The head's vertical extent on a head MR, and whether the view runs down into the neck.

    Sagittal and coronal views that include the neck put the skull base, face and neck in the
    lower part of the image: bright on post-contrast T1 (fat, mucosa, vessels) and not brain.
    """

    top: int  # first row with body
    bottom: int  # last row with body
    includes_neck: bool

    @classmethod
    def of(cls, body: np.ndarray) -> HeadExtent | None:
        span = row_span(body)
        if span is None:
            return None
        bottom_band = body[int(body.shape[0] * (1 - _NECK_ROWS)):]
        includes_neck = bool(bottom_band.any(axis=0).mean() >= _NECK_WIDTH)
        return cls(top=span[0], bottom=span[1], includes_neck=includes_neck)

    def depth(self, y: float) -> float:
        """How far down the head a row is: 0 at the vertex, 1 at the bottom of the body."""
        return (y - self.top) / max(self.bottom - self.top, 1)


class ComputedWhenRead:
    """A field of a dataclass that may be given as a function of no arguments instead of its
    value: the function is called when the field is first read, and its value kept. A dataclass
    reads the descriptor on its class to find a default; there is none (``AttributeError``), so
    the field stays a required one."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}_value"

    def __get__(self, instance: object, owner: type | None = None) -> np.ndarray:
        if instance is None:
            raise AttributeError(self._slot)
        value = instance.__dict__[self._slot]
        if callable(value):
            value = instance.__dict__[self._slot] = value()
        return value

    def __set__(self, instance: object, value: np.ndarray | Callable[[], np.ndarray]) -> None:
        instance.__dict__[self._slot] = value


@dataclass
class WorkingImage:
    """A frame prepared for detection: image, masks, and the scale back to native pixels."""

    image: np.ndarray  # float32 in [0, 1], working resolution
    scale: float  # working px per native px
    modality: str | None
    polarity: Polarity
    #: bool, the imaged body / sector; may be given as a function computing it (``prepare`` does
    #: so on chest CT, where searching the lung fields does not need it), called when first read.
    body: np.ndarray = ComputedWhenRead()  # type: ignore[assignment]
    search: np.ndarray  # bool, where lesions are looked for (organ mask, or body)
    organ: str  # what ``search`` is: "lungs", "brain", "sector", "body"
    native_shape: tuple[int, int]
    #: The image blob evidence is measured on, when it differs from ``image`` (see ``lung_view``).
    view: np.ndarray | None = None
    #: What the clinician should know about how this frame was searched (e.g. colour left out).
    notes: tuple[str, ...] = ()
    #: What the study is, in words, when the detector is not built for it ("an MR of the
    #: abdomen"); None for the studies it is built for (see ``outside_competence``).
    outside: str | None = None

    @property
    def evidence_image(self) -> np.ndarray:
        return self.image if self.view is None else self.view

    @property
    def sign(self) -> float:
        return 1.0 if self.polarity == "bright" else -1.0

    @cached_property
    def head_extent(self) -> HeadExtent | None:
        """Where the head is, for a head MR: see ``HeadExtent``."""
        return HeadExtent.of(self.body) if self.organ == "brain" else None

    @cached_property
    def midline_x(self) -> float | None:
        """The column of the head's left-right midline on a head MR seen axially or coronally
        (its outline nearly matches its mirror image); None on other views and organs."""
        if self.organ != "brain":
            return None
        columns = row_span(self.body.T)  # the outline's first and last column
        if columns is None:
            return None
        outline = self.body[:, columns[0]:columns[1] + 1]
        mirrored = outline[:, ::-1]
        overlap = np.count_nonzero(outline & mirrored) / max(np.count_nonzero(outline | mirrored), 1)
        return (columns[0] + columns[1]) / 2 if overlap >= _MIRROR_IOU else None

    @cached_property
    def field(self) -> np.ndarray:
        """Where the image shows the patient, for telling a location that is on background. On
        ultrasound, the convex hull of the sector (any probe's imaged field is convex): an
        anechoic lesion at the field's edge is as black as the margins outside it, and the
        sector mask leaves it out (dev: a breast cyst against the left edge). Elsewhere the body."""
        if self.organ != "sector":
            return self.body
        return masks.convex_hull(self.body)

    @cached_property
    def sector_rows(self) -> tuple[int, int] | None:
        """First and last row of the imaged sector on ultrasound (the skin line is at the top)."""
        return row_span(self.search) if self.organ == "sector" else None

    @cached_property
    def dense_level(self) -> float:
        """The 99th percentile of the evidence image inside the search mask: on a radiograph,
        a blob brighter than this on average is denser than nearly all of the lung fields."""
        return self._percentile_in_search(self.evidence_image, empty=1.0)

    @cached_property
    def edge_map(self) -> np.ndarray:
        """Gradient magnitude of the evidence image at the finest scale (σ = 1 px)."""
        return ndi.gaussian_gradient_magnitude(self.evidence_image, 1.0)

    @cached_property
    def edge_level(self) -> float:
        """The 99th percentile of ``edge_map`` inside the search mask (infinite without one, so
        that no edge counts as exceptionally sharp)."""
        return self._percentile_in_search(self.edge_map, empty=float("inf"))

    def _percentile_in_search(self, values: np.ndarray, empty: float) -> float:
        """The 99th percentile of ``values`` inside the search mask; ``empty`` without one."""
        inside = values[self.search]
        return float(np.percentile(inside, 99)) if inside.size else empty

    def to_native(self, x: float, y: float) -> tuple[float, float]:
        """Working pixel-centre coordinates -> native pixel-centre coordinates."""
        return (x + 0.5) / self.scale - 0.5, (y + 0.5) / self.scale - 0.5

    def to_working(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * self.scale - 0.5, (y + 0.5) * self.scale - 0.5


def _normalise(values: np.ndarray, modality: str | None, tissue: np.ndarray | None = None) -> np.ndarray:
    """[0, 1] values: HU for CT; otherwise the 1st-99.5th percentiles of the tissue pixels (all
    pixels when ``tissue`` is None)."""
    if (modality or "").upper() == "CT":
        return np.clip((values + 1000.0) / 1400.0, 0.0, 1.0).astype(np.float32)
    sample = values if tissue is None or not tissue.any() else values[tissue]
    low, high = np.percentile(sample, [1.0, 99.5])
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _resize(values: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return values.astype(np.float32)
    # Anti-alias before sampling: sigma ~ 0.4 / scale px of the source.
    smoothed = ndi.gaussian_filter(values.astype(np.float32), 0.4 / scale)
    return ndi.zoom(smoothed, scale, order=1, grid_mode=True, mode="nearest").astype(np.float32)


#: Coloured pixels are filled from tissue within about this many working px, then from further.
_FILL_SIGMAS = (4.0, 16.0)


def _not_tissue(coloured: np.ndarray, scale: float) -> np.ndarray:
    """The strongly coloured pixels at working resolution, grown by a pixel: anti-aliased
    edges of annotations are part coloured."""
    return ndi.binary_dilation(_resize(coloured.astype(np.float32), scale) > 0.2)


def _filled(image: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """``image`` with ``holes`` filled by a Gaussian-weighted mean of the pixels around them
    (normalised convolution), then the median tissue level where nothing is near."""
    tissue = ~holes
    filled = image.copy()
    remaining = holes.copy()
    for sigma in _FILL_SIGMAS:
        weight = ndi.gaussian_filter(tissue.astype(np.float32), sigma)
        mean = ndi.gaussian_filter(np.where(tissue, image, 0.0).astype(np.float32), sigma)
        reached = remaining & (weight > 0.05)
        filled[reached] = mean[reached] / weight[reached]
        remaining &= ~reached
    filled[remaining] = float(np.median(image[tissue])) if tissue.any() else 0.0
    return filled


def _colour_note(coloured: np.ndarray) -> str:
    share = 100.0 * np.count_nonzero(coloured) / coloured.size
    return (f"{share:.1f} % of the frame is strongly coloured (Doppler flow, calipers or annotations) "
            "and was not treated as tissue")


def prepare(values: np.ndarray, modality: str | None, body_part: str | None = None,
            coloured: np.ndarray | None = None) -> WorkingImage:
    """Build the working image from a frame's physical (or grey, or luma) values; ``body_part``
    is the study's BodyPartExamined, when coded; ``coloured`` marks strongly coloured pixels
    (``Study.coloured``), which are not searched."""
    rows, cols = values.shape
    scale = min(1.0, WORKING_SIDE / max(rows, cols))
    modality = (modality or "").upper() or None
    not_tissue = None if coloured is None else _not_tissue(coloured, scale)
    notes = () if coloured is None else (_colour_note(coloured),)
    body: np.ndarray | Callable[[], np.ndarray]
    if modality == "CT":
        hu = _resize(values, scale)
        image = _normalise(hu, modality)
        search, organ = masks.ct_lung_mask(hu), "lungs"
        # Searching the lung fields does not need the body's outline (about a sixth of a slice's
        # search): computed when first read, unless colour is left out or the lungs were not found.
        body = partial(masks.foreground_mask, image)
        if not_tissue is not None or search.sum() < 0.01 * search.size:
            body = body()
    else:
        image = _normalise(_resize(values, scale), modality, None if not_tissue is None else ~not_tissue)
        if not_tissue is not None:
            image = _filled(image, not_tissue)
        if modality == "US":
            body = masks.ultrasound_mask(image)
            search, organ = body, "sector"
        else:
            body = masks.foreground_mask(image)
            if modality == "MR" and is_head(body_part):
                search, organ = masks.brain_mask(image, body), "brain"
            elif modality in RADIOGRAPHY and is_chest(body_part):
                body = masks.thorax_mask(body)
                search, organ = masks.chest_lung_mask(image, body), "lungs"
            else:
                search, organ = body, "body"
    if not_tissue is not None:
        body, search = body & ~not_tissue, search & ~not_tissue
    if search.sum() < 0.01 * search.size:  # the organ mask failed: fall back to the body
        search, organ = body, "body"
    view = lung_view(image, search) if modality == "CT" and organ == "lungs" else None
    # A body still to be computed is a chest CT's whose lung fields were found: within competence.
    outside = outside_competence(modality, body_part, organ, body) if isinstance(body, np.ndarray) else None
    if outside is not None:
        notes += (f"the offline detector is built for {COMPETENCE}, not for {outside}: "
                  "a region for review, not an anomaly",)
    return WorkingImage(image=image, scale=scale, modality=modality, polarity=expected_polarity(modality),
                        body=body, search=search, organ=organ, native_shape=(rows, cols), view=view, notes=notes,
                        outside=outside)


#: What the offline detector is built for, in words (``outside_competence``).
COMPETENCE = "chest CT, chest radiographs, brain MR and breast ultrasound"
#: A head is about as tall as wide, or taller (sagittal and coronal views): height over width of
#: its outline (dev head MRs: 0.99-1.52); a body cross-section is wider than tall (abdomen: 0.64).
_HEAD_ASPECT = (0.85, 1.7)
_MODALITY_WORDS = {"CT": "a CT", "MR": "an MR", "US": "an ultrasound", "DX": "a radiograph"}


def outside_competence(modality: str | None, body_part: str | None, organ: str, body: np.ndarray) -> str | None:
    """What the study is, in words, when the detector is not built for it; None when it is.

    It is built for chest CT (lung fields found), chest radiographs (coded as chest, or uncoded
    with lung fields found), brain MR (coded as a head, or uncoded, and a head-shaped outline)
    and breast ultrasound (coded as breast, or uncoded, and an imaged sector). Anything else
    gets a generic search whose results are regions for review, not anomalies.
    """
    family = "DX" if modality in RADIOGRAPHY else modality
    part = (body_part or "").strip().lower()
    if family in ("CT", "DX") and organ == "lungs":
        return None
    if family == "MR" and organ == "brain" and _head_shaped(body):
        return None
    if family == "US" and organ == "sector" and (not part or "breast" in part):
        return None
    what = _MODALITY_WORDS.get(family or "", "an image of unknown modality")
    if part and family in _MODALITY_WORDS:
        return f"{what} of the {part.replace('_', ' ')}"
    missing = {"CT": "without lung fields", "DX": "without a chest's lung fields",
               "MR": "whose outline is not a head's", "US": ""}.get(family or "", "")
    return f"{what} {missing}".strip()


def _head_shaped(body: np.ndarray) -> bool:
    span = row_span(body)
    columns = row_span(body.T)
    if span is None or columns is None:
        return False
    aspect = (span[1] - span[0] + 1) / (columns[1] - columns[0] + 1)
    return _HEAD_ASPECT[0] <= aspect <= _HEAD_ASPECT[1]


def lung_view(image: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The CT image with everything outside the lung fields set to the lungs' median (aerated
    parenchyma).

    A nodule pressed against the chest wall or mediastinum is, on the raw image, a small bump
    on a bright half-plane: the Laplacian sees the edge, and the ring around the nodule is half
    soft tissue, so its contrast is low or negative. Seen against parenchyma on every side it
    is a blob like any other (dev: a -550 HU juxtapleural ground-glass nodule went from not in
    the top 10 to first on some slices). The lung mask is closed over the pleural surface, so
    such nodules stay inside it.
    """
    view = image.copy()
    view[~lungs] = np.median(image[lungs])
    return view


def frame_as_shown(study: Study, frame: int) -> np.ndarray:
    """A frame's values ordered as the screen shows them (float32). MONOCHROME1 frames (common
    for computed radiography) store dense tissue as low values; they are negated, so that, as on
    the screen, bone and opacities are high and the lungs low."""
    values = np.asarray(study.physical(frame), dtype=np.float32)
    return -values if study.safe.photometric == "MONOCHROME1" else values


def prepare_study_frame(study: Study, frame: int) -> WorkingImage:
    """The working image of one frame of an open study, as shown on screen."""
    return prepare(frame_as_shown(study, frame), study.modality, study.safe.body_part, study.coloured(frame))
