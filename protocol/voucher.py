"""Return vouchers: Ed25519-signed tokens a kiosk verifies offline (DESIGN §4).

Wire form: ``DL1:`` followed by unpadded RFC 4648 Base32 of ``payload || signature``. Every
character is in the QR alphanumeric set, so a typical voucher fits a version 7 QR code at
ECC M and the largest allowed one fits version 8.

Payload layout (big-endian):

====================  ===========================================================
1 byte                format version (1)
1 + n bytes           key id (ASCII, n ≤ 8)
16 bytes              return id (UUID)
1 + n bytes           merchant id (ASCII, n ≤ 16)
4 bytes               expiry, Unix seconds
1 byte                size class
1 byte                item count
1 + 4·k bytes         store scope: k ≤ 4 store tags; k = 0 means any store
====================  ===========================================================

A store tag is the first 4 bytes of BLAKE2s(store id). Tags keep the token small; the
signature covers them, so a collision only matters if two of one merchant's stores collide
(about 1 in 4·10⁹), and it would only widen a voucher's scope, never forge one.
"""

import base64
import hashlib
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import (
    VoucherBadSignature,
    VoucherExpired,
    VoucherMalformed,
    VoucherUnknownKey,
    VoucherWrongStore,
)
from protocol.sizes import SizeClass

PREFIX = "DL1:"
FORMAT_VERSION = 1
SIGNATURE_BYTES = 64
MAX_KID = 8
MAX_MERCHANT = 16
MAX_STORES = 4
MAX_TOKEN_CHARS = 216  # QR version 8 at ECC M holds 221 alphanumeric characters


def store_tag(store: str) -> bytes:
    """The 4-byte tag a voucher carries for a store id."""
    return hashlib.blake2s(store.encode(), digest_size=4).digest()


@dataclass(frozen=True)
class VoucherClaims:
    """What a voucher says. ``store_tags`` empty means any store of the merchant."""

    kid: str
    return_id: uuid.UUID
    merchant: str
    expires_at: int
    size: SizeClass
    items: int
    store_tags: tuple[bytes, ...] = ()

    @classmethod
    def scoped(
        cls,
        *,
        kid: str,
        return_id: uuid.UUID,
        merchant: str,
        expires_at: int,
        size: SizeClass,
        items: int,
        stores: tuple[str, ...] = (),
    ) -> "VoucherClaims":
        """Claims for the given store ids (empty: any store)."""
        tags = tuple(store_tag(s) for s in stores)
        return cls(kid, return_id, merchant, expires_at, size, items, tags)

    def allows_store(self, store: str) -> bool:
        """True when this voucher may be used at ``store``."""
        return not self.store_tags or store_tag(store) in self.store_tags


def _short_ascii(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("ascii", errors="strict") if value.isascii() else b""
    if not raw or len(raw) > limit:
        raise ValueError(f"{what} must be 1..{limit} ASCII characters, got {value!r}")
    return bytes([len(raw)]) + raw


def encode_payload(claims: VoucherClaims) -> bytes:
    """The signed part of a voucher."""
    if not 1 <= claims.items <= 255:
        raise ValueError("items must be 1..255")
    if len(claims.store_tags) > MAX_STORES:
        raise ValueError(f"at most {MAX_STORES} stores per voucher")
    if not 0 <= claims.expires_at < 2**32:
        raise ValueError("expires_at out of range")
    return b"".join(
        [
            bytes([FORMAT_VERSION]),
            _short_ascii(claims.kid, MAX_KID, "key id"),
            claims.return_id.bytes,
            _short_ascii(claims.merchant, MAX_MERCHANT, "merchant id"),
            struct.pack(">IBB", claims.expires_at, int(claims.size), claims.items),
            bytes([len(claims.store_tags)]),
            *claims.store_tags,
        ]
    )


def issue(claims: VoucherClaims, key: Ed25519PrivateKey) -> str:
    """Sign ``claims`` and return the voucher text (what the QR code holds)."""
    payload = encode_payload(claims)
    token = PREFIX + base64.b32encode(payload + key.sign(payload)).decode().rstrip("=")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"voucher of {len(token)} characters would not fit a version 8 QR")
    return token


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise VoucherMalformed("voucher is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def short_text(self, limit: int, what: str) -> str:
        n = self.take(1)[0]
        if not 1 <= n <= limit:
            raise VoucherMalformed(f"{what} length {n} out of range")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError:
            raise VoucherMalformed(f"{what} is not ASCII") from None


def parse(token: str) -> tuple[VoucherClaims, bytes, bytes]:
    """Split a voucher into claims, signed payload and signature, verifying nothing."""
    text = token.strip()
    if not text.upper().startswith(PREFIX):
        raise VoucherMalformed("not a Dropline voucher")
    body = text[len(PREFIX) :].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise VoucherMalformed("voucher is not valid Base32") from None
    if base64.b32encode(raw).decode().rstrip("=") != body:
        # Unpadded Base32 leaves spare bits in the last character: only one spelling is valid.
        raise VoucherMalformed("voucher is not canonical Base32")
    if len(raw) <= SIGNATURE_BYTES:
        raise VoucherMalformed("voucher is truncated")
    payload, signature = raw[:-SIGNATURE_BYTES], raw[-SIGNATURE_BYTES:]
    return _parse_payload(payload), payload, signature


def _parse_payload(payload: bytes) -> VoucherClaims:
    r = _Reader(payload)
    if r.take(1)[0] != FORMAT_VERSION:
        raise VoucherMalformed("unsupported voucher version")
    kid = r.short_text(MAX_KID, "key id")
    return_id = uuid.UUID(bytes=r.take(16))
    merchant = r.short_text(MAX_MERCHANT, "merchant id")
    expires_at, size, items = struct.unpack(">IBB", r.take(6))
    n_stores = r.take(1)[0]
    if n_stores > MAX_STORES:
        raise VoucherMalformed("too many stores")
    tags = tuple(r.take(4) for _ in range(n_stores))
    if r.pos != len(payload):
        raise VoucherMalformed("trailing bytes after voucher payload")
    try:
        size_class = SizeClass(size)
    except ValueError:
        raise VoucherMalformed(f"unknown size class {size}") from None
    if items < 1:
        raise VoucherMalformed("item count is zero")
    return VoucherClaims(kid, return_id, merchant, expires_at, size_class, items, tags)


def verify(
    token: str, keys: Mapping[str, Ed25519PublicKey], *, store: str, now: float
) -> VoucherClaims:
    """Check signature, key, expiry and store scope; return the claims or raise a
    :class:`~protocol.errors.VoucherError` whose ``reason`` says what failed.

    Revocation and one-time use need the kiosk's state and are checked by the kiosk.
    """
    claims, payload, signature = parse(token)
    key = keys.get(claims.kid)
    if key is None:
        raise VoucherUnknownKey(f"key {claims.kid!r} is not trusted here")
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise VoucherBadSignature("signature does not match") from None
    if now >= claims.expires_at:
        raise VoucherExpired(f"expired at {claims.expires_at}")
    if not claims.allows_store(store):
        raise VoucherWrongStore(f"not valid at store {store!r}")
    return claims


def public_key_text(key: Ed25519PublicKey) -> str:
    """A public key as unpadded base64url of its 32 raw bytes (for the store config)."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Inverse of :func:`public_key_text`; raises ``ValueError`` on a bad key."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


def keyring(config_keys: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id from a store config's ``voucher_keys``."""
    return {kid: public_key_from_text(text) for kid, text in config_keys.items()}
