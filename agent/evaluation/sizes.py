"""Lesion sizes against the readers' boxes: the size table of ``loupe eval``.

Size accuracy is measured apart from detection: Loupe measures the lesion the reader marked,
from the reader's centre alone (as a click there would; the box's size is never used), so a
missed or misplaced detection does not hide a good measurement or excuse a bad one. Per lesion
(LIDC <3 mm point marks are left out: their box is nominal):

- **segmentation** — the long axis Loupe reports: the segmented lesion's longest diameter
  (``tools.measure``), or, where nothing could be segmented, the Gaussian FWHM fitted in a
  click's box at the centre (``POINT_BOX_PX``, as the viewer's click), as the app falls back;
- **Gaussian FWHM** (before) — the fit's major FWHM, given the reader's own box: the most the
  Gaussian could do, and still not a diameter;

each over the reader box's long side (in mm with the pixel spacing, else px). A group's figures
are the median ratio and the share of lesions within ±25 % (targets, cross-validated: median
0.90–1.15, share ≥ 0.60). The boxes are what readers drew, not diameters: LIDC boxes are the
union of up to four readers' outlines, drawn just outside the nodule, and NIH boxes are loose
around diffuse findings; a perfect long axis is shorter than both.

Under ``--cv K`` the segmentation's tuned settings (``tools.measure.segmentation
.SegmentationSettings``) are chosen per modality family on the other K−1 folds only (the share
within ±25 %, then the median closest to 1, then the simpler settings) and the held-out fold is
measured with them; the folds are those of the detector's cross-validation.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel

from agent.evaluation.crossval import fold_of
from agent.evaluation.manifest import SMALL_NODULE, EvalImage, Lesion
from agent.evaluation.scoring import failure_line
from tools.coordinates import BoxPx
from tools.detection.scoring import modality_family
from tools.detection.working import expected_polarity, prepare_study_frame
from tools.gaussian.fit import fit_gaussian_2d
from tools.measure.segmentation import (SHIPPED, SegmentationSettings, region_diameters, segment_lesion,
                                        settings_for)
from tools.study import StudyLimits, open_study

#: A click marks a box of this many native px around its point (as ``agent.viewer.POINT_BOX_PX``).
POINT_BOX_PX = 24
#: A long axis within this fraction of the reader box's long side counts as agreeing.
TOLERANCE = 0.25
#: The settings the cross-validation chooses among, for every modality family.
SETTINGS_GRID: tuple[SegmentationSettings, ...] = tuple(
    SegmentationSettings(opening=opening, edge_fraction=edge_fraction, margin_px=margin)
    for edge_fraction, opening, margin in itertools.product((1.0, 0.8), (0.0, 0.15, 0.3), (0.0, 1.0, 2.0)))


@dataclass
class SizeCase:
    """One marked lesion and what Loupe measured of it (lengths in ``unit``)."""

    image: EvalImage
    lesion: Lesion
    family: str
    unit: str  # "mm" or "px"
    reader_long: float
    #: The Gaussian's major FWHM given the reader's box; None when the fit did not converge.
    gaussian_long: float | None
    #: The Gaussian's major FWHM in a click's box at the reader's centre (the app's fallback).
    fallback_long: float | None
    #: The segmentation's long axis per settings tried; None where nothing was segmented.
    segmented: dict[SegmentationSettings, float | None] = field(default_factory=dict)

    def reported_long(self, settings: SegmentationSettings) -> float | None:
        """The long axis Loupe reports with ``settings``: the segmentation's, else the fallback."""
        long = self.segmented.get(settings)
        return long if long is not None else self.fallback_long

    def ratio(self, long: float | None) -> float:
        """``long`` over the reader box's long side; 0 when nothing was measured (a miss)."""
        return 0.0 if long is None else long / self.reader_long


class SizeScore(BaseModel):
    """One group's size figures."""

    group: str
    modality: str
    n: int
    gaussian_median_ratio: float | None
    gaussian_within: float | None
    median_ratio: float | None
    within: float | None
    #: Lesions where nothing could be segmented (the Gaussian's FWHM was reported instead).
    fallbacks: int


def measure_sizes(images: Sequence[EvalImage], limits: StudyLimits,
                  settings_tried: Iterable[SegmentationSettings] | None = None) -> tuple[list[SizeCase], list[str]]:
    """Measure every marked lesion (not the <3 mm marks) with each of ``settings_tried`` (by
    default the shipped settings of its modality); images that cannot be read are listed."""
    tried = None if settings_tried is None else tuple(settings_tried)
    cases, problems = [], []
    for image in images:
        lesions = [lesion for lesion in image.lesions if lesion.label != SMALL_NODULE]
        if not lesions:
            continue
        try:
            cases += _measure_image(image, lesions, limits, tried or (settings_for(image.modality),))
        except Exception as error:  # as in benchmark: one image never ends the run
            problems.append(failure_line(image, error))
    return cases, problems


def _measure_image(image: EvalImage, lesions: Sequence[Lesion], limits: StudyLimits,
                   tried: Sequence[SegmentationSettings]) -> list[SizeCase]:
    with open_study(image.path, limits=limits, modality=image.modality) as study:
        work = prepare_study_frame(study, 0)
        values = study.physical(0)
        spacing = study.pixel_spacing_mm(0)
        polarity = expected_polarity(study.modality)
        if study.safe.photometric == "MONOCHROME1":  # as fit_gaussian: dense tissue is stored low
            polarity = "dark" if polarity == "bright" else "bright"
    row_mm, column_mm = spacing if spacing is not None else (1.0, 1.0)
    cases = []
    for lesion in lesions:
        box = lesion.box
        reader_long = max(box.width * column_mm, box.height * row_mm)
        fitted = fit_gaussian_2d(values, box, polarity=polarity, spacing_mm=spacing)
        click = fit_gaussian_2d(values, BoxPx.around(*lesion.center, POINT_BOX_PX, POINT_BOX_PX),
                                polarity=polarity, spacing_mm=spacing)
        segmented = {}
        for base, margins in _by_segmentation(tried).items():  # one watershed, then each margin
            region = segment_lesion(work, lesion.center, base)
            for settings in margins:
                diameters = None if region is None else region_diameters(region.grown(settings.margin_px), spacing)
                segmented[settings] = None if diameters is None else diameters.long
        cases.append(SizeCase(image=image, lesion=lesion, family=modality_family(image.modality),
                              unit="mm" if spacing is not None else "px", reader_long=reader_long,
                              gaussian_long=_fwhm_long(fitted, spacing is not None),
                              fallback_long=_fwhm_long(click, spacing is not None), segmented=segmented))
    return cases


def _by_segmentation(tried: Sequence[SegmentationSettings]) -> dict[SegmentationSettings, list[SegmentationSettings]]:
    """``tried`` grouped by the segmentation before its margin (the margin alone is cheap)."""
    groups: dict[SegmentationSettings, list[SegmentationSettings]] = defaultdict(list)
    for settings in tried:
        groups[replace(settings, margin_px=0.0)].append(settings)
    return groups


def _fwhm_long(fit, in_mm: bool) -> float | None:
    if not fit.converged:
        return None
    return fit.fwhm_major_mm if in_mm else fit.fwhm_major_px


def size_scores(cases: Sequence[SizeCase], reported: Callable[[SizeCase], float | None],
                segmented: Callable[[SizeCase], bool]) -> list[SizeScore]:
    """Per group and overall: the Gaussian's and the reported long axes against the readers' boxes.

    ``reported`` gives a case's reported long axis; ``segmented`` whether it came from the
    segmentation (else it is the fallback)."""
    groups: dict[str, list[SizeCase]] = defaultdict(list)
    for case in cases:
        groups[case.image.group].append(case)
        groups["all"].append(case)
    scores = []
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        members = groups[name]
        gaussian = [case.ratio(case.gaussian_long) for case in members]
        after = [case.ratio(reported(case)) for case in members]
        modalities = sorted({case.image.modality for case in members})
        scores.append(SizeScore(
            group=name, modality=", ".join(modalities), n=len(members),
            gaussian_median_ratio=_median(gaussian), gaussian_within=_within(gaussian),
            median_ratio=_median(after), within=_within(after),
            fallbacks=sum(1 for case in members if not segmented(case))))
    return scores


def _median(ratios: list[float]) -> float | None:
    return statistics.median(ratios) if ratios else None


def _within(ratios: list[float]) -> float | None:
    return statistics.fmean(abs(r - 1.0) <= TOLERANCE for r in ratios) if ratios else None


def shipped_scores(cases: Sequence[SizeCase]) -> list[SizeScore]:
    """The scores with each modality's shipped settings (in-sample)."""
    return size_scores(cases, lambda c: c.reported_long(settings_for(c.image.modality)),
                       lambda c: c.segmented.get(settings_for(c.image.modality)) is not None)


# -- cross-validation ----------------------------------------------------------------------------
def _figures(cases: Sequence[SizeCase], settings: SegmentationSettings) -> tuple[float, float]:
    """(share within ±25 %, median ratio) of ``cases`` under ``settings``."""
    ratios = [case.ratio(case.reported_long(settings)) for case in cases]
    return (_within(ratios), statistics.median(ratios)) if ratios else (0.0, 1.0)


def _quality(cases: Sequence[SizeCase], settings: SegmentationSettings) -> tuple[float, float]:
    """(share within ±25 %, −|ln median|) of ``cases`` under ``settings``: higher is better."""
    within, median = _figures(cases, settings)
    return within, -abs(math.log(median)) if median > 0 else -math.inf


def _simplicity(settings: SegmentationSettings) -> tuple[float, float, float]:
    """Higher is simpler: the strongest edge alone, the least opening, the least margin."""
    return settings.edge_fraction, -settings.opening, -settings.margin_px


def choose_settings(cases: Sequence[SizeCase], grid: Sequence[SegmentationSettings] = SETTINGS_GRID
                    ) -> SegmentationSettings:
    """The settings that measure ``cases`` best (see the module); on a tie, the simpler."""
    return max(grid, key=lambda s: (*_quality(cases, s), *_simplicity(s)))


@dataclass
class SizeCrossValidation:
    in_sample: list[SizeScore]
    cross_validated: list[SizeScore]
    #: family -> one line per settings: dev share within ±25 %, median, how many folds chose it.
    choices: dict[str, list[str]]
    folds: int


def cross_validate_sizes(cases: Sequence[SizeCase], images: Sequence[EvalImage], k: int) -> SizeCrossValidation:
    """In-sample (shipped settings) and ``k``-fold cross-validated size scores (see the module)."""
    folds = fold_of(images, k)
    held_out: dict[int, SegmentationSettings] = {}
    chosen: dict[str, list[SegmentationSettings]] = defaultdict(list)
    families = sorted({case.family for case in cases})
    for fold in range(k):
        train = [case for case in cases if folds[case.image.path] != fold]
        for family in families:
            settings = choose_settings([case for case in train if case.family == family])
            chosen[family].append(settings)
            for case in cases:
                if case.family == family and folds[case.image.path] == fold:
                    held_out[id(case)] = settings
    cross_validated = size_scores(cases, lambda c: c.reported_long(held_out[id(c)]),
                                  lambda c: c.segmented.get(held_out[id(c)]) is not None)
    return SizeCrossValidation(in_sample=shipped_scores(cases), cross_validated=cross_validated,
                               choices=_choice_report(cases, chosen), folds=k)


def _choice_report(cases: Sequence[SizeCase], chosen: dict[str, list[SegmentationSettings]]) -> dict[str, list[str]]:
    report = {}
    for family, picks in sorted(chosen.items()):
        members = [case for case in cases if case.family == family]
        best_on_dev = choose_settings(members)
        lines = []
        for settings in SETTINGS_GRID:
            within, median = _figures(members, settings)
            marks = [m for m, on in (("shipped", SHIPPED.get(family) == settings),
                                     ("best on all of dev", settings == best_on_dev)) if on]
            lines.append(f"{settings.describe()}{' (' + ', '.join(marks) + ')' if marks else ''}: dev within ±25 % "
                         f"{within:.2f}, median ratio {median:.2f}, chosen by {picks.count(settings)} of "
                         f"{len(picks)} folds")
        report[family] = lines
    return report


def format_sizes(title: str, scores: Sequence[SizeScore]) -> str:
    """A Markdown table of size scores."""
    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    lines = [f"### {title}", "",
             "| group | modality | lesions | Gaussian FWHM: median ratio | within ±25 % | "
             "segmentation: median ratio | within ±25 % | not segmented (Gaussian reported) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in scores:
        lines.append(f"| {s.group} | {s.modality} | {s.n} | {fmt(s.gaussian_median_ratio)} | "
                     f"{fmt(s.gaussian_within)} | {fmt(s.median_ratio)} | {fmt(s.within)} | {s.fallbacks} |")
    return "\n".join(lines)

