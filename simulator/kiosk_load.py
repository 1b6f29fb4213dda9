"""Many kiosks' drop-off traffic without the kiosks: each simulated kiosk is its own MQTT
connection (QoS 1) that publishes prepared drop-off events in ``seq`` order, keeps at most
``window`` of them unacknowledged by the gateway (as a kiosk's outbox does) and records, for
each, the time from publish to the gateway's ack.

The connections live in a small C program, ``simulator/load_kiosks.c`` (libmosquitto, one
thread polling every connection; ADR 0019), so that the load costs a few microseconds of CPU
per event instead of stealing the cores from the gateway it loads. Python prepares the
events, streams them to the program and reads back what each kiosk saw; the program is
compiled on first use into a cache (it needs a C compiler and Debian's ``libmosquitto-dev``).
The benchmarks run one program per worker process, each started by :func:`run_kiosks`.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from protocol import envelope, topics
from protocol.messages import Dropoff, DropoffMethod

SOURCE = Path(__file__).with_name("load_kiosks.c")


class LoadKioskError(RuntimeError):
    """The load kiosks' program could not be built, or failed (its stderr says why)."""


@dataclass(frozen=True)
class KioskPlan:
    """One kiosk's traffic: who it is and the returns it accepts, in order."""

    store: str
    device: str
    merchant: str
    return_ids: Sequence[str]
    session: int = 1


@dataclass
class KioskResult:
    """What one kiosk saw. Without a gateway, ``acked`` counts the broker's PUBACKs and
    there are no latencies."""

    published: int = 0
    acked: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_publish: float = 0.0
    last_ack: float = 0.0


def prepare(plan: KioskPlan) -> list[tuple[str, str, bytes]]:
    """The kiosk's events, encoded ahead of time: ``(event id, topic, payload)``."""
    topic = topics.event(plan.store, plan.device, "dropoff")
    now = time.time()
    prepared = []
    for seq, return_id in enumerate(plan.return_ids, start=1):
        body = Dropoff(
            return_id=return_id,
            merchant=plan.merchant,
            method=DropoffMethod.LOCKER,
            compartment="A1",
            size="M",
            items=1,
            voucher_kid="k0000",
            scanned_at=now,
            accepted_at=now,
        )
        env = envelope.make(body, store=plan.store, device=plan.device, seq=seq, session=1)
        prepared.append((str(env.id), topic, envelope.encode(env)))
    return prepared


def program() -> Path:
    """The compiled load kiosks, built on first use into a cache named after the source's
    hash (built under a temporary name and renamed, so concurrent workers do not race)."""
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dropline"
    target = cache / f"load_kiosks-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    compiler = shutil.which("cc")
    if compiler is None:
        raise LoadKioskError("no C compiler for the load kiosks (Debian: apt-get install gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=target.name, dir=cache)
    os.close(fd)
    command = [compiler, "-O2", "-Wall", "-Wextra", "-o", temporary, str(SOURCE), "-lmosquitto"]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        os.unlink(temporary)
        hint = " (Debian: apt-get install libmosquitto-dev)" if "mosquitto" in built.stderr else ""
        raise LoadKioskError(f"building {SOURCE.name} failed{hint}:\n{built.stderr}")
    os.replace(temporary, target)
    return target


def _plan_text(plans: Sequence[KioskPlan]) -> bytes:
    """The program's stdin before ``go``: every kiosk's header and prepared events."""
    lines = [f"kiosks {len(plans)}\n".encode()]
    for plan in plans:
        events = prepare(plan)
        client_id = f"load-{plan.store}-{plan.device}"
        ack_topic = topics.ack(plan.store, plan.device)
        topic = topics.event(plan.store, plan.device, "dropoff")
        lines.append(f"kiosk {client_id} {topic} {ack_topic} {len(events)}\n".encode())
        for event_id, _, payload in events:
            if b"\n" in payload:  # compact JSON escapes newlines; the format relies on it
                raise ValueError(f"payload of {event_id} has a newline")
            lines.append(b"%s %s\n" % (event_id.encode(), payload))
    return b"".join(lines)


def run_kiosks(
    host: str,
    port: int,
    plans: Sequence[KioskPlan],
    *,
    window: int,
    gateway: bool = True,
    rate_per_kiosk: float = 0.0,
    ready: Callable[[], object] | None = None,
    hold: Callable[[], object] | None = None,
) -> list[KioskResult]:
    """Run ``plans`` concurrently, one connection each, in one load-kiosk program; returns
    their results. Each kiosk keeps at most ``window`` events unacked; paced at
    ``rate_per_kiosk`` events/s each, or as fast as acks allow. With ``gateway`` false there
    is no application ack: everything is published at once and libmosquitto keeps ``window``
    QoS 1 messages in flight to the broker (the raw broker rate, measured at the receiving
    end). ``ready`` (if given) is called once every kiosk is connected, to start together (a
    barrier's ``wait``); ``hold`` before disconnecting (without a gateway, until the receiver
    has everything: libmosquitto may still hold queued messages)."""
    plan_text = _plan_text(plans)
    mode = "gateway" if gateway else "raw"
    command = [str(program()), host, str(port), str(window), repr(rate_per_kiosk), mode]
    with (
        tempfile.TemporaryFile() as stderr,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        ) as process,
    ):
        assert process.stdin is not None and process.stdout is not None
        try:
            _send(process.stdin, plan_text)
            _expect(process.stdout, b"ready")
            if ready is not None:
                ready()
            _send(process.stdin, b"go\n")
            _expect(process.stdout, b"done")
            if hold is not None:
                hold()
            _send(process.stdin, b"stop\n")
            process.stdin.close()
            output = process.stdout.read()
            if process.wait() != 0:
                raise LoadKioskError(f"the load kiosks exited with {process.returncode}")
        except (LoadKioskError, BrokenPipeError) as exc:
            process.kill()
            process.wait()
            stderr.seek(0)
            message = stderr.read().decode(errors="replace").strip()
            raise LoadKioskError(message or str(exc)) from exc
    return _results(output, len(plans))


def _send(stdin: IO[bytes], data: bytes) -> None:
    stdin.write(data)
    stdin.flush()


def _expect(stdout: IO[bytes], line: bytes) -> None:
    got = stdout.readline()
    if got.rstrip(b"\n") != line:
        raise LoadKioskError(f"expected {line.decode()!r} from the load kiosks, got {got!r}")


def _results(output: bytes, kiosks: int) -> list[KioskResult]:
    """Parse the program's report: per kiosk a ``result`` line, then its latencies."""
    lines = output.decode().splitlines()
    results = []
    for header, latencies in zip(lines[0::2], lines[1::2], strict=True):
        tag, published, acked, first, last, count = header.split()
        result = KioskResult(
            published=int(published),
            acked=int(acked),
            latencies_s=[float(x) for x in latencies.split()],
            first_publish=float(first),
            last_ack=float(last),
        )
        if tag != "result" or len(result.latencies_s) != int(count):
            raise LoadKioskError(f"unreadable report from the load kiosks: {header!r}")
        results.append(result)
    if len(results) != kiosks:
        raise LoadKioskError(f"the load kiosks reported {len(results)} of {kiosks} kiosks")
    return results
