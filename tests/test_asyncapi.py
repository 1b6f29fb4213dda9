"""The AsyncAPI document: committed as generated, and covering the whole contract."""

import json
import re
from pathlib import Path
from typing import Any

from protocol import topics
from protocol.asyncapi import document, render
from protocol.messages import BODY_TYPES, COMMAND_TYPES, EVENT_TYPES

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"
SAMPLE = {"store": "store-1", "device": "kiosk-1"}


def _fill(address: str) -> str:
    return address.format(**SAMPLE)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), (
        "docs/asyncapi.json is stale: run `dropline asyncapi --output docs/asyncapi.json`"
    )


def test_every_message_type_is_a_message_on_a_channel() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["components"]["messages"]) == set(BODY_TYPES)
    on_channels = {m for c in doc["channels"].values() for m in c["messages"]}
    assert on_channels == set(BODY_TYPES)


def test_each_channel_address_parses_to_its_message_type() -> None:
    for name, channel in document()["channels"].items():
        parsed = topics.parse(_fill(channel["address"]))
        assert set(channel["messages"]) == {parsed.message_type or parsed.channel}, name
        placeholders = set(re.findall(r"{(\w+)}", channel["address"]))
        assert set(channel.get("parameters", {})) == placeholders, name


def test_every_topic_the_code_builds_has_a_channel() -> None:
    patterns = [
        re.compile("^" + re.escape(c["address"]).replace(r"\{store\}", "[a-z0-9-]+")
                   .replace(r"\{device\}", "[a-z0-9-]+") + "$")
        for c in document()["channels"].values()
    ]  # fmt: skip
    store, device = SAMPLE["store"], SAMPLE["device"]
    built = [topics.event(store, device, t) for t in EVENT_TYPES]
    built += [topics.command(store, device, c) for c in COMMAND_TYPES]
    built += [
        topics.ack(store, device),
        topics.command_result(store, device),
        topics.status(store, device),
        topics.store_config(store),
        topics.GATEWAY_STATUS,
    ]
    for topic in built:
        assert sum(bool(p.match(topic)) for p in patterns) == 1, topic


def test_retained_exactly_where_design_says_and_commands_never() -> None:
    doc = document()
    retained = {
        op["channel"]["$ref"].rsplit("/", 1)[1]
        for op in doc["operations"].values()
        if op["bindings"]["mqtt"]["retain"]
    }
    assert retained == {"status", "store-config", "gateway-status"}
    assert all(op["bindings"]["mqtt"]["qos"] == 1 for op in doc["operations"].values())
    assert len(doc["operations"]) == len(doc["channels"])


def test_every_reference_resolves_and_payloads_describe_the_envelope() -> None:
    doc = json.loads(render())
    for ref in _refs(doc):
        _resolve(doc, ref)
    dropoff = doc["components"]["messages"]["dropoff"]["payload"]["allOf"]
    envelope = _resolve(doc, dropoff[0]["$ref"])
    assert {"id", "type", "store", "device", "seq", "session", "ts", "body"} <= set(
        envelope["properties"]
    )
    body = _resolve(doc, envelope["properties"]["body"]["$ref"])
    assert "return_id" in body["required"]
    assert dropoff[1] == {"properties": {"type": {"const": "dropoff"}}}
