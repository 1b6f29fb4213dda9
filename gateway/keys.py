"""The gateway's voucher signing keys: created on first start, kept in the database.

Kiosks trust the public halves through the retained store config. Rotation adds a key and
marks it active; old keys stay trusted until every voucher they signed has expired.
"""

import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from gateway.database import Database
from protocol import voucher


class SigningKeys:
    """The active signing key and every public key kiosks should trust."""

    def __init__(self, active_kid: str, keys: dict[str, Ed25519PrivateKey]) -> None:
        self.active_kid = active_kid
        self._keys = keys

    @property
    def active(self) -> Ed25519PrivateKey:
        """The key new vouchers are signed with."""
        return self._keys[self.active_kid]

    def public_texts(self) -> dict[str, str]:
        """Key id → public key text, for the store config."""
        return {kid: voucher.public_key_text(k.public_key()) for kid, k in self._keys.items()}

    @classmethod
    async def load_or_create(cls, db: Database) -> "SigningKeys":
        """Load the keys, creating the first one on a fresh database. Replicas starting at
        once each offer a key; the unique active index keeps exactly one."""
        async with db.transaction() as tx:
            rows = await tx.fetchall("SELECT kid, private_key, active FROM signing_keys")
        if not rows:
            key = Ed25519PrivateKey.generate()
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO signing_keys (kid, private_key, created_at, active) "
                    "VALUES (?, ?, ?, 1) ON CONFLICT DO NOTHING",
                    ("k" + secrets.token_hex(2), raw, time.time()),
                )
            async with db.transaction() as tx:
                rows = await tx.fetchall("SELECT kid, private_key, active FROM signing_keys")
        keys = {str(r[0]): Ed25519PrivateKey.from_private_bytes(bytes(r[1])) for r in rows}
        active = next(str(r[0]) for r in rows if r[2])
        return cls(active, keys)
