"""Envelope, topics and short codes."""

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import envelope, shortcode, topics
from protocol.errors import BadTopic, MalformedMessage, ShortCodeError, UnknownMessageType
from protocol.ids import new_id, new_ids, uuid7
from protocol.messages import Ack, Dropoff, DropoffMethod


def _dropoff() -> Dropoff:
    return Dropoff(
        return_id="r1",
        merchant="acme",
        method=DropoffMethod.LOCKER,
        compartment="A1",
        size="M",
        items=1,
        voucher_kid="k1",
        scanned_at=1.0,
        accepted_at=2.0,
    )


def test_envelope_round_trip() -> None:
    env = envelope.make(_dropoff(), store="store-1", device="kiosk-1", seq=7, session=3)
    back = envelope.decode(envelope.encode(env))
    assert back == env
    assert isinstance(back.body, Dropoff)
    assert back.type == "dropoff"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xff\xfe", MalformedMessage),
        (b"[]", MalformedMessage),
        (b"{}", UnknownMessageType),
        (b'{"type": "teleport"}', UnknownMessageType),
        (b'{"type": "ack", "v": 1}', MalformedMessage),
        (b"x" * (envelope.MAX_MESSAGE_BYTES + 1), MalformedMessage),
    ],
)
def test_bad_payloads_raise_typed_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        envelope.decode(payload)


def test_body_is_validated() -> None:
    env = envelope.make(_dropoff(), store="s", device="d", seq=0, session=0)
    data = json.loads(envelope.encode(env))
    data["body"]["items"] = 0
    with pytest.raises(MalformedMessage, match=r"body\.items"):
        envelope.decode(json.dumps(data))
    data["body"]["items"] = 1
    data["store"] = "Bad Store"
    with pytest.raises(MalformedMessage, match="store"):
        envelope.decode(json.dumps(data))


def test_uuid7_sorts_by_time() -> None:
    a, b = uuid7(1_000), uuid7(2_000)
    assert a.version == 7
    assert a < b


def test_ids_made_as_text_are_distinct_canonical_uuid7s() -> None:
    made = [*new_ids(500), new_id()]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)


def test_topics_round_trip() -> None:
    t = topics.event("store-1", "kiosk-2", "dropoff")
    parsed = topics.parse(t)
    assert (parsed.store, parsed.device, parsed.channel, parsed.leaf) == (
        "store-1",
        "kiosk-2",
        "evt",
        "dropoff",
    )
    assert topics.parse(topics.store_config("store-1")).channel == "config"
    assert topics.parse(topics.ack("s", "d")).channel == "ack"


@pytest.mark.parametrize(
    "topic",
    ["other/v1/s/d/evt/x", "dropline/v1/S/d/evt/x", "dropline/v1/s/d/evt", "dropline/v1/s/d/foo"],
)
def test_bad_topics(topic: str) -> None:
    with pytest.raises(BadTopic):
        topics.parse(topic)


def test_ack_body_limits() -> None:
    with pytest.raises(ValueError, match="at most 1000"):
        Ack(ids=["x"] * 1001)


@given(st.integers(0, 10_000))
def test_short_code_round_trip(_: int) -> None:
    code = shortcode.new_short_code()
    assert shortcode.normalize(shortcode.display(code).lower()) == code


def test_short_code_catches_single_errors_and_adjacent_swaps() -> None:
    code = shortcode.new_short_code()
    for i in range(len(code)):
        for c in shortcode.ALPHABET:
            if c != code[i]:
                with pytest.raises(ShortCodeError):
                    shortcode.normalize(code[:i] + c + code[i + 1 :])
    for i in range(len(code) - 1):
        if code[i] != code[i + 1] and {code[i], code[i + 1]} != {"0", "Z"}:
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
            with pytest.raises(ShortCodeError):
                shortcode.normalize(swapped)


def test_short_code_aliases() -> None:
    canonical = "01110" + "0AB"
    code = canonical + shortcode.check_symbol(canonical)
    assert shortcode.normalize("0I1Lo-0ab " + code[-1]) == code
