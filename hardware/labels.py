"""One label model, rendered once to a bitmap (Pillow, segno for QR codes, python-barcode for
Code 128), then sent in any printer's language: receipts for shoppers, bag labels for counter
drop-offs, tote labels with their manifest.

Bag and tote labels carry their id twice: as a QR code for the kiosk camera and as Code 128
for the handheld scanners couriers and warehouses use."""

from dataclasses import dataclass, field
from datetime import datetime

import segno
from barcode import Code128
from barcode.writer import ImageWriter
from PIL import Image, ImageDraw, ImageFont

DPI = 203  # the common thermal-printer resolution (8 dots/mm)


def _mm(mm: float) -> int:
    return round(mm / 25.4 * DPI)


@dataclass(frozen=True)
class Receipt:
    """What the shopper takes home after a drop-off."""

    return_id: str
    merchant: str
    store: str
    compartment: str | None
    dropped_at: datetime
    short_code: str = ""
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BagLabel:
    """Stuck on a counter drop-off's bag."""

    return_id: str
    bag_id: str
    store: str
    merchant: str


@dataclass(frozen=True)
class ManifestLine:
    """One return in a tote."""

    return_id: str
    merchant: str
    size: str


@dataclass(frozen=True)
class ToteLabel:
    """On the tote the courier collects, with the list of what is inside."""

    tote_id: str
    store: str
    carrier: str
    waybill: str
    pickup_start: datetime | None
    pickup_end: datetime | None
    manifest: list[ManifestLine]


Label = Receipt | BagLabel | ToteLabel


def qr_image(data: str, scale: int = 6, border: int = 4) -> Image.Image:
    """A QR code of ``data`` as a grayscale image, ``scale`` pixels per module."""
    matrix = segno.make_qr(data, error="m").matrix
    size = len(matrix) + 2 * border
    img = Image.new("L", (size, size), 255)
    img.putdata(
        [
            0
            if 0 <= y - border < len(matrix)
            and 0 <= x - border < len(matrix)
            and matrix[y - border][x - border]
            else 255
            for y in range(size)
            for x in range(size)
        ]
    )
    return img.resize((size * scale, size * scale), Image.Resampling.NEAREST)


def code128_image(data: str, *, height_mm: float = 12.0, module_mm: float = 0.375) -> Image.Image:
    """A Code 128 barcode of ``data`` at 203 dpi (0.375 mm = 3 dots per narrow bar)."""
    writer = ImageWriter(mode="L")
    image = Code128(data, writer=writer).render(
        {
            "module_width": module_mm,
            "module_height": height_mm,
            "dpi": DPI,
            "quiet_zone": 4.0,
            "write_text": False,
        }
    )
    assert isinstance(image, Image.Image)
    return image


class _Canvas:
    """Top-to-bottom layout on a white 1-bit page."""

    def __init__(self, width_px: int, margin: int = 16) -> None:
        self.width = width_px
        self.margin = margin
        self.blocks: list[Image.Image] = []
        self.font = ImageFont.load_default(size=22)
        self.big = ImageFont.load_default(size=34)

    def text(self, text: str, *, big: bool = False) -> None:
        font = self.big if big else self.font
        height = 44 if big else 30
        block = Image.new("L", (self.width, height), 255)
        ImageDraw.Draw(block).text((self.margin, 2), text, fill=0, font=font)
        self.blocks.append(block)

    def qr(self, data: str, scale: int = 6) -> None:
        img = qr_image(data, scale)
        block = Image.new("L", (self.width, img.height), 255)
        block.paste(img, ((self.width - img.width) // 2, 0))
        self.blocks.append(block)

    def barcode(self, data: str) -> None:
        img = code128_image(data)
        if img.width > self.width:
            img = img.resize((self.width, img.height), Image.Resampling.NEAREST)
        block = Image.new("L", (self.width, img.height), 255)
        block.paste(img, ((self.width - img.width) // 2, 0))
        self.blocks.append(block)

    def rule(self) -> None:
        block = Image.new("L", (self.width, 12), 255)
        ImageDraw.Draw(block).line((self.margin, 6, self.width - self.margin, 6), fill=0, width=2)
        self.blocks.append(block)

    def image(self) -> Image.Image:
        height = sum(b.height for b in self.blocks) + 2 * self.margin
        page = Image.new("L", (self.width, height), 255)
        y = self.margin
        for block in self.blocks:
            page.paste(block, (0, y))
            y += block.height
        return page.convert("1", dither=Image.Dither.NONE)


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M")


def _receipt(r: Receipt) -> _Canvas:
    c = _Canvas(_mm(72))
    c.text("Dropline return receipt", big=True)
    c.text(f"Merchant: {r.merchant}")
    c.text(f"Store: {r.store}")
    c.text(f"Locker door: {r.compartment or 'counter'}")
    c.text(f"Dropped off: {_when(r.dropped_at)}")
    for line in r.lines:
        c.text(line)
    c.rule()
    c.qr(r.return_id, scale=5)
    c.text(f"Return {r.return_id}")
    if r.short_code:
        c.text(f"Code {r.short_code}")
    return c


def _bag(b: BagLabel) -> _Canvas:
    c = _Canvas(_mm(100))
    c.text(f"BAG {b.bag_id}", big=True)
    c.text(f"{b.merchant} · {b.store}")
    c.qr(b.bag_id)
    c.barcode(b.bag_id)
    c.text(f"Return {b.return_id}")
    return c


def _tote(t: ToteLabel) -> _Canvas:
    c = _Canvas(_mm(100))
    c.text(f"{t.carrier.upper()}  {t.waybill}", big=True)
    c.qr(t.waybill)
    c.barcode(t.waybill)
    c.text(f"Tote {t.tote_id}")
    c.text(f"From store {t.store}")
    c.text(f"Pickup {_when(t.pickup_start)} - {_when(t.pickup_end)}")
    c.rule()
    c.text(f"Manifest: {len(t.manifest)} parcel(s)")
    for line in t.manifest:
        c.text(f"{line.return_id[-12:]}  {line.merchant}  {line.size}")
    return c


def render(label: Label) -> Image.Image:
    """The label as a 1-bit image at 203 dpi (72 mm receipts, 100 mm labels)."""
    if isinstance(label, Receipt):
        return _receipt(label).image()
    if isinstance(label, BagLabel):
        return _bag(label).image()
    return _tote(label).image()
