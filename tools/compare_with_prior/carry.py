"""A finding carried to the other study of a comparison and looked for there.

The finding's box is mapped by the registration (``Similarity``: its centre moved, its size
scaled) and verified there by the same evidence code as any proposal
(``verify_coordinates.verify_location``), whose refined centre is kept when it stays within half
the lesion's radius of the carried one (``MAX_SHIFT_RADII``): the registration puts the carried
centre within a fraction of a radius of the lesion (median 0.02 % of the diagonal on the dev
pairs), so a verification that moves further — to another blob nearby, a vessel beside a nodule
that is new — has found something else.

Whether the lesion is there is not the detector's confidence (which is low for many real
lesions: the detector misses some, measured): it is the lesion's own contrast, compared. The
contrast of a lesion is the mean of its inner disc (half its radius) against the ring 1.5 to 2.5
radii out (``RING_RADII``), over the ring's spread, on the working image; the lesion is present
in the other study when its contrast there keeps the sign and reaches
``PRESENT_MIN_CONTRAST_RATIO`` of its contrast in the study it was found in (``is_present``).
The inner disc stays inside a lesion that shrank or grew by up to a factor of two, and the ring
outside one that is up to 1.5 times larger there.

The ring, the shift and the ratio were chosen by cross-validation on the dev set's
(prior, current) pairs (``bench/make_longitudinal.py``; ``loupe eval --change PAIRS.csv --cv 5``,
folds grouped by source image; status accuracy, cross-validated, on the 136 pairs of
``--seed 0`` / a second set made with ``--seed 1``, the ratio and ``change.UNCERTAINTY_K``
chosen on each fold's training pairs, before ``change.RELATIVE_MIN`` was added; from 0.58 / 0.57
with a ring 2–3 radii out and shifts up to one radius):

- the verified centre kept within 1 → 0.5 radii: 0.63 / 0.60. Of the verification's moves
  between half a radius and one, most were on a lesion that was gone, onto something beside it;
  never moving scored the same on the first set and 0.61 on the second;
- the ring 2–3 → 1.5–2.5 radii (with that shift): 0.67 / 0.63. Two to three radii out, a large
  lesion's ring reaches other structures, whose spread swamps the lesion's own contrast, and a
  lesion gone from a region darker or brighter than they are still seemed there. A thinner
  ring, 1.5–2.25 (0.68 / 0.64) or 1.3–2.3, was not taken: in homogeneous lung its spread is so
  small that the contrast is inflated — the bundled CT's nodule, grown 1.5 times, measured 8.7
  here against 3.3 in the prior and was called new (1.5–2.5: 5.5 against 3.4, present). 1.5–3,
  2–4, 1.75–2.5 and the closer ring for large lesions only scored less or no more, and so did
  an inner disc of 0.4 or 0.6 radii;
- ``PRESENT_MIN_CONTRAST_RATIO`` 0.5: every fold chose it (grid 0.2–0.7).

Tried and left out (no better cross-validated): the median and MAD instead of the mean and
spread, the raw difference of the means instead of one over the spread (as good, 0.66 / 0.63,
but ``contrast_here`` comes normalised), the normalised cross-correlation of the lesion's
neighbourhood with the other study's instead of the contrast ratio (0.40–0.58); for the sizes,
re-measuring from centres 2 px, 4 px or 0.2 radii away for the uncertainty (``lesion_size``;
1 px scored best) and the median of the re-measurements as the size.

Then the lesion is measured there as in its own study (``measure.segmentation``: long and short
axis). Nothing at its place makes a current finding ``new`` (a prior one ``resolved``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tools.compare.change import LesionSize
from tools.compare.registration import Similarity
from tools.coordinates import BoxPx
from tools.detection.working import WorkingImage
from tools.findings import Verification
from tools.measure.diameters import Diameters
from tools.measure.segmentation import measure_lesion, settings_for
from tools.verify_coordinates import verify_location

#: The share of its own contrast a lesion must keep at its carried place to count as present.
PRESENT_MIN_CONTRAST_RATIO = 0.5
#: How far (in lesion radii) the verified centre may lie from the carried one and still be the same lesion.
MAX_SHIFT_RADII = 0.5
#: The contrast's inner disc and surrounding ring, in lesion radii.
INNER_RADII, RING_RADII = 0.5, (1.5, 2.5)
#: The centres a size is measured again from (working px around the lesion's centre), for its uncertainty.
REMEASURE_OFFSETS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))


@dataclass(frozen=True)
class CarriedFinding:
    #: The finding's box mapped into the prior (native px of the prior), before verification.
    carried: BoxPx
    verification: Verification
    #: Where the lesion is in the prior (the verified centre); None when nothing is there.
    center_px: tuple[float, float] | None
    #: Its long and short axes in the prior (mm with spacing); None when absent or not segmentable.
    size: Diameters | None

    @property
    def present(self) -> bool:
        return self.center_px is not None


def carried_box(box: BoxPx, transform: Similarity, prior_shape: tuple[int, int]) -> BoxPx:
    """The box's centre mapped into the prior and its sides scaled, clipped to the prior."""
    x, y = transform.apply(*box.center)
    rows, cols = prior_shape
    return BoxPx.around(x, y, box.width * transform.scale, box.height * transform.scale).clipped(cols, rows)


def lesion_contrast(work: WorkingImage, centre: tuple[float, float], radius: float) -> float:
    """The lesion's contrast at ``centre`` (native px, radius in native px): its inner disc's mean
    against the surrounding ring's, over the ring's spread (0 off the image or on a flat ring)."""
    image = work.evidence_image
    x, y = work.to_working(*centre)
    r = max(radius * work.scale, 2.0)
    rows, cols = np.ogrid[0:image.shape[0], 0:image.shape[1]]
    distance = np.hypot(cols - x, rows - y)
    disc = distance <= max(INNER_RADII * r, 1.0)
    ring = (distance >= RING_RADII[0] * r) & (distance <= RING_RADII[1] * r)
    if not disc.any() or ring.sum() < 8:
        return 0.0
    spread = float(image[ring].std())
    return float(image[disc].mean() - image[ring].mean()) / spread if spread > 0 else 0.0


@dataclass(frozen=True)
class Look:
    """Where the lesion of a finding would be in the other study, before deciding whether it is there."""

    #: The finding's box mapped into the other study (native px), before verification.
    carried: BoxPx
    verification: Verification
    #: The verified centre when it stays within ``MAX_SHIFT_RADII`` of the carried one, else the carried centre.
    centre: tuple[float, float]
    #: The lesion's contrast at ``centre`` (``lesion_contrast``, the carried radius).
    contrast: float


def look_for(prior: WorkingImage, box: BoxPx, transform: Similarity,
             spacing_mm: tuple[float, float] | None) -> Look:
    """The lesion of ``box`` carried into ``prior``, verified there, and its contrast at the centre kept."""
    carried = carried_box(box, transform, prior.native_shape)
    found = verify_location(prior, carried, spacing_mm=spacing_mm)
    radius = max(carried.width, carried.height) / 2
    centre = found.center if math.dist(found.center, carried.center) <= MAX_SHIFT_RADII * radius else carried.center
    return Look(carried, found.verification, centre, lesion_contrast(prior, centre, radius))


def is_present(contrast_there: float, contrast_here: float,
               min_contrast_ratio: float = PRESENT_MIN_CONTRAST_RATIO) -> bool:
    """The presence rule of the module: the contrast keeps its sign and at least
    ``min_contrast_ratio`` of its size in the study the finding was found in."""
    return contrast_here != 0 and contrast_there / contrast_here >= min_contrast_ratio


def carry_to_prior(prior: WorkingImage, box: BoxPx, transform: Similarity, spacing_mm: tuple[float, float] | None,
                   *, contrast_here: float,
                   min_contrast_ratio: float = PRESENT_MIN_CONTRAST_RATIO) -> CarriedFinding:
    """Look in the ``prior`` working image for the lesion of ``box`` (whose contrast in its own
    study is ``contrast_here``, ``lesion_contrast``); present by ``is_present``."""
    look = look_for(prior, box, transform, spacing_mm)
    if not is_present(look.contrast, contrast_here, min_contrast_ratio):
        return CarriedFinding(look.carried, look.verification, None, None)
    size = measure_lesion(prior, look.centre, spacing_mm, settings_for(prior.modality))
    return CarriedFinding(look.carried, look.verification, look.centre, size)


def lesion_size(work: WorkingImage, centre: tuple[float, float], spacing_mm: tuple[float, float] | None,
                *, per_px: float = 1.0) -> LesionSize | None:
    """The lesion at ``centre`` measured as a reader would (long and short axis, mm with
    ``spacing_mm``, else native px times ``per_px``), with how sure the mean diameter is: its
    spread when measured again from centres one working pixel away (a segmentation that depends
    on where it starts is less sure), at least half a working pixel. None when it cannot be
    segmented."""
    settings = settings_for(work.modality)
    size = measure_lesion(work, centre, spacing_mm, settings)
    if size is None:
        return None
    unit = (min(spacing_mm) if spacing_mm else per_px) / work.scale  # one working pixel, in the size's unit
    means = [(size.long + size.short) / 2]
    for dx, dy in REMEASURE_OFFSETS:
        again = measure_lesion(work, (centre[0] + dx / work.scale, centre[1] + dy / work.scale), spacing_mm, settings)
        if again is not None:
            means.append((again.long + again.short) / 2)
    factor = 1.0 if spacing_mm else per_px
    return LesionSize(size.long * factor, size.short * factor, max(float(np.std(means)) * factor, unit / 2))
