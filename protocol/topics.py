"""The MQTT topic layout of DESIGN §4: builders, subscription filters and a parser."""

from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache

from protocol.errors import BadTopic
from protocol.ids import is_valid_id

ROOT = "dropline/v1"
GATEWAY_STATUS = f"{ROOT}/gateway/status"


class Channel(StrEnum):
    """The per-device channels under ``dropline/v1/{store}/{device}/``."""

    EVT = "evt"
    ACK = "ack"
    CMD = "cmd"
    CMD_RES = "cmd_res"
    STATUS = "status"


def _checked(store: str, device: str | None = None) -> None:
    if not is_valid_id(store):
        raise BadTopic(f"invalid store id {store!r}")
    if device is not None and not is_valid_id(device):
        raise BadTopic(f"invalid device id {device!r}")


def event(store: str, device: str, event_type: str) -> str:
    """Kiosk → gateway: one event of ``event_type``."""
    _checked(store, device)
    return f"{ROOT}/{store}/{device}/evt/{event_type}"


def ack(store: str, device: str) -> str:
    """Gateway → kiosk: ids of events the gateway has committed."""
    _checked(store, device)
    return f"{ROOT}/{store}/{device}/ack"


def command(store: str, device: str, name: str) -> str:
    """Gateway → kiosk: a command. Never retained (DESIGN §5 rule 1)."""
    _checked(store, device)
    return f"{ROOT}/{store}/{device}/cmd/{name}"


def command_result(store: str, device: str) -> str:
    """Kiosk → gateway: a command's outcome."""
    _checked(store, device)
    return f"{ROOT}/{store}/{device}/cmd_res"


def status(store: str, device: str) -> str:
    """Kiosk presence: retained birth message, LWT sets offline."""
    _checked(store, device)
    return f"{ROOT}/{store}/{device}/status"


def store_config(store: str) -> str:
    """Gateway → kiosks of a store: the retained, versioned store config."""
    _checked(store)
    return f"{ROOT}/{store}/config"


# Subscription filters.
ALL_EVENTS = f"{ROOT}/+/+/evt/#"
ALL_COMMAND_RESULTS = f"{ROOT}/+/+/cmd_res"
ALL_STATUS = f"{ROOT}/+/+/status"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: each message goes to one member of ``group``."""
    return f"$share/{group}/{topic_filter}"


def device_inbox(store: str, device: str) -> list[str]:
    """What one kiosk subscribes to: its acks, its commands, its store's config, and the
    gateway's presence (so its screen can say when it works offline)."""
    return [
        ack(store, device),
        f"{ROOT}/{store}/{device}/cmd/+",
        store_config(store),
        GATEWAY_STATUS,
    ]


@dataclass(frozen=True)
class ParsedTopic:
    """A topic taken apart. ``leaf`` is the event type or command name, when there is one."""

    store: str
    device: str | None
    channel: str
    leaf: str | None = None

    @cached_property  # parsed topics are cached and asked for every message
    def message_type(self) -> str | None:
        """The envelope ``type`` a message on this topic must have."""
        if self.channel in (Channel.EVT, Channel.CMD):
            return self.leaf
        return _CHANNEL_TYPES.get(self.channel)


_CHANNEL_TYPES = {
    Channel.ACK: "ack",
    Channel.CMD_RES: "cmd_result",
    Channel.STATUS: "status",
    "config": "store_config",
}


@lru_cache(maxsize=65_536)
def parse(topic: str) -> ParsedTopic:
    """Take a ``dropline/v1`` topic apart, or raise :class:`BadTopic`. (Cached: a fleet
    sends on a few topics per kiosk.)"""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise BadTopic(f"not a {ROOT} topic: {topic!r}")
    rest = parts[2:]
    if topic == GATEWAY_STATUS:
        return ParsedTopic(store="gateway", device=None, channel="gateway_status")
    if len(rest) == 2 and rest[1] == "config":
        _checked(rest[0])
        return ParsedTopic(store=rest[0], device=None, channel="config")
    if len(rest) < 3:
        raise BadTopic(f"unknown channel layout: {topic!r}")
    store, device, channel, *leaf = rest
    _checked(store, device)
    if channel in (Channel.EVT, Channel.CMD) and len(leaf) == 1 and leaf[0]:
        return ParsedTopic(store, device, channel, leaf[0])
    if channel in (Channel.ACK, Channel.CMD_RES, Channel.STATUS) and not leaf:
        return ParsedTopic(store, device, channel)
    raise BadTopic(f"unknown channel layout: {topic!r}")
