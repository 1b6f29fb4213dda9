"""The one versioned envelope every Dropline MQTT message travels in (DESIGN §4)."""

import json
import time
import uuid
from functools import cache
from typing import Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.errors import MalformedMessage, UnknownMessageType
from protocol.ids import ID_PATTERN, uuid7
from protocol.messages import BODY_TYPES

MAX_MESSAGE_BYTES = 64 * 1024
"""Larger payloads are refused unparsed: nothing we send comes near it."""

B = TypeVar("B", bound=BaseModel)


class Envelope(BaseModel, Generic[B]):
    """Every message: who sent it, in what order, when, and the typed body.

    ``store`` and ``device`` name the kiosk the message is about (its sender for events,
    its addressee for acks and commands). ``seq`` orders one device's messages; the
    receiver orders by it, never by arrival (DESIGN §5 rule 5).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    id: uuid.UUID
    type: str = Field(pattern=r"^[a-z][a-z_]{0,31}$")
    store: str = Field(pattern=ID_PATTERN)
    device: str = Field(pattern=ID_PATTERN)
    seq: int = Field(ge=0)
    session: int = Field(ge=0)
    ts: float = Field(ge=0)
    historical: bool = False
    body: B


def message_type(body: BaseModel) -> str:
    """The envelope ``type`` that carries a body of this class."""
    for name, model in BODY_TYPES.items():
        if type(body) is model:
            return name
    raise TypeError(f"{type(body).__name__} is not a registered message body")


def make(
    body: B,
    *,
    store: str,
    device: str,
    seq: int,
    session: int,
    historical: bool = False,
    ts: float | None = None,
    message_id: uuid.UUID | None = None,
) -> Envelope[B]:
    """Wrap ``body`` in a fresh envelope with a new UUIDv7 id."""
    model = _envelope_of(type(body))
    envelope = model(
        id=message_id or uuid7(),
        type=message_type(body),
        store=store,
        device=device,
        seq=seq,
        session=session,
        ts=time.time() if ts is None else ts,
        historical=historical,
        body=body,
    )
    return cast("Envelope[B]", envelope)


def encode(envelope: Envelope[Any]) -> bytes:
    """Serialize to the compact JSON that goes on the wire."""
    return envelope.model_dump_json().encode()


@cache
def _envelope_of(model: type[BaseModel]) -> type[Envelope[Any]]:
    return Envelope[model]  # type: ignore[valid-type]


def decode(raw: bytes | bytearray | str, expected_type: str | None = None) -> Envelope[Any]:
    """Parse and validate a payload, body included, or raise a typed error.

    ``expected_type`` (the type its topic names) lets a receiver validate straight from the
    bytes, at about a third of the cost; a payload of another type is malformed.
    Raises :class:`MalformedMessage` for anything that is not a valid envelope and
    :class:`UnknownMessageType` for a valid envelope of a type this version lacks.
    """
    model = BODY_TYPES.get(expected_type) if expected_type else None
    if model is not None and len(raw) <= MAX_MESSAGE_BYTES:
        try:
            message = _envelope_of(model).model_validate_json(raw)
        except ValidationError:
            pass  # the slow path below says precisely what is wrong
        else:
            if message.type != expected_type:
                raise MalformedMessage(
                    f"a {message.type!r} message where {expected_type!r} belongs"
                )
            return message
    return _decode_slowly(raw, expected_type)


def _decode_slowly(raw: bytes | bytearray | str, expected_type: str | None) -> Envelope[Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"payload of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("envelope is not a JSON object")
    kind = data.get("type")
    model = BODY_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise UnknownMessageType(f"unknown message type {kind!r}")
    if expected_type is not None and kind != expected_type:
        raise MalformedMessage(f"a {kind!r} message where {expected_type!r} belongs")
    try:
        return _envelope_of(model).model_validate(data)
    except ValidationError as exc:
        raise MalformedMessage(_summarize(exc)) from None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "envelope"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
