"""The faster whole-series search finds exactly what the slower one did (issue 26).

Every speed-up of the classical detector must leave its findings unchanged: the morphology
written with array shifts against scipy's, the scale space's cropped and shared pieces against
their whole-image definitions, the body outline and a frame's detections computed when first
read against computed at once, and the series search against the per-frame path and against
the findings the detector gave before the change (recorded from it, on the bundled series).
Nothing here is timed; ``bench/bench_series.py`` measures the cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import fft as sp_fft
from scipy import ndimage as ndi

from tools.detection import masks
from tools.detection.candidates import _level_peaks, _max3x3
from tools.detection.detector import (Detection, FrameAnalysis, merged_across_slices, analyse_frame, detect_frame,
                                      detect_on_work, detect_volume, recentred)
from tools.detection.evidence import ScaleSpace
from tools.detection.working import WorkingImage, prepare_study_frame
from tools.study import Study, open_study

SAMPLE = Path(__file__).resolve().parent.parent / "agent" / "sample_data" / "lidc-idri-0003"

#: ``detect_volume(sample, limit=5)`` before the speed-up: frame, box (x0, y0, x1, y1), confidence.
SAMPLE_BEFORE = [
    (5, (354.4330993345124, 338.2644138492916, 378.8889434572281, 362.7202579720073), 0.9107361384910301),
    (6, (172.93621943089337, 205.6819457689402, 190.3209957417436, 223.06672207979042), 0.6499848189939148),
    (0, (326.1080527751104, 311.54342665232286, 337.83597483646827, 323.2713487136807), 0.3842802537931901),
    (1, (166.3303267955414, 330.7250553827753, 183.7151031063916, 348.10983169362555), 0.27447244329345477),
    (2, (174.34955900054587, 266.89309144071876, 210.11911162224635, 302.6626440624192), 0.25823742630169627),
]


def _random_masks(count: int = 60, seed: int = 3):
    """Blobby masks of assorted sizes (down to one row or column) and fill fractions."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        shape = tuple(int(n) for n in rng.integers(1, 70, 2))
        smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.3, 4.0))
        mask = smooth > np.quantile(smooth, rng.uniform(0.02, 0.98))
        yield mask if index % 10 else np.zeros(shape, dtype=bool)


def _close_disk_by_distances(mask: np.ndarray, radius: float) -> np.ndarray:
    """The closing as it was written before: two Euclidean distance transforms."""
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(mask, pad)
    dilated = ndi.distance_transform_edt(~padded) <= radius
    return (ndi.distance_transform_edt(dilated) > radius)[pad:-pad, pad:-pad]


def test_shift_morphology_is_scipys():
    for mask in _random_masks():
        for iterations in (1, 2, 3, 8):
            for ours, scipys in ((masks.binary_opening, ndi.binary_opening), (masks.binary_closing, ndi.binary_closing),
                                 (masks.binary_erosion, ndi.binary_erosion)):
                assert np.array_equal(ours(mask, iterations), scipys(mask, iterations=iterations)), ours.__name__
        assert np.array_equal(masks.fill_holes(mask), ndi.binary_fill_holes(mask))


@pytest.mark.parametrize("radius", [2.0, 6.0, 7.3, 12, float(np.sqrt(145)), 5 * np.sqrt(2)])
def test_disk_closing_is_the_distance_transforms(radius):
    for mask in _random_masks(count=30, seed=int(radius * 10)):
        assert np.array_equal(masks.close_disk(mask, radius), _close_disk_by_distances(mask, radius))


@pytest.fixture(scope="module")
def sample() -> Study:
    with open_study(SAMPLE) as study:
        yield study


def _stack_level_by_level(work: WorkingImage, sigmas) -> np.ndarray:
    """The scale space as it was written before: each level's transfer function computed and
    applied on its own (complex128 products), the levels stacked, then signed."""
    pad = int(min(3 * max(sigmas), 160))
    rows, cols = work.image.shape
    shape = (sp_fft.next_fast_len(rows + 2 * pad, real=True), sp_fft.next_fast_len(cols + 2 * pad, real=True))
    padded = np.pad(work.evidence_image, ((pad, shape[0] - rows - pad), (pad, shape[1] - cols - pad)), mode="reflect")
    fy, fx = sp_fft.fftfreq(shape[0])[:, None], sp_fft.rfftfreq(shape[1])[None, :]
    spectrum, f2 = sp_fft.rfft2(padded, workers=-1), fy * fy + fx * fx
    layers = []
    for sigma in sigmas:
        transfer = (sigma * sigma) * (4 * np.pi**2 * f2) * np.exp(-2 * np.pi**2 * sigma**2 * f2)
        full = sp_fft.irfft2(spectrum * transfer, s=shape, workers=-1)
        layers.append(full[pad:pad + rows, pad:pad + cols].astype(np.float32))
    return work.sign * np.stack(layers)


def test_the_scale_space_pieces_are_their_whole_image_definitions(sample):
    work = prepare_study_frame(sample, 5)
    space, threaded = ScaleSpace(work, workers=1), ScaleSpace(work)
    assert np.array_equal(space.stack, threaded.stack)  # threads do not change a number
    assert np.array_equal(space.stack, _stack_level_by_level(work, space.sigmas))
    assert np.array_equal(space.border_map, ndi.distance_transform_edt(work.search))
    for level in range(len(space.sigmas)):  # the peaks as searched over the whole image
        layer = space.stack[level]
        peaks = (layer == _max3x3(layer)) & work.search & (layer > 0)
        if level > 0:
            peaks &= layer >= space.stack[level - 1]
        if level < len(space.sigmas) - 1:
            peaks &= layer >= space.stack[level + 1]
        ys, xs = np.nonzero(peaks)
        order = np.argsort(layer[ys, xs])[::-1][:15]
        found = _level_peaks(space, level)
        assert np.array_equal(found[0], ys[order]) and np.array_equal(found[1], xs[order])


def test_what_is_computed_when_read_is_what_was_computed_at_once(sample):
    work = prepare_study_frame(sample, 5)
    assert work.organ == "lungs" and work.outside is None
    assert np.array_equal(work.body, masks.foreground_mask(work.image))
    given = WorkingImage(image=work.image, scale=1.0, modality="CT", polarity="bright", body=work.body,
                         search=work.search, organ="lungs", native_shape=work.native_shape)
    assert given.body is work.body
    analysis = analyse_frame(sample, 5)
    assert analysis.detections == detect_on_work(work, 5, 30)
    assert FrameAnalysis(work, analysis.space, []).detections == []


def _volume_frame_by_frame(study: Study, limit: int) -> list[Detection]:
    """The series search as it was written before: each slice prepared and searched on its own
    (``detect_frame``), the same lesion on neighbouring slices merged, and the kept detections
    centred on slices prepared again."""
    everything = [d for frame in range(study.frame_count) for d in detect_frame(study, frame, limit, refine=0)]
    kept = merged_across_slices(everything, study, limit)
    return [recentred(d, prepare_study_frame(study, d.frame)) for d in kept]


def test_the_sample_series_finds_what_it_found_before(sample):
    found = detect_volume(sample, limit=5)
    assert [d.frame for d in found] == [frame for frame, _, _ in SAMPLE_BEFORE]
    for detection, (_, box, confidence) in zip(found, SAMPLE_BEFORE, strict=True):
        assert detection.box.as_list() == pytest.approx(list(box), abs=1e-9)
        assert detection.confidence == pytest.approx(confidence, abs=1e-9)


def test_a_lidc_series_search_is_the_frame_by_frame_search(eval_dir):
    with open_study(eval_dir / "lidc_ct" / "LIDC-IDRI-0002") as study:
        expected = _volume_frame_by_frame(study, 10)
        assert detect_volume(study, limit=10) == expected  # every float exactly
        shown = analyse_frame(study, 2)
        assert detect_volume(study, limit=10, analysed={2: shown}) == expected
