"""Ranking candidates and turning their score into a calibrated confidence.

Each modality has a small, interpretable score built from the candidate's evidence, chosen on
the development set (``../shared/data/eval``) among a handful of alternatives and checked by
cross-validation against a logistic model over all features (which over-fitted 30–46 images
per modality). The score is mapped to a probability with a one-feature logistic calibration,
``P(lesion) = 1 / (1 + exp(-(a·ln(score) + b)))``, fitted on the top five candidates of every
dev image the detector is built for; ``bench/calibrate_detector.py`` reproduces the constants, and
``bench/detector_performance.py`` measures their reliability under cross-validation.

Scores (σ in units of a 512-px image, positions as fractions of the image):
- US: contrast·√σ — large, dark, well-contrasted blobs (hypoechoic masses) — halved for blobs
  that reach up to the skin line (within ``NEAR_FIELD_GAP`` of the sector's depth): a breast
  lesion lies beneath skin and subcutaneous fat, while dark bands and reverberation there
  were top false positives on lesion and normal images alike (dev US hit@1 0.70 -> 0.77; every
  dev lesion found first kept a gap of at least 5% of the depth).
- MR: contrast·σ, damped near the edge of the brain mask and away from the image centre
  (scalp and orbits are bright on post-contrast T1), and by the fraction of the surrounding
  ring that is much darker than brain tissue (air, bone, fluid): tumours are surrounded by
  brain, bright skull-base, sinus and facial structures by air and bone (dev MR hit@1
  0.53 -> 0.62 with the scale-space candidates). On sagittal and coronal views that run down
  into the neck, blobs below the skull base (deeper than ``SKULL_BASE_DEPTH`` of the head's
  extent) are damped: face and neck are bright on post-contrast T1 and were the top false
  positives (dev MR hit@1 0.62 -> 0.69; on dev every tumour, pituitary ones included, lay
  above 0.57 while the misses' top blobs lay at 0.51-0.77). On axial and coronal views a blob
  with a mirror twin across the midline keeps ``TWIN_FLOOR`` of its score (``scores``): paired
  anatomy (orbits, choroid plexus, the two hemispheres' white matter) is symmetric, a tumour is
  not (dev MR hit@1 +1 image, none lost; any twin tolerance of 0.75-1.5 radii and floor of
  0.3-0.5 gave the same).
- CT: min(contrast-to-noise, 5)·σ, measured on the lung view (outside the lungs set to
  parenchyma) — nodules, including juxtapleural ones, beat small vessel cross-sections.
- CR/DX: contrast-to-noise·√σ, damped within two radii of the lung-field edge — focal
  opacities inside the lungs, not rib crossings and the lung outline — and cut to
  ``DEVICE_FLOOR`` for what looks like metal (a pacemaker, port, ECG electrode or clip): denser
  on average than 99 % of the lung fields, or edged more sharply than ``DEVICE_EDGE`` times
  their 99th-percentile gradient. A pacemaker and an electrode were top false positives on
  dev images; the sharpest edge near any dev lesion candidate was 1.2 times that percentile,
  near other top-10 candidates up to 3.9 (dev DX hit@1 0.27 -> 0.33; 1.4-2.5 gave the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from tools.detection.candidates import Candidate
from tools.detection.evidence import disk_and_ring
from tools.detection.working import RADIOGRAPHY, WorkingImage

#: (a, b) of the logistic calibration per modality; "other" for unknown modalities.
CALIBRATION: dict[str, tuple[float, float]] = {
    # Fitted on the images each family's detector is built for only (``bench/detector_performance.py``
    # prints the fit and its cross-validated reliability): an abdominal MR among the brain MRs had
    # pulled the MR curve down (cross-validated expected calibration error of the top finding on
    # brain MR 0.187 -> 0.108), and the radiograph constants were stale. The highest confidence on
    # a normal dev ultrasound is 0.48.
    "US": (2.459, -0.603),
    "MR": (2.919, -3.079),
    "CT": (4.031, -13.022),
    "DX": (3.909, -7.693),
    "other": (0.608, -1.795),
}

#: The confidence at which Loupe calls a candidate an anomaly (and below which it says
#: "no significant anomaly"). Normal dev ultrasound images peaked at 0.18–0.49.
ANOMALY_THRESHOLD = 0.5

#: Above this contrast-to-noise a CT blob is certainly there; size ranks it (dev: caps 3-6 give
#: the same ranking; without a cap small vessel cross-sections outrank nodules).
CT_CNR_CAP = 5.0

#: Depth (0 at the vertex, 1 at the bottom of the body) below which a head view with the neck in
#: it shows skull base, face and neck; the damping falls off over ``SKULL_BASE_WIDTH`` and
#: keeps ``BELOW_SKULL_BASE_FLOOR`` (a large, clear lesion there can still rank).
SKULL_BASE_DEPTH = 0.58
SKULL_BASE_WIDTH = 0.04
BELOW_SKULL_BASE_FLOOR = 0.2

#: Ultrasound blobs whose disk comes within this fraction of the sector's depth of its top edge
#: (the skin line) are damped to ``NEAR_FIELD_FLOOR``, smoothly over ``NEAR_FIELD_WIDTH``.
NEAR_FIELD_GAP = 0.02
NEAR_FIELD_WIDTH = 0.02
NEAR_FIELD_FLOOR = 0.5

#: What is left of a radiograph blob's score when it looks like metal (see the module notes).
DEVICE_FLOOR = 0.1
#: An edge this many times sharper than the lung fields' 99th-percentile gradient is metal's.
DEVICE_EDGE = 2.0

#: A head-MR blob keeps this share of its score when it has a mirror twin: a blob within
#: ``TWIN_REACH`` of its radius of the mirrored position, of a size within ``TWIN_SIZE`` times
#: its own, scoring at least ``TWIN_RELATIVE`` of it.
TWIN_FLOOR = 0.5
TWIN_REACH = 1.0
TWIN_SIZE = 1.5
TWIN_RELATIVE = 0.5

def modality_family(modality: str | None) -> str:
    modality = (modality or "").upper()
    if modality in RADIOGRAPHY:
        return "DX"
    return modality if modality in ("US", "MR", "CT") else "other"


@dataclass(frozen=True)
class Rules:
    """The modality-specific rules of the scores above, each of which can be switched off, so
    that ``loupe eval --cv K`` can ask of every rule whether it holds on images it was not
    chosen on (a rule written for a handful of development images may not)."""

    us_skin_line: bool = True  # US: halve blobs that reach up to the skin line
    mr_skull_base: bool = True  # MR: damp blobs below the skull base on views into the neck
    mr_mirror_twin: bool = True  # MR: damp blobs with a mirror twin across the midline
    dx_lung_edge: bool = True  # DX: damp blobs within two radii of the lung-field edge
    dx_dense_metal: bool = True  # DX: cut blobs denser than 99 % of the lung fields
    dx_sharp_metal: bool = True  # DX: cut blobs edged more sharply than DEVICE_EDGE x the lungs'

    @classmethod
    def names(cls, family: str) -> list[str]:
        """The switches of one modality family ("US", "MR", "DX")."""
        prefix = family.lower() + "_"
        return [f.name for f in fields(cls) if f.name.startswith(prefix)]


#: The rules the detector runs with.
RULES = Rules()


def score(candidate: Candidate, work: WorkingImage, rules: Rules = RULES) -> float:
    """The modality's ranking score (>= 0)."""
    evidence = candidate.evidence
    sigma = candidate.sigma / (max(work.image.shape) / 512.0)
    rows, cols = work.image.shape
    cx, cy = candidate.x / max(cols - 1, 1), candidate.y / max(rows - 1, 1)
    family = modality_family(work.modality)
    if family == "US":
        value = evidence.contrast * math.sqrt(sigma)
        if rules.us_skin_line:
            value *= _below_skin_line(work, candidate.y - candidate.radius)
    elif family == "CT":
        # Contrast-to-noise saturates: a vessel cross-section in clean parenchyma has a CNR of
        # 15-30 (its ring is nearly noiseless) but is small; past CT_CNR_CAP the blob is surely
        # real and its size decides.
        value = min(evidence.cnr, CT_CNR_CAP) * sigma
    elif family == "DX":
        value = evidence.cnr * math.sqrt(sigma)
        if rules.dx_lung_edge:  # ribs and the lung outline make strong blobs at the lung fields' edge
            value *= min(evidence.border / 2.0, 1.0)
        if _looks_like_metal(candidate, work, rules):
            value *= DEVICE_FLOOR
    else:
        centrality = max(0.0, 1 - 2 * abs(cx - 0.5)) * max(0.0, 1 - 2 * abs(cy - 0.5))
        # Tumours sit in brain tissue; bright skull-base and facial structures sit among air,
        # bone and fluid, which darken the surrounding ring.
        value = min(evidence.border, 2.0) * evidence.contrast * sigma * centrality * (1.0 - evidence.dark_ring)
        if rules.mr_skull_base:
            value *= _above_skull_base(work, candidate.y)
    return max(value, 0.0)


def scores(candidates: Sequence[Candidate], work: WorkingImage, rules: Rules = RULES) -> list[float]:
    """``score`` of each candidate, with mirror twins damped on symmetric head-MR views (a
    candidate's value there depends on the others; ``score`` alone cannot see them)."""
    values = [score(c, work, rules) for c in candidates]
    midline = work.midline_x
    if midline is None or not rules.mr_mirror_twin:
        return values
    return [value * TWIN_FLOOR if value > 0 and _has_mirror_twin(c, value, candidates, values, midline) else value
            for c, value in zip(candidates, values, strict=True)]


def _has_mirror_twin(candidate: Candidate, value: float, candidates: Sequence[Candidate],
                     values: Sequence[float], midline: float) -> bool:
    mirrored_x = 2 * midline - candidate.x
    if abs(mirrored_x - candidate.x) < 2 * candidate.radius:
        return False  # on the midline, a blob is its own mirror image
    return any(other is not candidate and other_value >= TWIN_RELATIVE * value
               and 1 / TWIN_SIZE <= other.sigma / candidate.sigma <= TWIN_SIZE
               and math.hypot(other.x - mirrored_x, other.y - candidate.y) < TWIN_REACH * candidate.radius
               for other, other_value in zip(candidates, values, strict=True))


def _looks_like_metal(candidate: Candidate, work: WorkingImage, rules: Rules) -> bool:
    """Denser, or sharper-edged, than nearly everything in the lung fields (radiographs)."""
    if rules.dx_dense_metal and candidate.evidence.level > work.dense_level:
        return True
    if not rules.dx_sharp_metal:
        return False
    # A little beyond the blob's radius, so that the rim of a ring (an ECG electrode) counts.
    window, disk, _ = disk_and_ring(work.image.shape, candidate.x, candidate.y, 1.2 * candidate.radius)
    edges = work.edge_map[window][disk]
    return edges.size > 0 and float(edges.max()) > DEVICE_EDGE * work.edge_level


def _below_skin_line(work: WorkingImage, blob_top: float) -> float:
    """1 for a blob beneath the skin line; ``NEAR_FIELD_FLOOR`` for one reaching up to it."""
    sector = work.sector_rows
    if sector is None:
        return 1.0
    gap = (blob_top - sector[0]) / max(sector[1] - sector[0], 1)
    beneath = _logistic((gap - NEAR_FIELD_GAP) / NEAR_FIELD_WIDTH)
    return NEAR_FIELD_FLOOR + (1.0 - NEAR_FIELD_FLOOR) * beneath


def _logistic(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(t, 40.0), -40.0)))


def _above_skull_base(work: WorkingImage, y: float) -> float:
    """1 inside the cranium; falls to ``BELOW_SKULL_BASE_FLOOR`` below the skull base of a
    view that includes the neck (see ``HeadExtent``)."""
    head = work.head_extent
    if head is None or not head.includes_neck:
        return 1.0
    inside = _logistic((SKULL_BASE_DEPTH - head.depth(y)) / SKULL_BASE_WIDTH)
    return BELOW_SKULL_BASE_FLOOR + (1.0 - BELOW_SKULL_BASE_FLOOR) * inside


def confidence(value: float, modality: str | None) -> float:
    """Calibrated probability that a candidate with this score is a lesion."""
    a, b = CALIBRATION[modality_family(modality)]
    return _logistic(a * math.log(max(value, 1e-6)) + b)
