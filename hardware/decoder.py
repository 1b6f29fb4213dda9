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

TWO_D_FORMATS = frozenset({"QRCode", "DataMatrix", "Aztec", "PDF417", "MicroQRCode"})

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

    def decode_with_candidates(self, image: Gray) -> tuple[list[Decoded], list[Any]]:
        """Codes read, and the positions of symbols found but not decoded (checksum or
        format errors), which are worth a second, closer look."""
        results = self._read(image, errors=True)
        found = [Decoded(r.text, _format_name(r.format)) for r in results if r.valid]
        return found, [r.position for r in results if not r.valid]


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


class PyzbarDecoder:
    """libzbar through pyzbar: a second opinion, mainly for 1D codes."""

    name = "pyzbar"

    def __init__(self, formats: frozenset[str] | None = None) -> None:
        self._formats = formats

    def decode(self, image: Gray) -> list[Decoded]:
        """Codes zbar finds; a symbol that breaks pyzbar's parsing is skipped, not fatal."""
        found = []
        for symbol_type, data in _zbar_symbols(image):
            name = _PYZBAR_NAMES.get(symbol_type, symbol_type)
            if self._formats is None or name in self._formats:
                found.append(Decoded(data.decode("utf-8", errors="replace"), name))
        return found


def _zbar_symbols(image: Gray) -> list[tuple[str, bytes]]:
    """(type, data) of every symbol zbar reads, without pyzbar's orientation lookup.

    pyzbar 0.1.9 with libzbar 0.23 raises ``ValueError: 4294967295 is not a valid
    ZBarOrientation`` while building its result tuples and so loses every symbol of the
    image (DESIGN §9). This walks zbar's symbol list with pyzbar's own ctypes bindings and
    reads only each symbol's type and data.
    """
    from ctypes import c_void_p, cast, string_at

    from pyzbar import pyzbar, wrapper

    gray = image if image.ndim == 2 else image[:, :, 0]
    pixels = np.ascontiguousarray(gray, dtype=np.uint8).tobytes()
    height, width = gray.shape[:2]
    symbols: list[tuple[str, bytes]] = []
    with pyzbar._image_scanner() as scanner, pyzbar._image() as img:
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
            symbols.append((str(name), bytes(data)))
    return symbols


def _roi(image: Gray, position: object, margin: float = 0.25) -> Gray:
    """The part of ``image`` around a zxing position, with a margin for the quiet zone."""
    points = [
        getattr(position, c) for c in ("top_left", "top_right", "bottom_left", "bottom_right")
    ]
    xs, ys = [int(p.x) for p in points], [int(p.y) for p in points]
    pad = int(max(max(xs) - min(xs), max(ys) - min(ys)) * margin) + 8
    height, width = image.shape[:2]
    x0, x1 = max(0, min(xs) - pad), min(width, max(xs) + pad)
    y0, y1 = max(0, min(ys) - pad), min(height, max(ys) + pad)
    return image[y0:y1, x0:x1]


class DecoderChain:
    """zxing-cpp first; then cheap rescues only where they can pay off; pyzbar for 1D codes.

    1. zxing-cpp on the whole frame, asking for the symbols it found but could not decode.
    2. For each such symbol, its region alone, contrast-equalized (CLAHE: glare, dim light)
       and upscaled 2× (small or steep codes): a few hundred thousand pixels, not a frame.
    3. pyzbar, for 1D formats, on found-but-failed regions and on frames small enough
       (``pyzbar_max_pixels``) that a whole pass is cheap; on a 720p frame with no candidate it
       would cost several zxing passes for nothing.

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
        one_d = None if formats is None else formats - TWO_D_FORMATS
        self._pyzbar = PyzbarDecoder(one_d) if second_opinion and (one_d is None or one_d) else None
        self._rescue = rescue
        self._pyzbar_max_pixels = pyzbar_max_pixels
        self._clahe: Any = None
        self.stats: Counter[str] = Counter()

    def decode(self, image: Gray) -> list[Decoded]:
        """Every code found, or empty."""
        gray = image if image.ndim == 2 else _to_gray(image)
        found, candidates = self._zxing.decode_with_candidates(gray)
        if found:
            self.stats["zxing"] += 1
            return found
        regions = [r for r in (_roi(gray, c) for c in candidates) if r.size]
        if self._rescue:
            for region in regions:
                found = self._rescue_region(region)
                if found:
                    self.stats["rescue"] += 1
                    return found
        if self._pyzbar is not None:
            targets = regions + ([gray] if gray.size <= self._pyzbar_max_pixels else [])
            for target in targets:
                found = self._pyzbar.decode(target)
                if found:
                    self.stats["pyzbar"] += 1
                    return found
        self.stats["none"] += 1
        return []

    def _rescue_region(self, region: Gray) -> list[Decoded]:
        import cv2

        if self._clahe is None:
            self._clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
        for variant in (
            self._clahe.apply(region),
            cv2.resize(region, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC),
        ):
            found = self._zxing.decode(np.ascontiguousarray(variant))
            if found:
                return found
        return []


def _to_gray(image: NDArray[np.uint8]) -> Gray:
    import cv2

    gray: Gray = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8)
    return gray


def default_chain(formats: frozenset[str] | None = ALL_FORMATS) -> DecoderChain:
    """The kiosk's chain for ``formats`` (None: every format zxing-cpp and zbar know)."""
    return DecoderChain(formats)
