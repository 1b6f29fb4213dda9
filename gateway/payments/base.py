"""The payment interface: refund once, and look a refund up when its outcome is unknown."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class RefundRequest:
    """A refund to make. ``return_id`` is the idempotency key."""

    return_id: str
    amount_minor: int
    currency: str
    payment_ref: str | None
    merchant: str
    reason: str


class RefundStatus(StrEnum):
    """The provider's word on a refund."""

    SUCCEEDED = "succeeded"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class RefundResult:
    """A refund the provider knows about."""

    refund_id: str
    return_id: str
    status: RefundStatus
    amount_minor: int
    currency: str


class PaymentError(Exception):
    """Base of payment failures. Unless a subclass says otherwise, the outcome is unknown."""


class PaymentTimeout(PaymentError):
    """No answer in time: the refund may have been made. Look it up; never resend blind."""


class PaymentUnavailable(PaymentError):
    """The provider could not be reached; nothing was sent."""


class PaymentDeclined(PaymentError):
    """The provider refused the refund; a person has to look."""


class PaymentMalformedReply(PaymentError):
    """An answer we cannot parse; the outcome is unknown."""


class PaymentProvider(Protocol):
    """A way to give a shopper their money back."""

    name: str

    async def refund(self, req: RefundRequest) -> RefundResult:
        """Make the refund, with ``req.return_id`` as the idempotency key."""
        ...

    async def lookup(self, return_id: str) -> RefundResult | None:
        """The refund made for ``return_id``, if the provider has one."""
        ...
