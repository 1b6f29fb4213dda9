"""Barcode and QR decoding behind one interface: zxing-cpp first, pyzbar as second opinion.

DESIGN §9: zxing-cpp is best or near-best on every image set and fast; pyzbar helps on some
1D codes, reads nothing on phone screens, and can lose a whole result to a bad orientation
value, which :class:`PyzbarDecoder` guards against.
"""

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zxingcpp
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

Gray = NDArray[np.uint8]


@dataclass(frozen=True)
class Decoded:
    """One code found in an image."""

    text: str
    format: str


class Decoder(Protocol):
    """Anything that finds codes in a grayscale or BGR image."""

    name: str

    def decode(self, image: Gray) -> list[Decoded]:
        """Every code found, best first; empty when there is none."""
        ...


class ImageLoadError(ValueError):
    """An image file that could not be read."""


VOUCHER_FORMATS = frozenset({"QRCode"})
"""Vouchers and pickup codes are QR codes."""

KIOSK_FORMATS = frozenset({"QRCode", "Code128"})
"""What a kiosk reads from shoppers and staff: vouchers and pickup codes (QR), staff badges,
bag and tote labels (Code 128, or QR)."""

PARCEL_FORMATS = frozenset(
    {"QRCode", "Code128", "EAN13", "EAN8", "UPCA", "UPCE", "ITF", "Code39", "DataMatrix"}
)
"""Carrier and merchant parcel labels, while a clerk or courier loads parcels."""

TWO_D_FORMATS = frozenset(
    {
        "QRCode",
        "MicroQRCode",
        "RMQRCode",
        "DataMatrix",
        "Aztec",
        "PDF417",
        "MicroPDF417",
        "MaxiCode",
    }
)

ALL_FORMATS: frozenset[str] | None = None


def load_image(path: str | Path) -> Gray:
    """Read an image file as 8-bit grayscale, or raise :class:`ImageLoadError`."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageLoadError(f"no such file: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageLoadError(f"not a readable image: {path}: {exc}") from None


def _zxing_formats(names: Iterable[str]) -> "zxingcpp.BarcodeFormats":
    return zxingcpp.BarcodeFormats([getattr(zxingcpp.BarcodeFormat, n) for n in sorted(names)])


class ZxingDecoder:
    """zxing-cpp, in Plain text mode (HRI mode rewrites control characters and GS1 data)."""

    name = "zxing-cpp"

    def __init__(
        self, formats: frozenset[str] | None = None, *, binarizer: str = "LocalAverage"
    ) -> None:
        self._formats = _zxing_formats(formats) if formats else None
        self._binarizer = getattr(zxingcpp.Binarizer, binarizer)

    def _read(self, image: Gray, *, errors: bool) -> list[Any]:
        kwargs: dict[str, Any] = {
            "text_mode": zxingcpp.TextMode.Plain,
            "binarizer": self._binarizer,
            "return_errors": errors,
        }
        if self._formats is not None:
            kwargs["formats"] = self._formats
        return list(zxingcpp.read_barcodes(image, **kwargs))

    def decode(self, image: Gray) -> list[Decoded]:
        """Codes zxing-cpp finds in ``image``."""
        return [Decoded(r.text, _format_name(r.format)) for r in self._read(image, errors=False)]

    def decode_with_candidates(self, image: Gray) -> tuple[list[Decoded], list["Candidate"]]:
        """Codes read, and the symbols found but not decoded (checksum or format errors),
        which are worth a second, closer look."""
        results = self._read(image, errors=True)
        found = [Decoded(r.text, _format_name(r.format)) for r in results if r.valid]
        failed = [_candidate(r) for r in results if not r.valid]
        return found, failed


@dataclass(frozen=True)
class Candidate:
    """A symbol zxing-cpp found but could not decode: where (pixel box) and of which kind."""

    box: tuple[int, int, int, int]
    """x0, y0, x1, y1, inclusive of the symbol's corner points."""
    matrix: bool
    """A 2D (matrix) symbol rather than a linear one."""

    def overlaps(self, other: "Candidate") -> bool:
        """Whether the two boxes share any pixel."""
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = self.box, other.box
        return ax0 <= bx1 and bx0 <= ax1 and ay0 <= by1 and by0 <= ay1

    def union(self, other: "Candidate") -> "Candidate":
        """The box around both (same kind)."""
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = self.box, other.box
        box = (min(ax0, bx0), min(ay0, by0), max(ax1, bx1), max(ay1, by1))
        return Candidate(box, self.matrix)


def _candidate(result: Any) -> Candidate:
    corners = ("top_left", "top_right", "bottom_left", "bottom_right")
    points = [getattr(result.position, c) for c in corners]
    xs, ys = [int(p.x) for p in points], [int(p.y) for p in points]
    matrix = _format_name(result.format) in TWO_D_FORMATS
    return Candidate((min(xs), min(ys), max(xs), max(ys)), matrix)


def merge_candidates(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Overlapping candidates of one kind as one: zxing often reports one damaged QR code
    as a QR code and one or two Micro QR codes inside it, and a 1D code once per scan row
    band; each region is worth one closer look, not three."""
    merged: list[Candidate] = []
    for candidate in candidates:
        grown = candidate
        while hit := next(
            (m for m in merged if m.matrix == grown.matrix and m.overlaps(grown)), None
        ):
            merged.remove(hit)
            grown = grown.union(hit)
        merged.append(grown)
    return merged


def _format_name(fmt: object) -> str:
    # zxing-cpp 3 prints formats as "QR Code"; the enum name is the stable one.
    return str(getattr(fmt, "name", None) or str(fmt).rsplit(".", 1)[-1])


_PYZBAR_NAMES = {
    "QRCODE": "QRCode",
    "CODE128": "Code128",
    "EAN13": "EAN13",
    "EAN8": "EAN8",
    "UPCA": "UPCA",
    "UPCE": "UPCE",
    "I25": "ITF",
    "CODE39": "Code39",
    "CODE93": "Code93",
    "CODABAR": "Codabar",
    "DATABAR": "DataBar",
}

_ZBAR_READER = {ours: zbar for zbar, ours in _PYZBAR_NAMES.items()} | {
    "UPCA": "EAN13",
    "UPCE": "EAN13",
}
"""The zbar symbology that reads each of our formats. UPC-A and UPC-E go to zbar's EAN-13
reader, which reports them in their 13-digit EAN form, the text zxing-cpp gives for them too;
zbar's own UPC-A/UPC-E settings would give 12 and 8 digits, another id for the same label."""

UPC_FORMATS = frozenset({"UPCA", "UPCE"})

ZBAR_ONE_D_FORMATS = frozenset(_ZBAR_READER) - TWO_D_FORMATS
"""The 1D formats zbar reads: pyzbar's part in a chain with every format enabled."""


class PyzbarDecoder:
    """libzbar through pyzbar: a second opinion, mainly for 1D codes.

    zbar is told which symbologies to look for (``formats``; None: zbar's defaults), so it
    spends no time on, say, QR finder patterns when only Code 128 is wanted, and it scans
    every ``scan_density``-th pixel row and column rather than all of them. A 1D symbol's bars
    run its whole height, so every other line sees the same bars: density 2 halves zbar's time
    and reads as many 1D codes (docs/performance.md, Decoding; ADR 0008).
    """

    name = "pyzbar"

    def __init__(self, formats: frozenset[str] | None = None, *, scan_density: int = 2) -> None:
        if scan_density < 1:
            raise ValueError("scan_density must be at least 1")
        self._formats = formats
        self._density = scan_density
        self._symbols = None if formats is None else _zbar_symbol_ids(formats)

    def decode(self, image: Gray) -> list[Decoded]:
        """Codes zbar finds; a symbol that breaks pyzbar's parsing is skipped, not fatal."""
        found = []
        for symbol_type, data in _zbar_symbols(image, self._symbols, self._density):
            code = Decoded(
                data.decode("utf-8", errors="replace"), _PYZBAR_NAMES.get(symbol_type, symbol_type)
            )
            if self._wanted(code):
                found.append(code)
        return found

    def _wanted(self, code: Decoded) -> bool:
        if self._formats is None or code.format in self._formats:
            return True
        # With UPC but not EAN-13 enabled, only the EAN-13 forms of UPC codes (leading 0).
        return code.format == "EAN13" and bool(self._formats & UPC_FORMATS) and code.text[:1] == "0"


def _zbar_symbol_ids(formats: frozenset[str]) -> tuple[int, ...]:
    """zbar's symbology numbers for our format names (formats zbar does not know are left out)."""
    from pyzbar.wrapper import ZBarSymbol

    return tuple(sorted({int(ZBarSymbol[_ZBAR_READER[f]]) for f in formats if f in _ZBAR_READER}))


def _configure(scanner: Any, symbols: tuple[int, ...] | None, density: int) -> None:
    from pyzbar.wrapper import ZBarConfig, zbar_image_scanner_set_config

    # Symbology 0 (ZBAR_NONE) addresses every symbology at once.
    zbar_image_scanner_set_config(scanner, 0, ZBarConfig.CFG_X_DENSITY, density)
    zbar_image_scanner_set_config(scanner, 0, ZBarConfig.CFG_Y_DENSITY, density)
    if symbols is not None:
        zbar_image_scanner_set_config(scanner, 0, ZBarConfig.CFG_ENABLE, 0)
        for symbol in symbols:
            zbar_image_scanner_set_config(scanner, symbol, ZBarConfig.CFG_ENABLE, 1)


def _zbar_symbols(
    image: Gray, symbols: tuple[int, ...] | None = None, density: int = 1
) -> list[tuple[str, bytes]]:
    """(type, data) of every symbol zbar reads, without pyzbar's orientation lookup.

    pyzbar 0.1.9 with libzbar 0.23 raises ``ValueError: 4294967295 is not a valid
    ZBarOrientation`` while building its result tuples and so loses every symbol of the
    image (DESIGN §9). This walks zbar's symbol list with pyzbar's own ctypes bindings and
    reads only each symbol's type and data. ``symbols``: the zbar symbologies to enable
    (None: zbar's defaults); ``density``: scan every n-th row and column.
    """
    from ctypes import c_void_p, cast, string_at

    from pyzbar import pyzbar, wrapper

    gray = image if image.ndim == 2 else image[:, :, 0]
    pixels = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    height, width = gray.shape[:2]
    found: list[tuple[str, bytes]] = []
    with pyzbar._image_scanner() as scanner, pyzbar._image() as img:
        _configure(scanner, symbols, density)
        wrapper.zbar_image_set_format(img, pyzbar._FOURCC["L800"])
        wrapper.zbar_image_set_size(img, width, height)
        wrapper.zbar_image_set_data(img, cast(pixels, c_void_p), len(pixels), None)  # type: ignore[arg-type]
        if wrapper.zbar_scan_image(scanner, img) < 0:
            return []
        for symbol in pyzbar._symbols_for_image(img):
            data = string_at(
                wrapper.zbar_symbol_get_data(symbol), wrapper.zbar_symbol_get_data_length(symbol)
            )
            try:
                name = wrapper.ZBarSymbol(symbol.contents.type).name
            except ValueError:
                name = f"ZBAR{symbol.contents.type}"
            found.append((str(name), bytes(data)))
    return found


def _roi(image: Gray, box: tuple[int, int, int, int], margin: float = 0.25) -> Gray:
    """The part of ``image`` around a candidate's box, with a margin for the quiet zone."""
    x0, y0, x1, y1 = box
    pad = int(max(x1 - x0, y1 - y0) * margin) + 8
    height, width = image.shape[:2]
    return image[max(0, y0 - pad) : min(height, y1 + pad), max(0, x0 - pad) : min(width, x1 + pad)]


class DecoderChain:
    """zxing-cpp first; then cheap rescues only where they can pay off; pyzbar for 1D codes.

    1. zxing-cpp on the whole frame, asking for the symbols it found but could not decode.
    2. For each such symbol (overlapping ones merged), its region alone, contrast-equalized
       (CLAHE: glare, dim light) and upscaled 2× (small or steep codes), read by zxing-cpp
       for that kind of symbol only (linear or matrix formats): a few hundred thousand
       pixels and a fraction of the readers.
    3. pyzbar, for 1D formats (scanning every second line, only the enabled symbologies),
       on the whole image when it is small enough (``pyzbar_max_pixels``) that a pass is
       cheap, otherwise on the found-but-failed regions of a kind it reads; on a 720p frame
       with no candidate it would cost several zxing passes for nothing.

    A frame zxing reads costs exactly one zxing pass; a frame with no code costs one zxing pass
    plus at most one pyzbar pass on small images. ``stats`` counts which stage read.
    """

    def __init__(
        self,
        formats: frozenset[str] | None = None,
        *,
        rescue: bool = True,
        second_opinion: bool = True,
        pyzbar_max_pixels: int = 800_000,
    ) -> None:
        self.formats = formats
        self._zxing = ZxingDecoder(formats)
        self._rescuers = {kind: _rescuer(formats, matrix=kind) for kind in (False, True)}
        one_d = ZBAR_ONE_D_FORMATS if formats is None else formats & ZBAR_ONE_D_FORMATS
        self._pyzbar = PyzbarDecoder(one_d) if second_opinion and one_d else None
        self._rescue = rescue
        self._pyzbar_max_pixels = pyzbar_max_pixels
        self._clahe: Any = None
        self.stats: Counter[str] = Counter()

    def decode(self, image: Gray) -> list[Decoded]:
        """Every code found, or empty."""
        gray = image if image.ndim == 2 else _to_gray(image)
        found, failed = self._zxing.decode_with_candidates(gray)
        if found:
            self.stats["zxing"] += 1
            return found
        candidates = merge_candidates(failed)
        for stage, attempt in (("rescue", self._rescued), ("pyzbar", self._second_opinion)):
            found = attempt(gray, candidates)
            if found:
                self.stats[stage] += 1
                return found
        self.stats["none"] += 1
        return []

    def _rescued(self, gray: Gray, candidates: list[Candidate]) -> list[Decoded]:
        if not self._rescue:
            return []
        for candidate in candidates:
            region = _roi(gray, candidate.box)
            found = (
                self._rescue_region(region, self._rescuers[candidate.matrix]) if region.size else []
            )
            if found:
                return found
        return []

    def _second_opinion(self, gray: Gray, candidates: list[Candidate]) -> list[Decoded]:
        if self._pyzbar is None:
            return []
        if gray.size <= self._pyzbar_max_pixels:
            # Whole image: the candidates' regions are inside it, zbar reads them there too.
            return self._pyzbar.decode(gray)
        for candidate in candidates:
            region = _roi(gray, candidate.box)
            if not candidate.matrix and region.size:
                found = self._pyzbar.decode(region)
                if found:
                    return found
        return []

    def _rescue_region(self, region: Gray, zxing: ZxingDecoder) -> list[Decoded]:
        import cv2

        if self._clahe is None:
            self._clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
        for variant in (
            self._clahe.apply(region),
            # zxing's downscaling pyramid then also sees the region at about its own scale,
            # smoothed by the resampling: that reads some blurred codes the CLAHE pass does not.
            cv2.resize(region, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC),
        ):
            found = zxing.decode(np.ascontiguousarray(variant))
            if found:
                return found
        return []


def _rescuer(formats: frozenset[str] | None, *, matrix: bool) -> ZxingDecoder:
    """zxing-cpp for one kind of symbol (linear or matrix) of those enabled."""
    if formats is None:
        return ZxingDecoder(frozenset({"AllMatrix"} if matrix else {"AllLinear"}))
    kind = (formats & TWO_D_FORMATS) if matrix else (formats - TWO_D_FORMATS)
    return ZxingDecoder(kind or formats)


def _to_gray(image: NDArray[np.uint8]) -> Gray:
    import cv2

    gray: Gray = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8)
    return gray


def default_chain(formats: frozenset[str] | None = ALL_FORMATS) -> DecoderChain:
    """The kiosk's chain for ``formats`` (None: every format zxing-cpp and zbar know)."""
    return DecoderChain(formats)
