"""The PDF export: the Impression first and a short report on one page, status on every page,
extractable text, the key image embedded, identical bytes for equal reports, and a clear error
for a bad image."""

from __future__ import annotations

import io
import zlib
from datetime import UTC, datetime

import matplotlib
import numpy as np
import pypdf
import pytest
from PIL import Image

from tools.coordinates import BoxPx
from tools.findings import Finding, Verification
from tools.render.png import encode_png
from tools.render_overlay import render_annotated
from tools.report.document import (
    NO_FINDINGS_TEXT,
    ClinicalReport,
    Measurement,
    ReportError,
    ReportFinding,
    ReportHistory,
    StudySummary,
)
from tools.report.pdf import FOOTER_TEXT, SIGNED_FOOTER_TEXT, report_pdf

CREATED = datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
SIGNER = "Dr Émile Durand-Åkesson"
IMPRESSION = "Solid 12.3 × 8.1 mm nodule in the right upper lobe (F1); no µ-calcification — follow up."


def _finding(number: int, **changes) -> ReportFinding:
    values = {"finding_id": f"F{number}", "location": "right upper lobe, posterior segment",
              "size": Measurement(major=12.3 + number, minor=8.1, unit="mm"),
              "characteristics": "solid, well circumscribed", "confidence": 0.81, "verification": "confirmed"}
    return ReportFinding(**(values | changes))


def _report(findings: list[ReportFinding] | None = None, **changes) -> ClinicalReport:
    if findings is None:
        findings = [_finding(1), _finding(2, size=Measurement(major=40, minor=22, unit="px"))]
    values = {"study_id": "st-1", "findings": findings, "impression": IMPRESSION,
              "study": StudySummary(modality="CT", body_part="CHEST", technique="CT, 512×512 px, 1 slice, 0.70 mm pixels"),
              "recommendations": ["Follow-up CT in 3 months."], "created_at": CREATED}
    return ClinicalReport(**(values | changes))


def _signed(report: ClinicalReport) -> ClinicalReport:
    history = ReportHistory()
    history.add(report, author="loupe", reason="first draft")
    return history.sign(1, SIGNER)


@pytest.fixture(scope="module")
def overlay_png() -> bytes:
    """A real annotated overlay from tools.render_overlay."""
    yy, xx = np.mgrid[0:128, 0:128]
    display = (40 + 180 * np.exp(-((xx - 64) ** 2 + (yy - 50) ** 2) / 60.0)).astype(np.uint8)
    finding = Finding(id="F1", study_id="st-1", label="nodule", frame=0, center_px=(64, 50),
                      bbox_px=BoxPx.around(64, 50, 18, 12), confidence=0.81, source="vlm",
                      verification=Verification(status="confirmed"), size_mm=(12.3, 8.1))
    return render_annotated(display, [finding], spacing_mm=(0.7, 0.7), orientation=None, title="CT · frame 1 of 1")


def _pages(pdf: bytes) -> list[str]:
    """Each page's extracted text, whitespace normalised (wrapped lines join with a space)."""
    return [" ".join(page.extract_text().split()) for page in pypdf.PdfReader(io.BytesIO(pdf)).pages]


def _reader(pdf: bytes) -> pypdf.PdfReader:
    return pypdf.PdfReader(io.BytesIO(pdf))


# -- content and status --------------------------------------------------------------------------


def test_a_short_draft_is_one_page_impression_first_with_draft_status(overlay_png):
    pages = _pages(report_pdf(_report(), key_image_png=overlay_png, key_image_caption="Findings on frame 1."))
    assert len(pages) == 1
    [text] = pages
    assert "DRAFT — not signed" in text and "SIGNED" not in text and "Version 1" in text
    assert FOOTER_TEXT in text and "Page 1 of 1" in text
    order = [text.index(part) for part in (IMPRESSION, "Findings", "Follow-up CT in 3 months.", "Findings on frame 1.",
                                          "Study and technique", "Limitations")]
    assert order == sorted(order), "Impression, findings, recommendations, key image, study, limitations"
    assert "CT, 512×512 px, 1 slice, 0.70 mm pixels" in text
    assert "AI-assisted draft: requires review and sign-off by the reading physician." in text
    assert [_draws_an_image(page) for page in _reader(report_pdf(_report(), key_image_png=overlay_png)).pages] == [True]


def test_findings_table_shows_ids_sizes_and_columns():
    [findings] = _pages(report_pdf(_report()))
    for column in ("ID", "Location", "Size", "Characteristics", "Confidence", "Verification"):
        assert column in findings
    assert "F1" in findings and "13.3 × 8.1 mm" in findings
    assert "F2" in findings and "40 × 22 px" in findings
    assert "0.81" in findings and "confirmed" in findings


def test_clinician_size_is_marked_and_missing_values_are_dashes():
    report = _report([_finding(1, size=Measurement(major=9.5, unit="mm", source="clinician"),
                               confidence=None, characteristics=""),
                      _finding(2, size=None)])
    [findings] = _pages(report_pdf(report))
    assert "9.5 mm (clinician)" in findings
    assert findings.count("—") >= 3  # confidence and characteristics of F1, size of F2


def test_signed_report_names_signer_and_date_on_every_page():
    signed = _signed(_report(findings=[_finding(n) for n in range(1, 30)]))
    pages = _pages(report_pdf(signed))
    when = f"{signed.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    assert len(pages) >= 2
    for text in pages:
        assert f"SIGNED by {SIGNER} on {when}" in text
        assert "DRAFT" not in text
        assert "Version 2" in text
        assert SIGNED_FOOTER_TEXT in text and FOOTER_TEXT not in text
    # Reviewed and signed: the limitations say who signed and when, not that sign-off is required.
    assert f"Signed by {SIGNER} on {when}; drafted with AI assistance (Loupe)." in pages[-1]
    assert "requires review and sign-off" not in " ".join(pages)


def test_no_findings_says_so():
    [text] = _pages(report_pdf(_report([])))
    assert NO_FINDINGS_TEXT in text
    assert "Characteristics" not in text


def test_many_findings_continue_the_table_on_further_pages():
    findings = [_finding(n, characteristics="spiculated margins, pleural tag, no cavitation; " * 3)
                for n in range(1, 61)]
    pages = _pages(report_pdf(_report(findings)))
    assert len(pages) > 3
    text = " ".join(pages)
    for n in range(1, 61):
        assert f"F{n} " in text and f"{12.3 + n:.1f} × 8.1 mm" in text
    assert IMPRESSION in pages[0]  # the Impression comes first, before the long table
    table_pages = [page for page in pages if "F30 " in page or "F60 " in page]
    assert table_pages and all("Characteristics" in page for page in pages[:-1])  # the column titles repeat
    assert all("Findings (continued)" in page for page in pages[1:-1])
    for number, page in enumerate(pages, start=1):
        assert "DRAFT — not signed" in page and f"Page {number} of {len(pages)}" in page
    assert "Limitations" in pages[-1]


def test_a_cell_taller_than_a_page_is_split_and_keeps_its_id():
    pages = _pages(report_pdf(_report([_finding(1, characteristics="lobulated " * 900)])))
    assert len(pages) > 2
    assert "F1 (cont.)" in " ".join(pages[1:])


def test_long_texts_wrap_and_flow_onto_a_continuation_page():
    impression = " ".join(f"Sentence {n} of the impression, with a few clauses to wrap." for n in range(150))
    pages = _pages(report_pdf(_report(impression=impression, study=StudySummary(modality="MR", technique="T2 " * 1500))))
    text = " ".join(pages)
    assert all(f"Sentence {n} of the impression" in text for n in range(150))
    assert any("Impression (continued)" in page for page in pages)
    assert any("Study and technique (continued)" in page for page in pages)
    assert len(pages) >= 4


def test_non_ascii_and_dollar_signs_come_through_as_text():
    report = _report([_finding(1, location="région hilaire — gauche", characteristics="µ-nodules; costs $5 and $6")],
                     impression="Ñandú × 2 — São Paulo, Zürich, Øresund.")
    [text] = _pages(report_pdf(report))
    assert "région hilaire — gauche" in text
    assert "µ-nodules; costs $5 and $6" in text  # not parsed as mathtext
    assert "Ñandú × 2 — São Paulo, Zürich, Øresund." in text


# -- the key image -------------------------------------------------------------------------------


def _draws_an_image(page: pypdf.PageObject) -> bool:
    """Whether the page's content paints an image XObject (matplotlib shares one resource
    dictionary between pages, so the resources alone do not tell)."""
    xobjects = page["/Resources"]["/XObject"]
    images = [name for name, ref in xobjects.items() if ref.get_object()["/Subtype"] == "/Image"]
    content = page.get_contents().get_data()
    return any(f"{name} Do".encode() in content for name in images)


def test_key_image_is_embedded_on_the_first_page(overlay_png):
    reader = _reader(report_pdf(_report(), key_image_png=overlay_png, key_image_caption="Annotated overlay."))
    assert len(reader.pages[0].images) == 1
    assert "/XObject" in reader.pages[0]["/Resources"]
    embedded = reader.pages[0].images[0].image
    assert embedded.size == Image.open(io.BytesIO(overlay_png)).size  # embedded unresampled
    assert [_draws_an_image(page) for page in reader.pages] == [True]


def test_the_key_image_goes_on_after_a_long_table(overlay_png):
    """Too little room left beside the findings: the image is drawn readable on a later page."""
    reader = _reader(report_pdf(_report([_finding(n) for n in range(1, 25)]), key_image_png=overlay_png))
    drawn = [_draws_an_image(page) for page in reader.pages]
    assert drawn.count(True) == 1 and not drawn[0]


def test_without_an_image_the_first_page_says_so():
    pdf = report_pdf(_report())
    assert "No image (" in _pages(pdf)[0]
    assert len(_reader(pdf).pages[0].images) == 0


@pytest.mark.parametrize("pixels", [
    np.full((40, 60, 2), 200, np.uint8),  # grey + alpha
    np.zeros((1, 300), np.uint8),  # a one-row strip
    np.full((30, 30, 4), 90, np.uint8),  # RGBA
], ids=["grey-alpha", "strip", "rgba"])
def test_odd_but_valid_pngs_are_drawn(pixels):
    reader = _reader(report_pdf(_report(), key_image_png=encode_png(pixels)))
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 1


def test_sixteen_bit_png_is_drawn():
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).save(buffer, format="PNG")
    assert len(_reader(report_pdf(_report(), key_image_png=buffer.getvalue())).pages[0].images) == 1


def _truncated_png() -> bytes:
    data = encode_png(np.zeros((64, 64, 3), np.uint8))
    return data[: len(data) // 2]


def _corrupt_idat_png() -> bytes:
    data = bytearray(encode_png(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)))
    data[60:80] = b"\x00" * 20  # inside the deflate stream
    return bytes(data)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("data", [b"", b"not a png at all", _truncated_png(), _corrupt_idat_png(), _jpeg(),
                                  b"\x89PNG\r\n\x1a\n" + zlib.compress(b"garbage")],
                         ids=["empty", "text", "truncated", "corrupt-idat", "jpeg", "signature-only"])
def test_bad_image_is_a_report_error(data):
    with pytest.raises(ReportError, match="PNG"):
        report_pdf(_report(), key_image_png=data)


# -- determinism and hygiene ---------------------------------------------------------------------


def test_equal_reports_give_identical_bytes(overlay_png):
    first = report_pdf(_report(), key_image_png=overlay_png, key_image_caption="c")
    again = report_pdf(_report(), key_image_png=overlay_png, key_image_caption="c")
    assert first == again
    assert report_pdf(_signed(_report())) != report_pdf(_report())


def test_document_dates_are_the_reports_not_the_clock():
    metadata = _reader(report_pdf(_report())).metadata
    assert metadata["/CreationDate"].startswith("D:20250304103000")
    assert metadata["/ModDate"] == metadata["/CreationDate"]
    assert metadata["/Subject"] == "DRAFT — not signed"


def test_pages_are_a4_portrait():
    for page in _reader(report_pdf(_report())).pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        assert abs(width - 595.28) < 0.5 and abs(height - 841.89) < 0.5


def test_matplotlib_settings_are_left_as_they_were():
    before = dict(matplotlib.rcParams)
    report_pdf(_report())
    assert dict(matplotlib.rcParams) == before
