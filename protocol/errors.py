"""Typed errors for everything that arrives from outside: messages, topics and vouchers."""


class ProtocolError(Exception):
    """Base of every protocol error; ``reason`` is a short machine-readable code."""

    reason: str = "protocol_error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class MalformedMessage(ProtocolError):
    """An MQTT payload that is not a valid envelope or body (bad JSON, schema, size)."""

    reason = "malformed_message"


class UnknownMessageType(MalformedMessage):
    """A well-formed envelope whose ``type`` this version does not know."""

    reason = "unknown_type"


class BadTopic(ProtocolError):
    """A topic outside the ``dropline/v1`` layout."""

    reason = "bad_topic"


class VoucherError(ProtocolError):
    """A voucher that must not open a door. ``reason`` says why, for the shopper and the log."""

    reason = "voucher_invalid"


class VoucherMalformed(VoucherError):
    """Not a Dropline voucher at all, or damaged beyond parsing."""

    reason = "malformed"


class VoucherUnknownKey(VoucherError):
    """Signed with a key id this store does not trust (yet, or any more)."""

    reason = "unknown_key"


class VoucherBadSignature(VoucherError):
    """The signature does not match: forged or altered."""

    reason = "bad_signature"


class VoucherExpired(VoucherError):
    """Past its expiry time."""

    reason = "expired"


class VoucherWrongStore(VoucherError):
    """Valid, but scoped to other stores."""

    reason = "wrong_store"


class VoucherRevoked(VoucherError):
    """Revoked by the merchant or operator (cancelled return, reissued voucher)."""

    reason = "revoked"


class VoucherAlreadyUsed(VoucherError):
    """Already used for a drop-off: vouchers are one-time."""

    reason = "already_used"


class ShortCodeError(ProtocolError):
    """A typed short code with a wrong length, alphabet or check character."""

    reason = "bad_short_code"
