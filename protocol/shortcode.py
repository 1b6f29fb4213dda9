"""Short codes a shopper can type when the camera cannot read the QR code.

Eight random symbols of Crockford's Base32 plus one Luhn mod 32 check symbol, shown as
``XXXX-XXXX-C``. The check symbol catches every single wrong symbol and every swap of two
adjacent symbols except ``0``↔``Z`` (Luhn's one blind spot). Input is forgiving the way
Crockford's alphabet intends: case-insensitive, hyphens and spaces ignored, ``I``/``L`` read
as ``1`` and ``O`` as ``0``.
"""

import hashlib
import secrets

from protocol.errors import ShortCodeError

PICKUP_PREFIX = "DLP:"
"""A pickup code shown as a QR code reads ``DLP:`` + the canonical code."""

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})
BODY_LENGTH = 8


def check_symbol(body: str) -> str:
    """The Luhn mod 32 check symbol for ``body`` (canonical symbols only)."""
    n = len(ALPHABET)
    total, factor = 0, 2
    for symbol in reversed(body):
        addend = factor * _VALUE[symbol]
        total += addend // n + addend % n
        factor = 1 if factor == 2 else 2
    return ALPHABET[(n - total % n) % n]


def new_short_code() -> str:
    """A fresh random short code in canonical form (no separators)."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return body + check_symbol(body)


def normalize(text: str) -> str:
    """Canonical form of a typed code, or :class:`ShortCodeError` saying what is wrong."""
    code = text.upper().replace("-", "").replace(" ", "").translate(_ALIASES)
    if len(code) != BODY_LENGTH + 1:
        raise ShortCodeError(f"a short code has {BODY_LENGTH + 1} symbols, got {len(code)}")
    bad = sorted({c for c in code if c not in _VALUE})
    if bad:
        raise ShortCodeError(f"not a short-code symbol: {''.join(bad)}")
    if check_symbol(code[:-1]) != code[-1]:
        raise ShortCodeError("check symbol does not match: a symbol is mistyped")
    return code


def display(code: str) -> str:
    """Grouped for reading aloud and printing: ``XXXX-XXXX-C``."""
    return f"{code[:4]}-{code[4:8]}-{code[8:]}"


def digest(code: str) -> str:
    """Hex SHA-256 of a canonical code: what a kiosk keeps instead of a pickup code."""
    return hashlib.sha256(code.encode()).hexdigest()
