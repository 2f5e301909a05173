"""verify_coordinates: check a proposed lesion location against the pixels, and refine it.

A proposal (from the vision model, the detector or the clinician) is a box or a point. The
checks, in order: shape and bounds; local evidence at the proposed centre (blob response,
contrast-to-noise against a surrounding ring, the modality's expected polarity); refinement;
agreement with the classical detector and across repeated samples.

Refinement weighs every lesion-like blob in a window around the proposal: the detector's
candidates, plus blobs of the proposal's own size found in the window. Each gets a weight

    confidence (calibrated, polarity-signed) × size compatibility with the box × distance prior,

where the distance prior is a Gaussian whose width is the vision model's expected error — a
fraction of the image diagonal, narrowed when the model's repeated samples agree. The window
reaches as far as that error (not just a few box sizes, which with small lesions and ~8 % of the
diagonal error almost never contains the lesion). The centre moves to the best blob only when it
is a plausible lesion in its own right and outweighs the evidence at the proposed centre;
otherwise the proposal stands. That asymmetry is what keeps good proposals from being made worse.

Rejection means the pixels contradict a lesion there — outside the body, a flat region with no
structure at the size of the box, or clearly the wrong polarity — not merely weak evidence:
subtle lesions (ground glass, faint nodules on radiographs) are kept, with the weakness said.
Verdict: confirmed, adjusted (with the shift in px and mm) or rejected, with reasons in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, model_validator
from scipy import ndimage as ndi

from tools.context import ToolContext, ToolResult
from tools.coordinates import BoxPx, SentImage, box_2d_to_px, point_to_px
from tools.detection.candidates import Candidate
from tools.detection.detector import Detection, frame_analysis
from tools.detection.evidence import SQRT2, Evidence, ScaleSpace, measure
from tools.detection.scoring import confidence, score
from tools.detection.working import WorkingImage
from tools.errors import InvalidCoordinatesError
from tools.findings import Finding, Verification

#: Evidence (LoG response in noise units) below which nothing lesion-like is there.
MIN_RESPONSE = 2.0
#: The vision model's expected error (σ of its centre, per axis) as a fraction of the image
#: diagonal, when its repeated samples do not say otherwise. The paper's ~80 px on 1024² images is
#: 5.5 %; the dev simulation uses 8 %. A prior somewhat wider than the error it models did best
#: there (over six simulation seeds: 0.08 → 0.12 gained 5 points of hit@1 at the same harm; 0.15
#: made 7 % of proposals worse): it lets a clearly lesion-like blob two σ away still win.
MODEL_ERROR_FRACTION = 0.12
#: Agreeing samples narrow that prior at most this much: samples can share a bias.
MIN_ERROR_SCALE = 0.5
#: The search window reaches this many prior σ (and at least SEARCH_FACTOR half-diagonals).
SEARCH_REACH = 2.0
SEARCH_FACTOR = 2.0
MIN_SEARCH_PX = 6.0
#: A blob must be at least this likely a lesion (calibrated) to move the centre to it. On the dev
#: simulation at σ = 8 % (six seeds): 0.25 made 3.4 % of proposals worse (5.6 % on one seed),
#: 0.275 made 2.3 % worse (at most 3.2 %) for 2 points less hit@1, 0.30 gained 5 points less.
MOVE_MIN_CONFIDENCE = 0.275
#: The proposed centre's own evidence never counts for less than this when weighed against a blob.
#: Raised from 0.05 with the sharper MR calibration: glioma centres look like nothing (confidence
#: ~0.03), and at 0.05 a bright blob 15-20 % of the diagonal away outweighed near-perfect (σ = 2 %)
#: proposals on 9-11 % of dev MR images; at 0.15, 4 % (σ = 8 %, two seeds: hit@1 +0.29/+0.32,
#: 4.0 %/0 % made worse; 0.10 made more worse, 0.20 gained less).
STAY_FLOOR = 0.15
#: A blob closer than this fraction of the box's longer side is the proposal itself, and the
#: centre stays. 0.15 rather than 0.25 lets an off-centre proposal on a large lesion move to the
#: lesion's middle (dev simulation, σ = 8 %: ultrasound median deviation 5.4 -> 4.3 % of the
#: diagonal; over three seeds and at σ = 2 % no proposal more was made worse).
MIN_MOVE_FRACTION = 0.15
#: Tolerance (σ of the log ratio) between a blob's radius and the proposal's half-size: the
#: model's box size is informative (a 20 % size error is typical), the blob radius less so.
#: 0.4-0.5 made fewer proposals worse than 0.6-0.8 at about the same gain.
SIZE_TOLERANCE = 0.5
#: Blob radii from this fraction to this multiple of a proposal's half-diagonal fit its size.
SMALLEST_FIT = 0.35
LARGEST_FIT = 1.6
#: Blobs of the proposal's size examined in the window, strongest first.
MAX_WINDOW_BLOBS = 12
#: Contrast-to-noise at or below which (with a blob response of the opposite sign) the proposed
#: centre clearly has the wrong polarity, e.g. bright where lesions here are dark.
WRONG_POLARITY_CNR = -1.5


@dataclass(frozen=True)
class VerifiedLocation:
    """The verdict plus the refined box (native px)."""

    verification: Verification
    box: BoxPx
    center: tuple[float, float]


@dataclass(frozen=True)
class _Blob:
    """A lesion-like blob the centre could move to (native px)."""

    x: float
    y: float
    radius_px: float
    confidence: float


@dataclass(frozen=True)
class _Choice:
    blob: _Blob
    weight: float
    distance: float


def _clip_to_image(box: BoxPx, width: int, height: int, reasons: list[str]) -> BoxPx:
    if box.x1 < -0.5 or box.y1 < -0.5 or box.x0 > width - 0.5 or box.y0 > height - 0.5:
        raise InvalidCoordinatesError("The proposed location lies entirely outside the image.")
    clipped = box.clipped(width, height)
    if clipped != box:
        reasons.append("the box extended past the image edge and was clipped")
    return clipped


def _shape_notes(box: BoxPx, width: int, height: int, reasons: list[str]) -> None:
    if box.width * box.height > 0.5 * width * height:
        reasons.append("the box covers more than half the image, which is not a focal finding")
    if max(box.width, box.height) > 6 * min(box.width, box.height):
        reasons.append("the box is very elongated")


def _sigma_range(space: ScaleSpace, half_size: float) -> list[int]:
    """Scale levels whose blob radius (σ√2) is compatible with the proposal's size."""
    levels = [i for i, s in enumerate(space.sigmas) if SMALLEST_FIT * half_size <= s * SQRT2 <= LARGEST_FIT * half_size]
    if not levels:
        levels = [int(np.argmin([abs(s * SQRT2 - half_size) for s in space.sigmas]))]
    return levels


def _evidence_here(space: ScaleSpace, cx: float, cy: float, levels: list[int]) -> tuple[Evidence, float]:
    """The best evidence at the proposed centre over the compatible scales, and its score."""
    work = space.work
    options = []
    for level in levels:
        sigma = space.sigmas[level]
        evidence = measure(space, cx, cy, sigma)
        options.append((score(Candidate(cx, cy, sigma, evidence), work), evidence))
    value, evidence = max(options, key=lambda pair: pair[0])
    return evidence, value


def _prior_sigma(box: BoxPx, diagonal: float, sample_centres: Sequence[tuple[float, float]]) -> float:
    """Width (px) of the distance prior: the model's expected error, narrowed (never below half,
    nor below the box itself) when its repeated samples agree closely."""
    default = MODEL_ERROR_FRACTION * diagonal
    if len(sample_centres) < 2:
        return default
    cx, cy = box.center
    spread = math.sqrt(float(np.mean([(x - cx) ** 2 + (y - cy) ** 2 for x, y in sample_centres])))
    floor = max(MIN_ERROR_SCALE * default, math.hypot(box.width, box.height) / 2)
    return min(max(spread, floor), default)


def _window(shape: tuple[int, int], cx: float, cy: float, radius: float) -> tuple[slice, slice]:
    rows, cols = shape
    return (slice(max(0, int(cy - radius)), min(rows, int(cy + radius) + 2)),
            slice(max(0, int(cx - radius)), min(cols, int(cx + radius) + 2)))


def _window_blobs(space: ScaleSpace, levels: list[int], cx: float, cy: float, radius: float) -> list[_Blob]:
    """Blobs of the proposal's size (local maxima over its compatible scales) inside the body,
    within ``radius`` of working (cx, cy): the detector ranks blobs of every size, and may not
    list a lesion whose size only the proposal tells."""
    work = space.work
    rows, cols = _window(work.image.shape, cx, cy, radius)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return []
    stack = space.stack[levels, rows, cols]
    response, level = stack.max(axis=0), stack.argmax(axis=0)
    footprint = max(3, round(space.sigmas[levels[0]] * 2) | 1)
    yy, xx = np.ogrid[rows, cols]
    peaks = ((response == ndi.maximum_filter(response, size=footprint)) & (response > 0)
             & work.body[rows, cols] & (np.hypot(xx - cx, yy - cy) <= radius))
    ys, xs = np.nonzero(peaks)
    blobs = []
    for index in np.argsort(response[ys, xs])[::-1][:MAX_WINDOW_BLOBS]:
        yi, xi = int(ys[index]), int(xs[index])
        x, y = float(xi + cols.start), float(yi + rows.start)
        sigma = space.sigmas[levels[int(level[yi, xi])]]
        value = score(Candidate(x, y, sigma, measure(space, x, y, sigma)), work)
        nx, ny = work.to_native(x, y)
        blobs.append(_Blob(nx, ny, sigma * SQRT2 / work.scale, confidence(value, work.modality)))
    return blobs


def _weight(blob: _Blob, box: BoxPx, sigma_px: float) -> tuple[float, float]:
    """(posterior-like weight, distance px) of a blob as the lesion the box meant."""
    cx, cy = box.center
    distance = math.hypot(blob.x - cx, blob.y - cy)
    half_side = max((box.width + box.height) / 4, 1.0)
    size_fit = math.exp(-math.log(max(blob.radius_px, 0.5) / half_side) ** 2 / (2 * SIZE_TOLERANCE**2))
    prior = math.exp(-distance**2 / (2 * sigma_px**2))
    return blob.confidence * size_fit * prior, distance


def _best_blob(blobs: Sequence[_Blob], box: BoxPx, sigma_px: float, radius_px: float) -> _Choice | None:
    """The most likely plausible blob in the window, or None."""
    best = None
    for blob in blobs:
        if blob.confidence < MOVE_MIN_CONFIDENCE:
            continue
        weight, distance = _weight(blob, box, sigma_px)
        if distance <= radius_px and (best is None or weight > best.weight):
            best = _Choice(blob, weight, distance)
    return best


def verify_location(work: WorkingImage, box: BoxPx, *, spacing_mm: tuple[float, float] | None = None,
                    candidates: Sequence[Detection] = (), sample_centres: Sequence[tuple[float, float]] = (),
                    space: ScaleSpace | None = None) -> VerifiedLocation:
    """Verify and refine one proposed box on a prepared working image (native px in and out).

    The centre moves only to a blob that the calibrated model judges a plausible lesion and
    whose weight (confidence × size fit × distance prior) beats the evidence at the proposed
    centre, and never on a study the detector is not built for; otherwise the proposal stands,
    and it is rejected only when the pixels contradict it.
    """
    rows, cols = work.native_shape
    reasons: list[str] = []
    box = _clip_to_image(box, cols, rows, reasons)
    _shape_notes(box, cols, rows, reasons)
    space = space or ScaleSpace(work)
    cx, cy = work.to_working(*box.center)
    half_native = max(math.hypot(box.width, box.height) / 2, 1.5)
    levels = _sigma_range(space, half_native * work.scale)
    here, here_score = _evidence_here(space, cx, cy, levels)
    here_confidence = confidence(here_score, work.modality)

    sigma_px = _prior_sigma(box, math.hypot(rows, cols), sample_centres)
    radius = max(SEARCH_FACTOR * half_native, MIN_SEARCH_PX, SEARCH_REACH * sigma_px)
    blobs = [_Blob(d.x, d.y, d.radius_px, d.confidence) for d in candidates]
    blobs += _window_blobs(space, levels, cx, cy, radius * work.scale)
    best = _best_blob(blobs, box, sigma_px, radius)
    # Outside what the detector is built for, its idea of "more lesion-like" is no ground for
    # moving anyone's proposal (on an abdominal MR it would trade a dark liver mass for a kidney).
    moved = (work.outside is None and best is not None and best.weight >= max(here_confidence, STAY_FLOOR)
             and best.distance > MIN_MOVE_FRACTION * max(box.width, box.height))
    nx, ny = (best.blob.x, best.blob.y) if moved else box.center
    shift_px = math.hypot(nx - box.center[0], ny - box.center[1])
    shift_mm = _shift_mm(nx - box.center[0], ny - box.center[1], spacing_mm)
    refined = BoxPx.around(nx, ny, box.width, box.height).clipped(cols, rows)

    if moved:
        status, final_confidence = "adjusted", best.blob.confidence
        reasons.insert(0, _moved_reason(shift_px, shift_mm, best.blob.confidence, here_confidence))
    else:
        contradiction = _contradiction(space, box, here, levels)
        status = "rejected" if contradiction else "confirmed"
        final_confidence = here_confidence
        reasons.insert(0, contradiction or _kept_reason(here, here_confidence, work.outside is not None))
        if not contradiction and _beyond_blob_scales(space, box):
            reasons.append("the box is larger than any lesion size the detector measures, so only the "
                           "evidence at its centre was weighed")
    _evidence_notes(work, here, reasons)
    _agreement_notes(refined, candidates, sample_centres, box, reasons)
    verification = Verification(status=status, reasons=reasons, shift_px=round(shift_px, 2),
                                shift_mm=None if shift_mm is None else round(shift_mm, 2),
                                contrast_to_noise=round(here.cnr, 3), evidence=round(final_confidence, 3))
    return VerifiedLocation(verification=verification, box=refined, center=(nx, ny))


def _shift_mm(dx: float, dy: float, spacing_mm: tuple[float, float] | None) -> float | None:
    if spacing_mm is None:
        return None
    row_mm, column_mm = spacing_mm
    return math.hypot(dx * column_mm, dy * row_mm)


def _moved_reason(shift_px: float, shift_mm: float | None, blob_confidence: float, here_confidence: float) -> str:
    distance = f"{shift_px:.1f} px" + ("" if shift_mm is None else f" ({shift_mm:.1f} mm)")
    return (f"moved {distance} to a nearby blob of the box's size that looks more like a lesion "
            f"(confidence {blob_confidence:.2f} vs {here_confidence:.2f} at the proposed centre)")


def _kept_reason(here: Evidence, here_confidence: float, outside: bool = False) -> str:
    if here_confidence >= MOVE_MIN_CONFIDENCE or here.cnr >= 1.0:
        return f"lesion-like contrast at the proposed location (confidence {here_confidence:.2f})"
    if outside:
        return (f"kept as proposed: the image evidence here is weak (confidence {here_confidence:.2f}), nothing in "
                "the pixels contradicts a lesion, and on this study the detector does not move proposals")
    # Subtle lesions (ground glass, faint nodules, loose boxes) look like this too: say so, keep it.
    return (f"kept as proposed: the image evidence here is weak (confidence {here_confidence:.2f}), "
            "but nothing in the pixels contradicts a lesion and no clearer blob is nearby")


def _contradiction(space: ScaleSpace, box: BoxPx, here: Evidence, levels: list[int]) -> str | None:
    """Why the pixels contradict a lesion at the proposal, or None when they do not."""
    work = space.work
    xi, yi = (round(v) for v in work.to_working(*box.center))
    rows, cols = work.image.shape
    if not work.field[min(max(yi, 0), rows - 1), min(max(xi, 0), cols - 1)]:
        where = "the imaged sector" if work.organ == "sector" else "the body"
        return f"the proposed centre lies outside {where}, on background"
    # "Flat" is said only of a box the blob scales reach: past the largest (a breast mass filling
    # much of the field), no structure at the box's size was looked for. Dev simulation, σ = 2 %
    # and 8 %, five seeds each: 9 of the 10 ultrasound proposals on a lesion rejected as flat had
    # such a box, against 1 of the 5 beside one.
    strongest = _strongest_in_box(space, box, levels)
    if strongest < MIN_RESPONSE and abs(here.cnr) < 0.5 and not _beyond_blob_scales(space, box):
        return "the region is flat: no structure at the size of the box, nothing that could be a lesion"
    # MR lesions can be brighter or darker than brain; elsewhere the polarity is expected.
    if work.modality != "MR" and here.cnr <= WRONG_POLARITY_CNR and here.response <= -MIN_RESPONSE:
        lesion, found = ("darker", "brighter") if work.polarity == "dark" else ("brighter", "darker")
        return (f"the proposed area is {found} than its surroundings (contrast-to-noise {here.cnr:.1f}), "
                f"whereas a lesion here would be {lesion}")
    return None


def _beyond_blob_scales(space: ScaleSpace, box: BoxPx) -> bool:
    """True when even the largest blob scale is too small for the box (see ``_sigma_range``)."""
    half_size = math.hypot(box.width, box.height) / 2 * space.work.scale
    return SMALLEST_FIT * half_size > space.sigmas[-1] * SQRT2


def _strongest_in_box(space: ScaleSpace, box: BoxPx, levels: list[int]) -> float:
    """The strongest blob response (noise units, lesion polarity; either for MR) inside the box."""
    work = space.work
    x0, y0 = work.to_working(box.x0, box.y0)
    x1, y1 = work.to_working(box.x1, box.y1)
    rows, cols = work.image.shape
    r0, r1 = min(max(math.floor(y0), 0), rows - 1), min(max(math.ceil(y1), 0), rows - 1) + 1
    c0, c1 = min(max(math.floor(x0), 0), cols - 1), min(max(math.ceil(x1), 0), cols - 1) + 1
    patch = space.stack[levels, r0:r1, c0:c1]
    values = np.abs(patch) if work.modality == "MR" else patch
    return float(values.max()) / space.noise


def _evidence_notes(work: WorkingImage, here: Evidence, reasons: list[str]) -> None:
    polarity = "bright" if work.polarity == "bright" else "dark"
    if not here.inside:
        reasons.append(f"the proposed centre is outside the {work.organ} mask")
    if here.contrast < 0 and work.modality != "MR":
        reasons.append(f"the proposed centre is not {polarity}er than its surroundings, as expected here")
    elif here.cnr >= 1.0:
        reasons.append(f"contrast-to-noise at the proposed centre is {here.cnr:.1f}")
    reasons.extend(work.notes)


def _agreement_notes(refined: BoxPx, candidates: Sequence[Detection], sample_centres: Sequence[tuple[float, float]],
                     proposed: BoxPx, reasons: list[str]) -> None:
    if candidates:
        # Only candidates the detector itself finds plausible count as agreement.
        agreeing = [d for d in candidates if refined.contains(d.x, d.y) and d.confidence >= MOVE_MIN_CONFIDENCE]
        if agreeing:
            reasons.append(f"agrees with the classical detector (candidate confidence {agreeing[0].confidence:.2f})")
        else:
            reasons.append("no plausible classical detector candidate inside the box")
    if len(sample_centres) >= 2:
        spread = float(np.mean([math.hypot(x - proposed.center[0], y - proposed.center[1]) for x, y in sample_centres]))
        size = max(proposed.width, proposed.height)
        reasons.append("the model's repeated samples agree" if spread <= 0.5 * size
                       else f"the model's repeated samples disagree (spread {spread:.0f} px)")


# -- the tool --------------------------------------------------------------------------------------
class VerifyCoordinatesInput(BaseModel):
    """Arguments of ``verify_coordinates``: exactly one of box_2d, point or box_px."""

    box_2d: list[float] | None = Field(default=None, description="[ymin, xmin, ymax, xmax], 0–1000 of the image you were shown.")
    point: list[float] | None = Field(default=None, description="[y, x], 0–1000 of the image you were shown.")
    box_px: list[float] | None = Field(default=None, description="[x0, y0, x1, y1] in native pixels (inclusive).")
    size_px: float = Field(default=24.0, gt=0, description="Box size to assume around a point, in native px.")
    frame: int | None = Field(default=None, ge=0, description="Frame to check; default the one shown.")
    study_id: str | None = Field(default=None, description="Which open study; default the current one.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VerifyCoordinatesInput:
        given = [v for v in (self.box_2d, self.point, self.box_px) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of box_2d, point or box_px")
        return self


class VerifyCoordinatesOutput(BaseModel):
    status: str
    reasons: list[str]
    center_px: tuple[float, float]
    bbox_px: list[float]
    shift_px: float | None
    shift_mm: float | None
    contrast_to_noise: float | None


def proposal_box(args: VerifyCoordinatesInput, sent: SentImage) -> BoxPx:
    """The native box a proposal describes, whichever form it came in."""
    if args.box_2d is not None:
        return box_2d_to_px(args.box_2d, sent)
    if args.point is not None:
        x, y = point_to_px(args.point, sent)
        return BoxPx.around(x, y, args.size_px, args.size_px)
    if len(args.box_px) != 4:
        raise InvalidCoordinatesError("box_px needs four numbers: x0, y0, x1, y1.")
    x0, y0, x1, y1 = args.box_px
    if x1 < x0 or y1 < y0:
        raise InvalidCoordinatesError("box_px has its minimum after its maximum ([x0, y0, x1, y1]).")
    return BoxPx(x0=x0, y0=y0, x1=x1, y1=y1)


def verify_coordinates(ctx: ToolContext, args: VerifyCoordinatesInput) -> ToolResult:
    """Check a proposed lesion location (box or point) against the image and refine it.

    Returns confirmed, adjusted (with the shift in px and mm) or rejected, with reasons.
    """
    view = ctx.view(args.study_id)
    study = view.study
    frame = study.check_frame(view.frame if args.frame is None else args.frame)
    sent = SentImage.fit_long_side(study.safe.columns, study.safe.rows, ctx.model_image_max_side)
    box = proposal_box(args, sent)
    analysis = frame_analysis(ctx, study, frame)
    result = verify_location(analysis.work, box, spacing_mm=study.pixel_spacing_mm(frame),
                             candidates=analysis.detections, space=analysis.space)
    output = VerifyCoordinatesOutput(
        status=result.verification.status, reasons=result.verification.reasons,
        center_px=(round(result.center[0], 2), round(result.center[1], 2)),
        bbox_px=[round(v, 2) for v in result.box.as_list()], shift_px=result.verification.shift_px,
        shift_mm=result.verification.shift_mm, contrast_to_noise=result.verification.contrast_to_noise,
    )
    return ToolResult(output=output)


def clinician_finding(ctx: ToolContext, box: BoxPx, *, frame: int, label: str, study_id: str | None = None) -> Finding:
    """The clinician's mark (a native box; a point is a small box around it) as a finding with
    source ``clinician``: verified with the same evidence as any proposal (the box refined), and
    added to the session's findings. Its size is measured afterwards by the caller (fit_gaussian)."""
    study = ctx.view(study_id).study
    frame = study.check_frame(frame)
    box = _clip_to_image(box, study.safe.columns, study.safe.rows, [])
    analysis = frame_analysis(ctx, study, frame)
    result = verify_location(analysis.work, box, spacing_mm=study.pixel_spacing_mm(frame),
                             candidates=analysis.detections, space=analysis.space)
    finding = Finding(id=ctx.next_finding_id(), study_id=study.id, label=label.strip() or "clinician-marked finding",
                      frame=frame, center_px=(round(result.center[0], 2), round(result.center[1], 2)),
                      bbox_px=result.box, confidence=1.0, source="clinician", verification=result.verification)
    ctx.findings[finding.id] = finding
    return finding
