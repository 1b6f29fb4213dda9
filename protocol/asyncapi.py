"""The MQTT contract of DESIGN §4 as an AsyncAPI 3.0 document, generated from the code:
the channels from the topic layout (:mod:`protocol.topics`), the payloads from the envelope
and body models (:mod:`protocol.envelope`, :mod:`protocol.messages`).

Pure: :func:`document` builds the document, :func:`render` its committed text
(``docs/asyncapi.json``, written by ``dropline asyncapi``).
"""

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from protocol.envelope import MAX_MESSAGE_BYTES, Envelope
from protocol.ids import ID_PATTERN
from protocol.messages import BODY_TYPES, COMMAND_TYPES, EVENT_TYPES
from protocol.topics import GATEWAY_STATUS, ROOT, Channel

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/{model}"
MQTT_BINDING_VERSION = "0.2.0"
DEVICE = f"{ROOT}/{{store}}/{{device}}"


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of the contract: its address, its message types, who publishes,
    and how (DESIGN §4's table)."""

    name: str
    address: str
    messages: tuple[str, ...]
    sender: str  # "kiosk" or "gateway"
    retained: bool
    description: str


def channel_specs() -> list[ChannelSpec]:
    """Every channel, in the order of DESIGN §4's table: one per event type and command."""
    specs = [
        ChannelSpec(
            f"evt-{t}",
            f"{DEVICE}/{Channel.EVT}/{t}",
            (t,),
            "kiosk",
            False,
            f"Kiosk → gateway: a `{t}` event, acked by id once committed.",
        )
        for t in sorted(EVENT_TYPES)
    ]
    specs.append(
        ChannelSpec(
            "ack",
            f"{DEVICE}/{Channel.ACK}",
            ("ack",),
            "gateway",
            False,
            "Gateway → kiosk: ids of events the gateway has committed.",
        )
    )
    specs += [
        ChannelSpec(
            f"cmd-{c}",
            f"{DEVICE}/{Channel.CMD}/{c}",
            (c,),
            "gateway",
            False,
            f"Gateway → kiosk: the `{c}` command. Never retained.",
        )
        for c in sorted(COMMAND_TYPES)
    ]
    specs += [
        ChannelSpec(
            "cmd-res",
            f"{DEVICE}/{Channel.CMD_RES}",
            ("cmd_result",),
            "kiosk",
            False,
            "Kiosk → gateway: a command's outcome (accepted, succeeded, failed, expired).",
        ),
        ChannelSpec(
            "status",
            f"{DEVICE}/{Channel.STATUS}",
            ("status",),
            "kiosk",
            True,
            "Kiosk presence, retained: the online birth (session counter, version, "
            "capabilities) on connect; the kiosk's will, the offline form, is "
            "published by the broker when the kiosk vanishes.",
        ),
        ChannelSpec(
            "store-config",
            f"{ROOT}/{{store}}/config",
            ("store_config",),
            "gateway",
            True,
            "Gateway → the kiosks of a store: the retained, versioned config "
            "(voucher keys, revocations, clerks, mode).",
        ),
        ChannelSpec(
            "gateway-status",
            GATEWAY_STATUS,
            ("gateway_status",),
            "gateway",
            True,
            "Gateway presence, retained; its will sets it offline.",
        ),
    ]
    return specs


def _parameters(address: str) -> dict[str, Any]:
    described = {
        "store": "The store's id.",
        "device": "The kiosk's id, unique within its store.",
    }
    return {
        name: {
            "description": f"{text} Matches `{ID_PATTERN}`.",
            "examples": ["store-1" if name == "store" else "kiosk-1"],
        }
        for name, text in described.items()
        if f"{{{name}}}" in address
    }


def _schemas() -> tuple[dict[str, str], dict[str, Any]]:
    """Each message type's envelope schema name, and every schema by name."""
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (Envelope[body], "validation")  # type: ignore[valid-type]
        for body in BODY_TYPES.values()
    ]
    refs, defs = models_json_schema(models, ref_template=SCHEMAS)
    names = {
        message_type: refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]
        for message_type, (model, _) in zip(BODY_TYPES, models, strict=True)
    }
    return names, dict(sorted(defs["$defs"].items()))


def _message(message_type: str, schema: str) -> dict[str, Any]:
    body = BODY_TYPES[message_type]
    summary = (body.__doc__ or message_type).strip().split("\n\n")[0]
    return {
        "name": message_type,
        "title": body.__name__,
        "summary": " ".join(summary.split()),
        "contentType": "application/json",
        "payload": {
            "allOf": [
                {"$ref": SCHEMAS.format(model=schema)},
                {"properties": {"type": {"const": message_type}}},
            ]
        },
    }


def _operation(spec: ChannelSpec) -> dict[str, Any]:
    return {
        "action": "send" if spec.sender == "kiosk" else "receive",
        "channel": {"$ref": f"#/channels/{spec.name}"},
        "messages": [{"$ref": f"#/channels/{spec.name}/messages/{m}"} for m in spec.messages],
        "bindings": {
            "mqtt": {"qos": 1, "retain": spec.retained, "bindingVersion": MQTT_BINDING_VERSION}
        },
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the contract. Operations are a kiosk's: ``send`` is
    what a kiosk publishes, ``receive`` what it subscribes to."""
    schema_of, schemas = _schemas()
    specs = channel_specs()
    channels = {
        spec.name: {
            "address": spec.address,
            "description": spec.description,
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in spec.messages},
            **({"parameters": params} if (params := _parameters(spec.address)) else {}),
        }
        for spec in specs
    }
    operations = {f"{_verb(spec)}-{spec.name}": _operation(spec) for spec in specs}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Dropline kiosk ↔ gateway MQTT contract",
            "version": "1",
            "description": (
                "Every message is one versioned JSON envelope (message id UUIDv7, type, "
                "store, device, per-device `seq`, session counter, timestamp, `historical`, "
                "body), QoS 1, at most "
                f"{MAX_MESSAGE_BYTES} bytes. Receivers order a device's events by `seq`, "
                "never by arrival. Operations are a kiosk's: `send` is what a kiosk "
                "publishes, `receive` what it subscribes to. Generated from `protocol/` "
                "by `dropline asyncapi`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "The embedded default; production runs Mosquitto with TLS, "
                "per-device credentials and ACLs (DESIGN §7).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {t: _message(t, schema_of[t]) for t in BODY_TYPES},
            "schemas": schemas,
        },
    }


def _verb(spec: ChannelSpec) -> str:
    return "publish" if spec.sender == "kiosk" else "subscribe"


def render() -> str:
    """The document as committed: indented JSON, one trailing newline."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"
