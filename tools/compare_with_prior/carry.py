"""A current finding carried to the prior and looked for there.

The finding's box is mapped into the prior by the registration (``Similarity``: its centre moved,
its size scaled), then verified there by the same evidence code as any proposal
(``verify_coordinates.verify_location``): the lesion is present in the prior when the pixels at
the carried place do not contradict it, their evidence reaches ``PRESENT_MIN_EVIDENCE``, and
the verified centre stays within the lesion's own radius of the carried one (a verification that
moves to another blob nearby — a vessel beside a nodule that is new — has found something else);
then it is measured there as in the current study (``measure.segmentation``: long and short
axis). Nothing at its place makes the finding ``new``.

``PRESENT_MIN_EVIDENCE`` is provisional: it is to be chosen by cross-validation on the
``bench/make_longitudinal.py`` pairs (``new`` against the others), as every rule tuned on the dev
set is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tools.compare.registration import Similarity
from tools.coordinates import BoxPx
from tools.detection.working import WorkingImage
from tools.findings import Verification
from tools.measure.diameters import Diameters
from tools.measure.segmentation import measure_lesion, settings_for
from tools.verify_coordinates import verify_location

#: Evidence at the carried place (the calibrated confidence the verification reports) from which
#: the lesion counts as present in the prior. Provisional (see the module).
PRESENT_MIN_EVIDENCE = 0.35
#: How far (in lesion radii) the verified centre may lie from the carried one and still be the same lesion.
MAX_SHIFT_RADII = 1.0


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


def carry_to_prior(prior: WorkingImage, box: BoxPx, transform: Similarity,
                   spacing_mm: tuple[float, float] | None) -> CarriedFinding:
    """Look for the lesion of the current ``box`` in the ``prior`` working image."""
    carried = carried_box(box, transform, prior.native_shape)
    found = verify_location(prior, carried, spacing_mm=spacing_mm)
    verification = found.verification
    reach = max(carried.width, carried.height) / 2 * MAX_SHIFT_RADII
    present = (verification.status != "rejected" and (verification.evidence or 0.0) >= PRESENT_MIN_EVIDENCE
               and math.dist(found.center, carried.center) <= reach)
    if not present:
        return CarriedFinding(carried, verification, None, None)
    size = measure_lesion(prior, found.center, spacing_mm, settings_for(prior.modality))
    return CarriedFinding(carried, verification, found.center, size)
