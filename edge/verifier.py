"""Offline voucher checks at the kiosk: signature, key, expiry, store, revocation, one use."""

import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.database import EdgeDatabase
from protocol import voucher
from protocol.errors import VoucherAlreadyUsed, VoucherRevoked, VoucherUnknownKey
from protocol.voucher import VoucherClaims


class VoucherVerifier:
    """Decides whether a scanned voucher may open a door, with no network.

    Trusted keys and revocations come from the cached store config; the used-voucher set
    from the kiosk's own database. Raises a :class:`~protocol.errors.VoucherError` whose
    ``reason`` is shown to the shopper and reported to the gateway.
    """

    def __init__(
        self, db: EdgeDatabase, store: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self._store = store
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._keys_version = 0

    async def verify(self, token: str) -> VoucherClaims:
        """The voucher's claims when it may be used here now, else a typed error."""
        config = await self._db.store_config()
        if config is None:
            raise VoucherUnknownKey("this kiosk has no store config yet")
        if config.version != self._keys_version:
            self._keys, self._keys_version = voucher.keyring(config.voucher_keys), config.version
        claims = voucher.verify(token, self._keys, store=self._store, now=self._clock())
        return_id = str(claims.return_id)
        if return_id in config.revoked_returns:
            raise VoucherRevoked(f"return {return_id} was revoked")
        if await self._db.voucher_used(return_id):
            raise VoucherAlreadyUsed(f"return {return_id} was already dropped off")
        return claims
