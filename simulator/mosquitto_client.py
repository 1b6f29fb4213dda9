"""A thin binding to libmosquitto, Mosquitto's own C client library, for load kiosks.

The load benchmarks need publishers that cost far less than the gateway they load: paho-mqtt
spends tens of microseconds of Python per QoS 1 publish and PUBACK, so Python publishers on
these two cores top out near the rate they are meant to test (DESIGN §9: "the Python client
is always the bottleneck"). Through libmosquitto the packets are built, sent and
acknowledged by C threads outside the GIL; Python only hands over prepared payloads and
reads the gateway's acks. ``ctypes`` releases the GIL for the length of every call.

Only what the load kiosks use is bound. The library comes with Debian's ``libmosquitto1``
(a dependency of ``mosquitto-clients``); :func:`available` says whether it is there.
"""

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable
from typing import Any

MOSQ_ERR_SUCCESS = 0
_LIBRARY_NAMES = ("libmosquitto.so.1", "libmosquitto.so")


class MosquittoError(RuntimeError):
    """A libmosquitto call that returned an error code."""


class _Message(ctypes.Structure):
    _fields_ = [
        ("mid", ctypes.c_int),
        ("topic", ctypes.c_char_p),
        ("payload", ctypes.c_void_p),
        ("payloadlen", ctypes.c_int),
        ("qos", ctypes.c_int),
        ("retain", ctypes.c_bool),
    ]


_CONNECT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_SUBSCRIBE_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
)
_MESSAGE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_Message))
_PUBLISH_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


@functools.cache
def _load() -> ctypes.CDLL:
    """libmosquitto, loaded and initialised once per process."""
    names = [*_LIBRARY_NAMES, ctypes.util.find_library("mosquitto")]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        lib.mosquitto_lib_init()
        return lib
    raise MosquittoError("libmosquitto not found (Debian: apt-get install libmosquitto1)")


def _declare(lib: ctypes.CDLL) -> None:
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "mosquitto_lib_init": (i, []),
        "mosquitto_new": (p, [s, ctypes.c_bool, p]),
        "mosquitto_destroy": (None, [p]),
        "mosquitto_max_inflight_messages_set": (i, [p, ctypes.c_uint]),
        "mosquitto_connect": (i, [p, s, i, i]),
        "mosquitto_disconnect": (i, [p]),
        "mosquitto_loop_start": (i, [p]),
        "mosquitto_loop_stop": (i, [p, ctypes.c_bool]),
        "mosquitto_publish": (i, [p, ctypes.POINTER(i), s, i, p, i, ctypes.c_bool]),
        "mosquitto_subscribe": (i, [p, ctypes.POINTER(i), s, i]),
        "mosquitto_connect_callback_set": (None, [p, _CONNECT_CB]),
        "mosquitto_subscribe_callback_set": (None, [p, _SUBSCRIBE_CB]),
        "mosquitto_message_callback_set": (None, [p, _MESSAGE_CB]),
        "mosquitto_publish_callback_set": (None, [p, _PUBLISH_CB]),
        "mosquitto_strerror": (s, [i]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


def available() -> bool:
    """Whether libmosquitto can be loaded here."""
    try:
        _load()
    except MosquittoError:
        return False
    return True


class MosquittoClient:
    """One MQTT 3.1.1 connection with libmosquitto's network thread. Callbacks run on that
    thread; ``publish`` may be called from any thread."""

    def __init__(
        self,
        client_id: str,
        *,
        max_inflight: int = 20,
        on_message: Callable[[str, bytes], None] | None = None,
        on_publish: Callable[[int], None] | None = None,
    ) -> None:
        self._lib = _load()
        self._handle = self._lib.mosquitto_new(client_id.encode(), True, None)
        if not self._handle:
            raise MosquittoError("mosquitto_new failed")
        self._check(self._lib.mosquitto_max_inflight_messages_set(self._handle, max_inflight))
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        # ctypes callbacks must outlive the client: keep references on the instance.
        self._callbacks: list[Any] = [
            _CONNECT_CB(lambda _m, _o, rc: self._connected(rc)),
            _SUBSCRIBE_CB(lambda *_: self.subscribed.set()),
        ]
        self._lib.mosquitto_connect_callback_set(self._handle, self._callbacks[0])
        self._lib.mosquitto_subscribe_callback_set(self._handle, self._callbacks[1])
        if on_message is not None:
            self._callbacks.append(_MESSAGE_CB(_message_adapter(on_message)))
            self._lib.mosquitto_message_callback_set(self._handle, self._callbacks[-1])
        if on_publish is not None:
            self._callbacks.append(_PUBLISH_CB(lambda _m, _o, mid: on_publish(mid)))
            self._lib.mosquitto_publish_callback_set(self._handle, self._callbacks[-1])
        self._mid = ctypes.c_int(0)

    def _connected(self, rc: int) -> None:
        if rc == 0:
            self.connected.set()

    def _check(self, rc: int) -> None:
        if rc != MOSQ_ERR_SUCCESS:
            reason = self._lib.mosquitto_strerror(rc) or b"unknown error"
            raise MosquittoError(reason.decode())

    def connect(self, host: str, port: int, keepalive: int = 60) -> None:
        """Connect and start the network thread; :attr:`connected` is set on CONNACK."""
        self._check(self._lib.mosquitto_connect(self._handle, host.encode(), port, keepalive))
        self._check(self._lib.mosquitto_loop_start(self._handle))

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe; :attr:`subscribed` is set on SUBACK."""
        self._check(self._lib.mosquitto_subscribe(self._handle, None, topic.encode(), qos))

    def publish(self, topic: bytes, payload: bytes, qos: int = 1) -> int:
        """Queue a publish (the network thread sends it); returns its packet id."""
        self._check(
            self._lib.mosquitto_publish(
                self._handle, ctypes.byref(self._mid), topic, len(payload), payload, qos, False
            )
        )
        return self._mid.value

    def close(self) -> None:
        """Disconnect, stop the network thread and free the client."""
        self._lib.mosquitto_disconnect(self._handle)
        self._lib.mosquitto_loop_stop(self._handle, False)
        self._lib.mosquitto_destroy(self._handle)
        self._handle = None


def _message_adapter(
    on_message: Callable[[str, bytes], None],
) -> Callable[[Any, Any, Any], None]:
    def adapter(_mosq: Any, _obj: Any, message: Any) -> None:
        m = message.contents
        on_message((m.topic or b"").decode(), ctypes.string_at(m.payload, m.payloadlen))

    return adapter
