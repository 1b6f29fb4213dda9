"""Clerk badges and PINs, hashed the same way at the gateway and at the kiosk.

The gateway never sends a badge code or PIN to a kiosk, only ``scrypt(secret, store salt)``.
One salt per store (not per clerk) lets the kiosk hash what was typed or scanned once and
find the clerk by equality, so a PIN check costs one scrypt on a Pi however many clerks the
store has; it also means PINs (and badges) must be unique within a store, which the gateway
enforces. A PIN has little entropy whatever the hash: the kiosk also locks the keypad after
repeated failures.
"""

import hashlib
import hmac
import secrets
from typing import Literal

SecretKind = Literal["badge", "pin"]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
PIN_DIGITS = (4, 8)


class ClerkSecretError(ValueError):
    """A PIN or badge code that may not be used (too short, not digits)."""


def new_salt() -> str:
    """A fresh store salt (hex)."""
    return secrets.token_hex(16)


def check_pin(pin: str) -> str:
    """``pin`` if it is 4 to 8 digits, else :class:`ClerkSecretError`."""
    low, high = PIN_DIGITS
    if not (pin.isascii() and pin.isdigit() and low <= len(pin) <= high):
        raise ClerkSecretError(f"a PIN is {low} to {high} digits")
    return pin


def secret_hash(salt: str, kind: SecretKind, secret: str) -> str:
    """The hex scrypt hash of a badge code or PIN under the store's salt."""
    if not secret:
        raise ClerkSecretError("empty secret")
    digest = hashlib.scrypt(
        f"{kind}:{secret}".encode(),
        salt=bytes.fromhex(salt) if salt else b"dropline",
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=32,
    )
    return digest.hex()


def same(a: str | None, b: str) -> bool:
    """Constant-time comparison of two hex hashes; False when ``a`` is None."""
    return a is not None and hmac.compare_digest(a, b)
