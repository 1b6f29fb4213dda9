"""Throughput of the outbound side on this machine: state-machine transitions with their
outbox writes, webhook deliveries, customer messages and refunds, each against the
simulated outside service on loopback.

    .venv/bin/python bench/outbound.py [--returns 400] [--database URL]

The last line is one JSON object (rates ``*_per_s``, latencies ``*_ms``).
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway import refunds, webhooks
from gateway.authorization import ReturnRequest, authorize
from gateway.config import (
    ConsolidationRules,
    MerchantSettings,
    NotificationSettings,
    RefundPolicy,
    SmsWebhookSettings,
    SmtpSettings,
    WebhookSettings,
)
from gateway.database import Database, open_database
from gateway.dropoffs import DropoffDesk
from gateway.keys import SigningKeys
from gateway.notifications import NotificationDispatcher, Renderer
from gateway.notifiers.registry import make_notifiers
from gateway.payments.stripe_like import StripeLikeRefunds
from gateway.refunds import RefundDesk
from gateway.returns import Cause, CauseKind, ReturnState, move
from gateway.webhooks import WebhookDispatcher
from protocol import envelope
from protocol.messages import Dropoff, DropoffMethod
from simulator.merchant_system import MerchantSystemSimulator
from simulator.payments import PaymentsSimulator
from simulator.sms import SmsGatewaySimulator
from simulator.smtp import SmtpServerSimulator


async def _seed(db: Database) -> SigningKeys:
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO merchants (id, name, refund_policy, currency) "
            "VALUES ('acme', 'ACME', 'on_dropoff', 'CNY')"
        )
        await tx.execute("INSERT INTO stores (id, name) VALUES ('store-1', 'Store 1')")
    await refunds.configure(
        db, [MerchantSettings(id="acme", name="ACME", refund_policy=RefundPolicy.ON_DROPOFF)]
    )
    return await SigningKeys.load_or_create(db)


def _request(n: int) -> ReturnRequest:
    return ReturnRequest.model_validate(
        {
            "order_id": f"o-{n}",
            "items": [{"sku": "A"}],
            "reason": "r",
            "refund": {"amount_minor": 1000 + n, "currency": "CNY"},
            "customer": {"name": f"S {n}", "email": f"s{n}@example.test", "phone": f"+86{n:09d}"},
            "stores": ["store-1"],
        }
    )


async def _batched_dropoffs(db: Database, return_ids: list[str], batch: int = 100) -> float:
    """Drop-offs through the batched ingest handler (``gateway/dropoffs.py``), ``batch`` per
    transaction, each with its webhook, two customer messages and its refund row."""
    desk = DropoffDesk(ConsolidationRules(max_items=50, daily_cutoff=None))
    events = [
        envelope.make(
            Dropoff(return_id=r, merchant="acme", method=DropoffMethod.LOCKER, size="M",
                    items=1, voucher_kid="k", scanned_at=time.time(), accepted_at=time.time()),
            store="store-1", device="kiosk-1", seq=n + 1, session=1,
        )
        for n, r in enumerate(return_ids)
    ]  # fmt: skip
    t0 = time.perf_counter()
    for start in range(0, len(events), batch):
        async with db.transaction() as tx:
            await desk.apply(tx, events[start : start + batch])
    return len(events) / (time.perf_counter() - t0)


async def _drain(work: Any) -> tuple[int, float]:
    started = time.perf_counter()
    done = 0
    while n := await work():
        done += n
    return done, time.perf_counter() - started


async def run(returns: int, url: str) -> dict[str, float]:
    """Measure and return the numbers."""
    db = await open_database(url)
    keys = await _seed(db)
    merchant = MerchantSystemSimulator("x" * 32)
    payments, smtp = PaymentsSimulator("sk"), SmtpServerSimulator()
    sms = SmsGatewaySimulator("y" * 32)
    merchant_url, payments_url = await merchant.start(), await payments.start()
    smtp_port, sms_url = await smtp.start(), await sms.start()
    endpoint = await webhooks.register_endpoint(db, "acme", merchant_url + "/webhooks", [])
    merchant.webhook_secrets = [endpoint.secret or ""]
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        ids = [
            await authorize(db, keys, _request(n), default_ttl_s=86_400, tenant="acme")
            for n in range(returns)
        ]
        out["authorize_per_s"] = returns / (time.perf_counter() - t0)
        half = returns // 2
        t0 = time.perf_counter()
        for return_id in ids[:half]:
            async with db.transaction() as tx:
                await move(tx, return_id, ReturnState.DROPPED_OFF, Cause(CauseKind.EVENT, "b"))
        out["dropoff_transitions_per_s"] = half / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for return_id in ids[:half]:  # a transition that sends nothing: the baseline
            async with db.transaction() as tx:
                await move(tx, return_id, ReturnState.IN_TOTE, Cause(CauseKind.EVENT, "b"))
        out["quiet_transitions_per_s"] = half / (time.perf_counter() - t0)
        out["batched_dropoffs_per_s"] = await _batched_dropoffs(db, ids[half:])
        async with aiohttp.ClientSession() as session:
            hooks = WebhookDispatcher(db, session, WebhookSettings())
            n, seconds = await _drain(hooks.process_due)
            out["webhook_deliveries_per_s"] = n / seconds
            desk = RefundDesk(db, {"stripe": StripeLikeRefunds(payments_url, "sk", session)})
            n, seconds = await _drain(desk.process_due)
            out["refunds_per_s"] = n / seconds
            settings = NotificationSettings(
                smtp=SmtpSettings(port=smtp_port),
                sms=SmsWebhookSettings(url=sms_url, secret="y" * 32),
            )
            notifier = NotificationDispatcher(
                db, make_notifiers(settings, session), Renderer("http://g"), settings
            )
            n, seconds = await _drain(notifier.process_due)
            out["notifications_per_s"] = n / seconds
        latencies = [
            float(r[0]) for r in await db.fetchall("SELECT latency_ms FROM webhook_attempts")
        ]
        out["webhook_attempt_p50_ms"] = statistics.median(latencies)
        out["ratio_refunds_paid_once"] = sum(payments.refund_count(r) == 1 for r in ids) / len(ids)
    finally:
        for sim in (merchant, payments, smtp, sms):
            await sim.stop()
        await db.close()
    return out


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--returns", type=int, default=600)
    parser.add_argument("--database", help="a postgresql:// URL; default a SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or str(Path(tmp) / "bench.sqlite3")
        result = asyncio.run(run(args.returns, url))
    for key, value in result.items():
        print(f"{key:28} {value:10.1f}")
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))


if __name__ == "__main__":
    main()
