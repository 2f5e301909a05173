"""tools.coordinates: native pixel boxes/points <-> Gemini's normalised box_2d/point, both ways."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tools.coordinates import (BOX_FORMATS, BoxPx, SentImage, box_2d_to_box, box_2d_to_px, box_to_box_2d, point_to_px,
                               px_to_box_2d, px_to_point)
from tools.errors import InvalidCoordinatesError

TOL = 1e-6


def _letterbox(width: int, height: int, side: int) -> SentImage:
    """Fit the long side to ``side`` and pad the short side symmetrically to a square."""
    scale = side / max(width, height)
    return SentImage(native_width=width, native_height=height, sent_width=side, sent_height=side, scale=scale,
                     pad_left=(side - width * scale) / 2, pad_top=(side - height * scale) / 2)


SENT_IMAGES = {
    "identity-512": SentImage.identity(512, 512),
    "identity-557x462": SentImage.identity(557, 462),
    "downscale-2048-to-1024": SentImage.fit_long_side(2048, 2048, 1024),
    "downscale-1955x1841-to-1024": SentImage.fit_long_side(1955, 1841, 1024),
    "downscale-portrait-1841x1955": SentImage.fit_long_side(1841, 1955, 1024),
    "padded-left-top": SentImage(native_width=400, native_height=300, sent_width=480, sent_height=360, scale=1.0,
                                 pad_left=40.0, pad_top=30.0),
    "letterbox-1955x1841-to-1024": _letterbox(1955, 1841, 1024),
    "letterbox-300x800-to-256": _letterbox(300, 800, 256),
}

# Native pixel boxes (fractions of the image so they fit every geometry): x0, y0, x1, y1.
# (The far edge itself is covered separately: see test_full_native_box_round_trip.)
BOX_FRACTIONS = [(0.0, 0.0, 0.99, 0.99), (0.1, 0.2, 0.3, 0.5), (0.5, 0.5, 0.5, 0.5), (0.0, 0.9, 0.05, 0.98)]


def _native_box(sent: SentImage, fractions: tuple[float, float, float, float]) -> BoxPx:
    fx0, fy0, fx1, fy1 = fractions
    w, h = sent.native_width - 1, sent.native_height - 1
    return BoxPx(x0=fx0 * w, y0=fy0 * h, x1=fx1 * w, y1=fy1 * h)


def test_fit_long_side_geometry():
    sent = SentImage.fit_long_side(1955, 1841, 1024)
    assert (sent.sent_width, sent.sent_height) == (1024, round(1841 * 1024 / 1955))
    assert sent.scale == pytest.approx(1024 / 1955)
    assert SentImage.fit_long_side(300, 200, 1024).scale == 1.0  # never upscaled
    assert (SentImage.fit_long_side(2048, 2048, 1024).sent_width, SentImage.fit_long_side(2048, 2048, 1024).scale) == (1024, 0.5)


@pytest.mark.parametrize("name", SENT_IMAGES)
@pytest.mark.parametrize("fractions", BOX_FRACTIONS)
def test_px_to_box_2d_and_back(name, fractions):
    sent = SENT_IMAGES[name]
    box = _native_box(sent, fractions)
    box_2d = px_to_box_2d(box, sent)
    assert all(0 <= v <= 1000 for v in box_2d)
    back = box_2d_to_px(box_2d, sent)
    for got, want in zip(back.as_list(), box.as_list()):
        assert got == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("name", SENT_IMAGES)
@pytest.mark.parametrize("box_2d", [[0, 0, 1000, 1000], [100, 200, 300, 700], [450, 450, 600, 520], [0, 900, 1000, 1000]])
def test_box_2d_to_px_and_back(name, box_2d):
    sent = SENT_IMAGES[name]
    box = box_2d_to_px(box_2d, sent)
    back = px_to_box_2d(box, sent)
    for got, want in zip(back, box_2d):
        assert got == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize("name", SENT_IMAGES)
@pytest.mark.parametrize("fx, fy", [(0.0, 0.0), (0.99, 0.99), (0.25, 0.75), (0.5, 0.5)])
def test_point_round_trips(name, fx, fy):
    sent = SENT_IMAGES[name]
    x, y = fx * (sent.native_width - 1), fy * (sent.native_height - 1)
    point = px_to_point(x, y, sent)
    assert all(0 <= v <= 1000 for v in point)
    bx, by = point_to_px(point, sent)
    assert (bx, by) == (pytest.approx(x, abs=TOL), pytest.approx(y, abs=TOL))
    again = px_to_point(bx, by, sent)
    assert again == [pytest.approx(v, abs=TOL) for v in point]


@pytest.mark.parametrize("width, height, max_side", [(512, 512, 1024), (557, 462, 1024), (2048, 2048, 1024),
                                                     (2048, 1536, 1024), (1, 1, 1024), (64, 4, 16)])
def test_full_image_box_and_centre_point(width, height, max_side):
    sent = SentImage.fit_long_side(width, height, max_side)
    assert box_2d_to_px([0, 0, 1000, 1000], sent).as_list() == pytest.approx([0, 0, width - 1, height - 1], abs=TOL)
    assert point_to_px([500, 500], sent) == (pytest.approx((width - 1) / 2, abs=TOL),
                                             pytest.approx((height - 1) / 2, abs=TOL))


@pytest.mark.parametrize("width, height, max_side", [(1955, 1841, 1024), (1841, 1955, 1024), (557, 462, 256),
                                                     (4096, 5, 1024)])
def test_full_image_box_after_rounded_downscale(width, height, max_side):
    sent = SentImage.fit_long_side(width, height, max_side)
    assert box_2d_to_px([0, 0, 1000, 1000], sent).as_list() == pytest.approx([0, 0, width - 1, height - 1], abs=TOL)
    assert point_to_px([500, 500], sent) == (pytest.approx((width - 1) / 2, abs=TOL),
                                             pytest.approx((height - 1) / 2, abs=TOL))


EXACT = ["identity-512", "identity-557x462", "downscale-2048-to-1024", "padded-left-top",
         "letterbox-1955x1841-to-1024", "letterbox-300x800-to-256"]


@pytest.mark.parametrize("name", EXACT)
def test_full_native_box_round_trip(name):
    """The whole native image (first to last pixel, centres) survives px -> box_2d -> px."""
    sent = SENT_IMAGES[name]
    box = BoxPx(x0=0, y0=0, x1=sent.native_width - 1, y1=sent.native_height - 1)
    box_2d = px_to_box_2d(box, sent)
    assert all(0 <= v <= 1000 for v in box_2d)
    assert box_2d_to_px(box_2d, sent).as_list() == pytest.approx(box.as_list(), abs=TOL)
    corner = px_to_point(sent.native_width - 1, sent.native_height - 1, sent)
    assert point_to_px(corner, sent) == (pytest.approx(sent.native_width - 1), pytest.approx(sent.native_height - 1))


@pytest.mark.parametrize("name", ["downscale-1955x1841-to-1024", "downscale-portrait-1841x1955"])
def test_full_native_box_round_trip_after_rounded_downscale(name):
    test_full_native_box_round_trip(name)


@pytest.mark.parametrize("width, height", [(512, 512), (557, 462), (3, 7)])
def test_full_image_box_identity_is_exact(width, height):
    sent = SentImage.identity(width, height)
    assert box_2d_to_px([0, 0, 1000, 1000], sent).as_list() == pytest.approx([0, 0, width - 1, height - 1], abs=TOL)
    assert point_to_px([500, 500], sent) == (pytest.approx((width - 1) / 2), pytest.approx((height - 1) / 2))
    # The box's centre is the image centre too.
    assert box_2d_to_px([0, 0, 1000, 1000], sent).center == (pytest.approx((width - 1) / 2), pytest.approx((height - 1) / 2))


def test_padding_is_removed():
    # Native 400x300 placed at (40, 30) in a 480x360 sent image, no scaling.
    sent = SENT_IMAGES["padded-left-top"]
    native_area = [30 / 360 * 1000, 40 / 480 * 1000, 330 / 360 * 1000, 440 / 480 * 1000]
    assert box_2d_to_px(native_area, sent).as_list() == pytest.approx([0, 0, 399, 299], abs=TOL)
    # The padding itself maps to negative native coordinates (left of / above the image).
    assert point_to_px([0, 0], sent) == (pytest.approx(-40.5), pytest.approx(-30.5))


def test_downscale_maps_sent_pixels_to_native_blocks():
    sent = SentImage.fit_long_side(2048, 2048, 1024)  # one sent px = 2x2 native px
    # Sent pixel column 10 spans native columns 20 and 21.
    box = box_2d_to_px([10 / 1024 * 1000, 10 / 1024 * 1000, 11 / 1024 * 1000, 11 / 1024 * 1000], sent)
    assert box.as_list() == pytest.approx([20, 20, 21, 21], abs=TOL)


INVALID = [
    [100, 200, 300],  # too short
    [100, 200, 300, 400, 500],  # too long
    [],
    [100, 200, 1000.5, 400],  # > 1000
    [100, 200, 300, 1001],
    [-1, 200, 300, 400],  # negative
    [100, -0.01, 300, 400],
    [300, 200, 100, 400],  # ymin > ymax
    [100, 400, 300, 200],  # xmin > xmax
    [100, "abc", 300, 400],  # non-numbers
    [100, None, 300, 400],
    [100, [1], 300, 400],
    [float("nan"), 200, 300, 400],
    [100, 200, float("inf"), 400],
]


@pytest.mark.parametrize("box_2d", INVALID, ids=repr)
def test_invalid_box_2d_raises(box_2d):
    with pytest.raises(InvalidCoordinatesError) as caught:
        box_2d_to_px(box_2d, SentImage.identity(100, 100))
    assert caught.value.message  # one plain sentence for the clinician


@pytest.mark.parametrize("point", [[500], [1, 2, 3], [], [1001, 5], [5, -3], ["x", 5], [None, 5], [float("nan"), 5]], ids=repr)
def test_invalid_point_raises(point):
    with pytest.raises(InvalidCoordinatesError):
        point_to_px(point, SentImage.identity(100, 100))


def test_box_px_rejects_out_of_order_corners():
    with pytest.raises(ValueError):
        BoxPx(x0=5, y0=0, x1=4, y1=3)


def test_box_px_helpers():
    box = BoxPx(x0=10, y0=20, x1=19, y1=29)
    assert (box.width, box.height, box.center) == (10, 10, (14.5, 24.5))
    assert box.contains(9.5, 20) and not box.contains(9.4, 20)
    assert BoxPx.around(14.5, 24.5, 10, 10) == box
    assert BoxPx(x0=-5, y0=-5, x1=200, y1=5).clipped(100, 50).as_list() == [0, 0, 99, 5]


# -- properties --------------------------------------------------------------------------------
@st.composite
def sent_images(draw, kinds=("identity", "fit", "letterbox")) -> SentImage:
    width = draw(st.integers(1, 4096))
    height = draw(st.integers(1, 4096))
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return SentImage.identity(width, height)
    side = draw(st.integers(16, 2048))
    if kind == "fit":
        return SentImage.fit_long_side(width, height, side)
    return _letterbox(width, height, side)


@settings(max_examples=100, deadline=None)
@given(sent=sent_images(), data=st.data())
def test_property_px_box_round_trip(sent, data):
    fractions = sorted(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    fy = sorted(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=2)))
    box = BoxPx(x0=fractions[0] * (sent.native_width - 1), x1=fractions[1] * (sent.native_width - 1),
                y0=fy[0] * (sent.native_height - 1), y1=fy[1] * (sent.native_height - 1))
    box_2d = px_to_box_2d(box, sent)
    assume(all(0 <= v <= 1000 for v in box_2d))
    back = box_2d_to_px(box_2d, sent)
    tolerance = TOL * max(1.0, 1.0 / sent.scale)
    for got, want in zip(back.as_list(), box.as_list()):
        assert math.isclose(got, want, abs_tol=tolerance)


@settings(max_examples=100, deadline=None)
@given(sent=sent_images(), data=st.data())
def test_property_box_2d_round_trip(sent, data):
    ys = sorted(data.draw(st.lists(st.floats(0, 1000), min_size=2, max_size=2)))
    xs = sorted(data.draw(st.lists(st.floats(0, 1000), min_size=2, max_size=2)))
    # The inverse is exact for boxes at least one native pixel wide and high (narrower ones
    # become one-pixel boxes, which cannot be inverted).
    native_px_per_unit_x = sent.sent_width / 1000 / sent.scale
    native_px_per_unit_y = sent.sent_height / 1000 / sent.y_scale
    assume((xs[1] - xs[0]) * native_px_per_unit_x >= 1.0 and (ys[1] - ys[0]) * native_px_per_unit_y >= 1.0)
    box_2d = [ys[0], xs[0], ys[1], xs[1]]
    back = px_to_box_2d(box_2d_to_px(box_2d, sent), sent)
    for got, want in zip(back, box_2d):
        assert math.isclose(got, want, abs_tol=TOL)


@settings(max_examples=100, deadline=None)
@given(sent=sent_images(), fy=st.floats(0, 1000), fx=st.floats(0, 1000))
def test_property_point_round_trip(sent, fy, fx):
    x, y = point_to_px([fy, fx], sent)
    assert px_to_point(x, y, sent) == [pytest.approx(fy, abs=TOL), pytest.approx(fx, abs=TOL)]


@settings(max_examples=200, deadline=None)
@given(sent=sent_images(kinds=("identity", "letterbox")), data=st.data())
def test_property_native_points_stay_in_range(sent, data):
    """Every native pixel centre maps inside 0–1000, and the centre of a box is the centre of its box_2d."""
    x = data.draw(st.floats(0, sent.native_width - 1))
    y = data.draw(st.floats(0, sent.native_height - 1))
    py, px = px_to_point(x, y, sent)
    assert 0 < py < 1000 and 0 < px < 1000
    box = BoxPx.around(x, y, 1, 1)
    ymin, xmin, ymax, xmax = px_to_box_2d(box, sent)
    assert (ymin + ymax) / 2 == pytest.approx(py, abs=TOL) and (xmin + xmax) / 2 == pytest.approx(px, abs=TOL)


# -- box formats of other vision models (LOUPE_OPENAI_BOX_FORMAT) ---------------------------------


@pytest.mark.parametrize("box_format", sorted(BOX_FORMATS))
@given(ymin=st.floats(0, 499), xmin=st.floats(0, 499), height=st.floats(1, 500), width=st.floats(1, 500),
       sent_width=st.integers(16, 2048), sent_height=st.integers(16, 2048))
@settings(max_examples=200, deadline=None)
def test_each_box_format_round_trips(box_format, ymin, xmin, height, width, sent_width, sent_height):
    box_2d = [ymin, xmin, ymin + height, xmin + width]
    written = box_2d_to_box(box_2d, box_format, sent_width, sent_height)
    back = box_to_box_2d(written, box_format, sent_width, sent_height)
    assert back == pytest.approx(box_2d, abs=1e-9)


def test_the_formats_mean_what_their_names_say():
    # A box over the right half (x 50–100 %) and the top quarter (y 0–25 %) of a 400 × 200 image.
    assert box_to_box_2d([0, 500, 250, 1000], "yxyx-1000", 400, 200) == [0, 500, 250, 1000]
    assert box_to_box_2d([0.5, 0.0, 1.0, 0.25], "xyxy-1", 400, 200) == [0, 500, 250, 1000]
    assert box_to_box_2d([200, 0, 400, 50], "xyxy-px", 400, 200) == [0, 500, 250, 1000]
    with pytest.raises(InvalidCoordinatesError, match="Unknown box format"):
        box_to_box_2d([0, 0, 1, 1], "xywh", 10, 10)  # type: ignore[arg-type]
