"""The merchant API over loopback HTTP on this machine: authorizing returns with a tenant key,
reading one (tenant key, checked against the database, versus the operator key), and paging
through the listing.

    .venv/bin/python bench/api.py [--returns 300] [--concurrency 8] [--database URL]

The last line is one JSON object (rates ``*_per_s``, latencies ``*_ms``). The gateway renders
and sends each new return's voucher e-mail and SMS (QR codes) in the same process, against
the simulated mail and SMS servers: most of an authorize's cost here is that, not the API.
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

from dropline.system import LocalSystem, SystemOptions


async def _timed_get(session: aiohttp.ClientSession, path: str, times: int) -> list[float]:
    latencies = []
    for _ in range(times):
        started = time.perf_counter()
        async with session.get(path) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _creates(system: LocalSystem, n: int, concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await system.authorize_return(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - started)


async def _pages(system: LocalSystem, limit: int) -> tuple[int, float]:
    pages, cursor = 0, ""
    started = time.perf_counter()
    while True:
        async with system.http.get(f"/v1/returns?limit={limit}{cursor}") as resp:
            page: dict[str, Any] = await resp.json()
        pages += 1
        if page["next_cursor"] is None:
            return pages, pages / (time.perf_counter() - started)
        cursor = f"&cursor={page['next_cursor']}"


async def main(returns: int, concurrency: int, database: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        system = LocalSystem(Path(workdir), SystemOptions(kiosks_per_store=0, database=database))
        await system.start()
        try:
            rate = await _creates(system, returns, concurrency)
            print(f"authorize: {rate:.0f}/s")
            some = (await system.http.get("/v1/returns?limit=1")).json()
            return_id = (await some)["returns"][0]["id"]
            tenant = await _timed_get(system.http, f"/v1/returns/{return_id}", 200)
            operator = await _timed_get(system.operator, f"/v1/returns/{return_id}", 200)
            pages, pages_per_s = await _pages(system, 50)
            print(f"{pages} pages of 50: {pages_per_s:.0f} pages/s")
        finally:
            await system.stop()
    return {
        "authorize_per_s": round(rate, 1),
        "get_tenant_key_p50_ms": round(statistics.median(tenant), 2),
        "get_operator_key_p50_ms": round(statistics.median(operator), 2),
        "list_pages_of_50_per_s": round(pages_per_s, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--returns", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.returns, args.concurrency, args.database))))
