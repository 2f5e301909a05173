"""A report version as PDF: A4 portrait, one continuous flow, real (extractable) text.

Order, as a reader looks for it: title with version and authorship; the **Impression** first;
the comparison with a prior (or "None."); the findings table (id, on a series slice and table
position, location, size with unit and who measured it, characteristics, confidence,
verification); recommendations; the key overlay image with its caption (or a line saying that
there is none); study and technique; limitations. A report with a finding or two fits on one
page: the key image takes the room the text leaves, down to ``MIN_IMAGE_ROOM`` (below that it
starts a page of its own). Longer sections flow on to further pages: a table broken across pages
repeats its column titles under "Findings (continued)", long cells wrap and a cell taller than a
page continues in a "(cont.)" row.

Every page carries a header with the status ("DRAFT — not signed" until signed, then "SIGNED by
<name> on <date>") and "Version N", and a footer "AI-assisted report — requires physician review"
(once signed: drafted with AI assistance, reviewed and signed by the reading physician)
with "Page x of y"; the pages are therefore planned (as blocks of known height) before any is
drawn.

Drawing uses matplotlib's object API (``Figure`` on a PDF canvas, ``PdfPages``) in points from a
page's bottom-left corner, and only the DejaVu Sans files bundled with matplotlib. Lines are
wrapped with ``textwrap`` and checked against those fonts' advance widths. The document dates are
the report's ``created_at``, so equal reports give identical bytes. Wording follows
``tools.report.markdown``.
"""

from __future__ import annotations

import io
import textwrap
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import FigureCanvasPdf, PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, get_font
from matplotlib.ft2font import LoadFlags
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.transforms import Affine2D
from PIL import Image

from tools.report.document import ClinicalReport, ReportError, ReportFinding
from tools.report.markdown import slice_number, table_position

__all__ = ["FOOTER_TEXT", "SIGNED_FOOTER_TEXT", "report_pdf", "status_text"]

FOOTER_TEXT = "AI-assisted report — requires physician review"
#: A signed report has had that review: its footer says so instead.
SIGNED_FOOTER_TEXT = "Drafted with AI assistance (Loupe) — reviewed and signed by the reading physician"
NO_IMAGE_TEXT = "No image (no key overlay image was attached to this report)."

PAGE_WIDTH, PAGE_HEIGHT = 595.28, 841.89  # A4 in points
MARGIN = 56.0
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CONTENT_TOP = PAGE_HEIGHT - 74.0
CONTENT_BOTTOM = 62.0
ROOM = CONTENT_TOP - CONTENT_BOTTOM  # usable height of a page
MIN_IMAGE_ROOM = 200.0  # less room than this (heading and caption included): the image goes further on
MIN_IMAGE_HEIGHT = 120.0  # even under a very long caption (which then flows to the next page)
MAX_IMAGE_SIDE = 2048  # px; ~300 dpi across the text width, larger images only bloat the file
IMAGE_GAP = 6.0
CELL_PAD = 4.0
BULLET_INDENT = 12.0

# Pinned while saving so that a user's matplotlibrc cannot change the output: Type 3 fonts are
# extractable and ~10x faster to write than Type 42 (which subsets with fontTools); the 14 core
# fonts would replace DejaVu Sans; a 'tight' bbox would crop the A4 page.
_PDF_RC = {"pdf.fonttype": 3, "pdf.use14corefonts": False, "savefig.bbox": None}
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
_FONT_FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "oblique": "DejaVuSans-Oblique.ttf"}
_EM_PX = 1000  # size at which glyph advances are read, for precision
_STATUS_COLOUR = {"draft": "#b34700", "signed": "#1a7f37"}


@dataclass(frozen=True)
class _Style:
    size: float
    weight: str = "regular"  # a key of _FONT_FILES
    colour: str = "#111111"

    @property
    def leading(self) -> float:
        return self.size * 1.35


TITLE = _Style(18, "bold")
HEADING = _Style(12.5, "bold", "#1f3a5f")
BODY = _Style(10)
SMALL = _Style(8.5, colour="#444444")
CAPTION = _Style(9, "oblique", "#333333")
TABLE = _Style(8.5)
TABLE_HEAD = _Style(8.5, "bold")
HEADER = _Style(9.5, "bold")

# Findings table: title, width (pt, summing to CONTENT_WIDTH), alignment.
COLUMNS: tuple[tuple[str, float, str], ...] = (
    ("ID", 32.0, "left"), ("Location", 104.0, "left"), ("Size", 100.0, "left"),
    ("Characteristics", 111.28, "left"), ("Confidence", 64.0, "right"), ("Verification", 72.0, "left"),
)
#: On a series, each finding's slice and table position too (the same total width).
SERIES_COLUMNS: tuple[tuple[str, float, str], ...] = (
    ("ID", 30.0, "left"), ("Slice", 36.0, "right"), ("Table position", 50.0, "right"), ("Location", 94.0, "left"),
    ("Size", 72.0, "left"), ("Characteristics", 101.28, "left"), ("Confidence", 50.0, "right"),
    ("Verification", 50.0, "left"),
)


# == text measurement and wrapping ==============================================================
def _font(style: _Style) -> FontProperties:
    return FontProperties(fname=_FONT_DIR / _FONT_FILES[style.weight], size=style.size)


@lru_cache(maxsize=4096)
def _advance_em(weight: str, char: str) -> float:
    """Advance width of ``char`` in em (kerning ignored: it only ever narrows a line)."""
    font = get_font(_FONT_DIR / _FONT_FILES[weight])
    if font.get_char_index(ord(char)) == 0:
        return 1.0  # not in DejaVu Sans: drawn as a missing-glyph box about an em wide
    font.set_size(_EM_PX, 72)
    return font.load_char(ord(char), flags=LoadFlags.NO_HINTING).linearHoriAdvance / 65536 / _EM_PX


def _width(text: str, style: _Style) -> float:
    return style.size * sum(_advance_em(style.weight, char) for char in text)


def _wrap(text: str, width: float, style: _Style) -> list[str]:
    """``text`` as lines no wider than ``width`` pt; its own line breaks are kept."""
    return [line for paragraph in (text.splitlines() or [""]) for line in _wrap_paragraph(paragraph, width, style)]


def _wrap_paragraph(paragraph: str, width: float, style: _Style) -> list[str]:
    if not paragraph.strip():
        return [""]
    # textwrap counts characters: start from this paragraph's mean glyph width (capitals and
    # digits are wider than the average letter), then narrow until every line really fits.
    mean = _width(paragraph, style) / len(paragraph)
    chars = max(1, int(width / mean))
    while True:
        # Only at spaces: a date (2023-12-03) or a negative change (-3.5 mm) never splits at its hyphen.
        lines = textwrap.wrap(paragraph, chars, break_on_hyphens=False)
        if chars == 1 or all(_width(line, style) <= width for line in lines):
            return lines
        chars = max(1, chars - max(1, chars // 20))


# == a page and the blocks laid out on it =======================================================
class _Page:
    """One A4 figure on a PDF canvas, addressed in points from its bottom-left corner."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(PAGE_WIDTH / 72, PAGE_HEIGHT / 72), dpi=72, facecolor="white")
        FigureCanvasPdf(self.figure)
        self._points = Affine2D().scale(1 / 72) + self.figure.dpi_scale_trans

    def text(self, x: float, baseline: float, text: str, style: _Style, align: str = "left",
             colour: str | None = None) -> None:
        # parse_math off: a '$' in a clinician's text must not start mathtext.
        self.figure.text(x, baseline, text, transform=self._points, fontproperties=_font(style),
                         color=colour or style.colour, ha=align, va="baseline", usetex=False, parse_math=False)

    def rule(self, y: float, colour: str = "#999999", width: float = 0.6) -> None:
        self.figure.add_artist(Line2D([MARGIN, PAGE_WIDTH - MARGIN], [y, y], transform=self._points,
                                      color=colour, linewidth=width))

    def fill(self, x: float, y: float, width: float, height: float, colour: str) -> None:
        self.figure.add_artist(Rectangle((x, y), width, height, transform=self._points, facecolor=colour,
                                         edgecolor="none"))

    def image(self, pixels: np.ndarray, x: float, y: float, width: float, height: float) -> None:
        axes = self.figure.add_axes((x / PAGE_WIDTH, y / PAGE_HEIGHT, width / PAGE_WIDTH, height / PAGE_HEIGHT))
        # 'none': the PDF gets the pixels unresampled; the viewer scales them.
        axes.imshow(pixels, interpolation="none", aspect="auto")
        axes.set_axis_off()


@dataclass(frozen=True)
class _Block:
    """Something of known height on a page: a line of text, a table row, the key image."""

    height: float
    draw: Callable[[_Page, float], None]  # draws the block with its top edge at the given y
    keep_with_next: bool = False  # a heading is never left alone at the foot of a page
    #: What opens a new page when one breaks right before this block (a table row: the
    #: "Findings (continued)" heading and the column titles).
    resume: tuple[_Block, ...] = ()


def _line_block(line: str, style: _Style, *, x: float = MARGIN, space_before: float = 0.0,
                marker: str = "") -> _Block:
    def draw(page: _Page, top: float) -> None:
        baseline = top - space_before - style.size
        if marker:
            page.text(x - BULLET_INDENT, baseline, marker, style)
        page.text(x, baseline, line, style)

    return _Block(style.leading + space_before, draw)


def _text_blocks(text: str, style: _Style, *, bullet: bool = False, space_before: float = 0.0) -> list[_Block]:
    """``text`` wrapped to the text width, one block per line so that pages can break anywhere."""
    x = MARGIN + (BULLET_INDENT if bullet else 0.0)
    lines = _wrap(text, PAGE_WIDTH - MARGIN - x, style)
    return [_line_block(line, style, x=x, space_before=space_before if i == 0 else 0.0,
                        marker="•" if bullet and i == 0 else "")
            for i, line in enumerate(lines)]


def _bullets(items: Sequence[str], style: _Style = BODY) -> list[_Block]:
    return [block for item in items for block in _text_blocks(item, style, bullet=True, space_before=2.0)]


def _heading(text: str, *, space_before: float = 16.0) -> list[_Block]:
    def draw(page: _Page, top: float) -> None:
        page.text(MARGIN, top - space_before - HEADING.size, text, HEADING)

    return [_Block(space_before + HEADING.leading + 3.0, draw, keep_with_next=True)]


def _paginate(blocks: Sequence[_Block]) -> list[list[_Block]]:
    """Blocks split into pages of at most ``ROOM`` pt; a page that breaks before a block opens
    with that block's ``resume`` blocks."""
    pages: list[list[_Block]] = [[]]
    used = 0.0
    for index, block in enumerate(blocks):
        follower = blocks[index + 1].height if block.keep_with_next and index + 1 < len(blocks) else 0.0
        if pages[-1] and used + block.height + follower > ROOM + 0.01:
            pages.append(list(block.resume))
            used = sum(b.height for b in block.resume)
        pages[-1].append(block)
        used += block.height
    return pages


# == title, study and key image =================================================================
def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _when(report: ClinicalReport) -> str:
    return f"{_utc(report.created_at):%Y-%m-%d %H:%M} UTC"


def status_text(report: ClinicalReport) -> str:
    """The status as every page's header states it."""
    if report.status == "signed":
        return f"SIGNED by {report.signed_by} on {_when(report)}"
    return "DRAFT — not signed"


def _authorship(report: ClinicalReport) -> str:
    if report.author == "clinician":
        who = f"by {report.author_name or 'the clinician'}"
    else:
        who = "drafted by Loupe" if report.author == "loupe" else "edited by the model"
    reason = f": {report.reason}" if report.reason else ""
    return f"Version {report.version}, {who}{reason} · {_when(report)}."


def _title_blocks(report: ClinicalReport) -> list[_Block]:
    def title(page: _Page, top: float) -> None:
        page.text(MARGIN, top - TITLE.size, f"{report.study.modality or 'Imaging'} report", TITLE)

    return [_Block(TITLE.leading + 2.0, title), *_text_blocks(_authorship(report), SMALL)]


def _study_blocks(report: ClinicalReport) -> list[_Block]:
    study = report.study
    examined = f"Modality: {study.modality or 'not stated'}" + (f"; body part: {study.body_part}" if study.body_part
                                                                 else "")
    return _heading("Study and technique") + _text_blocks(f"{examined}. {study.technique}", BODY)


def _image_block(pixels: np.ndarray, max_height: float) -> _Block:
    rows, columns = pixels.shape[:2]
    width = min(CONTENT_WIDTH, max(max_height, MIN_IMAGE_HEIGHT) * columns / rows)
    height = width * rows / columns

    def draw(page: _Page, top: float) -> None:
        page.image(pixels, MARGIN + (CONTENT_WIDTH - width) / 2, top - IMAGE_GAP - height, width, height)

    return _Block(height + 2 * IMAGE_GAP, draw)


def _key_image_blocks(pixels: np.ndarray | None, caption: str, room: float) -> list[_Block]:
    """The key image at most ``room`` pt tall with its heading and caption included."""
    heading = _heading("Key image")
    if pixels is None:
        return heading + _text_blocks(NO_IMAGE_TEXT, BODY)
    captions = _text_blocks(caption, CAPTION) if caption.strip() else []
    fixed = sum(b.height for b in heading + captions) + 2 * IMAGE_GAP
    return heading + [_image_block(pixels, room - fixed)] + captions


# == findings table ============================================================================
def _columns(report: ClinicalReport) -> tuple[tuple[str, float, str], ...]:
    return SERIES_COLUMNS if report.study.frames > 1 else COLUMNS


def _cells(report: ClinicalReport, finding: ReportFinding) -> list[str]:
    size = "—" if finding.size is None else f"{finding.size.text()} ({finding.size.measured_by})"
    confidence = "—" if finding.confidence is None else f"{finding.confidence:.2f}"
    where = [slice_number(report, finding), table_position(finding)] if report.study.frames > 1 else []
    return [finding.finding_id, *where, finding.location or "—", size, finding.characteristics or "—", confidence,
            finding.verification]


def _row_block(cell_lines: Sequence[Sequence[str]], style: _Style, columns: Sequence[tuple[str, float, str]],
               shaded: bool = False) -> _Block:
    height = max(len(lines) for lines in cell_lines) * style.leading + 2 * CELL_PAD

    def draw(page: _Page, top: float) -> None:
        if shaded:
            page.fill(MARGIN, top - height, CONTENT_WIDTH, height, "#e8edf3")
        x = MARGIN
        for (_, width, align), lines in zip(columns, cell_lines):
            anchor = x + width - CELL_PAD if align == "right" else x + CELL_PAD
            for index, line in enumerate(lines):
                page.text(anchor, top - CELL_PAD - style.size - index * style.leading, line, style, align)
            x += width
        page.rule(top - height, colour="#c0c0c0", width=0.5)

    return _Block(height, draw)


def _finding_rows(report: ClinicalReport, finding: ReportFinding, max_lines: int) -> list[_Block]:
    """One row, or several when its longest cell would not fit on a page."""
    columns = _columns(report)
    wrapped = [_wrap(cell, width - 2 * CELL_PAD, TABLE) for cell, (_, width, _) in zip(_cells(report, finding), columns)]
    tallest = max(len(lines) for lines in wrapped)
    rows = []
    for start in range(0, tallest, max_lines):
        chunk = [lines[start:start + max_lines] or [""] for lines in wrapped]
        if start:
            chunk[0] = [finding.finding_id, "(cont.)"]  # the reader must know whose text goes on
        rows.append(_row_block(chunk, TABLE, columns))
    return rows


def _findings_blocks(report: ClinicalReport) -> list[_Block]:
    title = _heading("Findings")
    if not report.findings:
        return title + _text_blocks(report.findings_statement, BODY)
    columns = _columns(report)
    header = _row_block([_wrap(name, width - 2 * CELL_PAD, TABLE_HEAD) for name, width, _ in columns],
                        TABLE_HEAD, columns, shaded=True)
    header = _Block(header.height, header.draw, keep_with_next=True)
    resume = (*_heading("Findings (continued)", space_before=0.0), header)
    max_lines = int((ROOM - sum(b.height for b in resume) - 2 * CELL_PAD) / TABLE.leading)
    rows = [_Block(row.height, row.draw, resume=resume)
            for finding in report.findings for row in _finding_rows(report, finding, max_lines)]
    return title + [header] + rows


# == the flow ===================================================================================
def _continued(blocks: list[_Block], section: str) -> list[_Block]:
    """``blocks`` of a text section that reopen a broken page with "<section> (continued)"."""
    resume = tuple(_heading(f"{section} (continued)", space_before=0.0))
    return [b if b.keep_with_next else _Block(b.height, b.draw, resume=resume) for b in blocks]


def _document_blocks(report: ClinicalReport, pixels: np.ndarray | None, caption: str) -> list[_Block]:
    """The whole report in reading order, the key image sized to what the text leaves on its page."""
    impression = _continued(_heading("Impression") + _text_blocks(report.impression, BODY), "Impression")
    recommendations = _continued(_heading("Recommendations")
                                 + (_bullets(report.recommendations) or _text_blocks("None.", BODY)),
                                 "Recommendations")
    after = _continued(_study_blocks(report), "Study and technique") + _continued(
        _heading("Limitations") + _bullets(report.shown_limitations, SMALL), "Limitations")
    # The prior compared with, right before the findings whose change it states.
    comparison = _continued(_heading("Comparison") + _text_blocks(" ".join(report.comparison_sentences), BODY),
                            "Comparison")
    before = _title_blocks(report) + impression + comparison + _findings_blocks(report) + recommendations
    # The image takes the room the text before and after it leaves on one page, if that is
    # enough to read it; else the rest of the page after the findings (the study and limitations
    # then go on to the next); else a page of its own.
    left = ROOM - sum(b.height for b in _paginate(before)[-1])
    beside_all = left - sum(b.height for b in after)
    room = next(r for r in (beside_all, left, ROOM) if r >= MIN_IMAGE_ROOM)
    return before + _key_image_blocks(pixels, caption, room) + after


def _draw_frame(page: _Page, report: ClinicalReport, number: int, total: int) -> None:
    """Header (status, version) and footer (AI notice, page x of y)."""
    version = f"Version {report.version}"
    room = CONTENT_WIDTH - _width(version, HEADER) - 12.0
    status = _wrap(status_text(report), room, HEADER)[:2]  # an absurdly long signer name: two lines at most
    for index, line in enumerate(status):
        page.text(MARGIN, PAGE_HEIGHT - 40.0 - index * HEADER.leading, line, HEADER,
                  colour=_STATUS_COLOUR[report.status])
    page.text(PAGE_WIDTH - MARGIN, PAGE_HEIGHT - 40.0, version, HEADER, "right")
    page.rule(PAGE_HEIGHT - 48.0 - (len(status) - 1) * HEADER.leading, colour="#555555", width=0.8)
    page.rule(CONTENT_BOTTOM - 12.0)
    page.text(MARGIN, CONTENT_BOTTOM - 26.0, SIGNED_FOOTER_TEXT if report.status == "signed" else FOOTER_TEXT, SMALL)
    page.text(PAGE_WIDTH - MARGIN, CONTENT_BOTTOM - 26.0, f"Page {number} of {total}", SMALL, "right")


def _draw_blocks(page: _Page, blocks: Sequence[_Block]) -> None:
    top = CONTENT_TOP
    for block in blocks:
        block.draw(page, top)
        top -= block.height


def _metadata(report: ClinicalReport) -> dict[str, object]:
    # Dates from the report rather than the clock: equal reports give identical bytes.
    created = _utc(report.created_at)
    return {"Title": f"{report.study.modality or 'Imaging'} report, version {report.version}",
            "Subject": status_text(report), "Creator": "Loupe", "CreationDate": created, "ModDate": created}


def _pixels(image: Image.Image) -> np.ndarray:
    """RGB uint8 pixels: transparency on white, 16-bit and float greyscale stretched to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        grey = np.zeros(values.shape, np.uint8) if high <= low else ((values - low) * (255 / (high - low))).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _decode_png(data: bytes) -> np.ndarray:
    """The key image's pixels, or a ReportError saying why it cannot be used."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ReportError(f"The key image must be a PNG (this is {image.format or 'another format'}); "
                                  "the PDF was not made.")
            image.load()
            if max(image.size) > MAX_IMAGE_SIDE:
                image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
            return _pixels(image)
    # Pillow reports damaged PNGs as OSError, SyntaxError ('broken PNG file'), ValueError or zlib.error.
    except (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError) as error:
        raise ReportError("The key image could not be read as a PNG (the file is damaged or not an image); "
                          "the PDF was not made.") from error


def report_pdf(report: ClinicalReport, *, key_image_png: bytes | None = None, key_image_caption: str = "") -> bytes:
    """The report as PDF bytes: the impression first, the comparison, the findings, recommendations,
    the key image, the study and limitations on as few A4 pages as they fit, with the status and
    version in every page's header.

    Parameters
    ----------
    report:
        The report version to print.
    key_image_png:
        The annotated overlay (PNG) shown on the first page, scaled to fit; None prints a line
        saying that there is no image.
    key_image_caption:
        Printed under the key image.

    Raises
    ------
    ReportError
        ``key_image_png`` is not a readable PNG.
    """
    pixels = None if key_image_png is None else _decode_png(key_image_png)
    pages = _paginate(_document_blocks(report, pixels, key_image_caption))
    output = io.BytesIO()
    with matplotlib.rc_context(_PDF_RC), PdfPages(output, metadata=_metadata(report)) as pdf:
        for number, blocks in enumerate(pages, start=1):
            page = _Page()
            _draw_frame(page, report, number, len(pages))
            _draw_blocks(page, blocks)
            pdf.savefig(page.figure)
    return output.getvalue()
