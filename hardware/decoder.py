"""Barcode and QR decoding behind one interface: zxing-cpp first, pyzbar as second opinion.

DESIGN §9: zxing-cpp is best or near-best on every image set and fast; pyzbar helps on some
1D codes, reads nothing on phone screens, and can lose a whole result to a bad orientation
value, which :class:`PyzbarDecoder` guards against.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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

PARCEL_FORMATS = frozenset(
    {"QRCode", "Code128", "EAN13", "EAN8", "UPCA", "UPCE", "ITF", "Code39", "DataMatrix"}
)
"""Carrier and merchant parcel labels, bag labels and badges."""

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

    def decode(self, image: Gray) -> list[Decoded]:
        """Codes zxing-cpp finds in ``image``."""
        kwargs = {"text_mode": zxingcpp.TextMode.Plain, "binarizer": self._binarizer}
        if self._formats is not None:
            kwargs["formats"] = self._formats
        results = zxingcpp.read_barcodes(image, **kwargs)
        return [Decoded(r.text, _format_name(r.format)) for r in results if r.valid]


def _format_name(fmt: object) -> str:
    return str(fmt).rsplit(".", 1)[-1]


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


class DecoderChain:
    """Tries decoders in order and returns the first non-empty result."""

    def __init__(self, decoders: Sequence[Decoder]) -> None:
        self.decoders = list(decoders)

    def decode(self, image: Gray) -> list[Decoded]:
        """The first decoder's codes that finds any; empty when none does."""
        for decoder in self.decoders:
            found = decoder.decode(image)
            if found:
                return found
        return []


def default_chain(formats: frozenset[str] | None = ALL_FORMATS) -> DecoderChain:
    """zxing-cpp, then zxing-cpp with a global-histogram binarizer, then pyzbar for 1D codes."""
    decoders: list[Decoder] = [
        ZxingDecoder(formats),
        ZxingDecoder(formats, binarizer="GlobalHistogram"),
    ]
    one_d = None if formats is None else formats - {"QRCode", "DataMatrix"}
    if one_d is None or one_d:
        decoders.append(PyzbarDecoder(one_d))
    return DecoderChain(decoders)
