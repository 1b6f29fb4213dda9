"""The ``dropline`` command: ``gateway``, ``edge``, ``demo``, ``scan`` and ``asyncapi``."""

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from gateway.config import RefundPolicy


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run returns from voucher to refund on this machine")
    demo.add_argument("--returns", type=_positive, default=20)
    demo.add_argument("--stores", type=_positive, default=1)
    demo.add_argument("--kiosks", type=_positive, default=2, help="kiosks per store")
    demo.add_argument(
        "--home-pickups", type=int, default=0, metavar="N",
        help="also N returns a courier collects at the customer's address (上门取件)",
    )  # fmt: skip
    demo.add_argument("--workdir", type=Path, help="keep databases and printed PNGs here")
    demo.add_argument(
        "--policy", choices=[p.value for p in RefundPolicy if p is not RefundPolicy.MANUAL],
        default=RefundPolicy.ON_RECEIPT.value, help="the merchant's refund policy",
    )  # fmt: skip

    scan = sub.add_parser("scan", help="decode barcode/QR images with the kiosk's decoder chain")
    scan.add_argument("images", nargs="+")

    asyncapi = sub.add_parser("asyncapi", help="write the MQTT contract as AsyncAPI 3.0 JSON")
    asyncapi.add_argument("--output", type=Path, help="file to write (default: stdout)")

    gateway = sub.add_parser("gateway", help="run the gateway")
    gateway.add_argument("--config", type=Path, required=True, help="gateway TOML file")

    edge = sub.add_parser("edge", help="run a kiosk's edge agent")
    edge.add_argument("--config", type=Path, required=True, help="edge TOML file")
    return parser


async def _serve_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()


def _run_gateway(config_path: Path) -> int:
    from gateway.config import GatewayConfig
    from gateway.service import Gateway

    gateway = Gateway(GatewayConfig.load(config_path))
    asyncio.run(_serve_until_signal(gateway.start, gateway.stop))
    return 0


def _run_edge(config_path: Path) -> int:
    from edge.agent import EdgeAgent
    from edge.config import EdgeConfig
    from edge.devices import build_devices

    config = EdgeConfig.load(config_path)
    agent = EdgeAgent(config, build_devices(config))
    asyncio.run(_serve_until_signal(agent.start, agent.stop))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run a subcommand; returns the exit code."""
    args = _parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "scan":
        from dropline.scan import run_scan

        return run_scan(args.images, sys.stdout)
    if args.command == "asyncapi":
        from protocol.asyncapi import render

        if args.output is None:
            sys.stdout.write(render())
        else:
            args.output.write_text(render(), encoding="utf-8")
        return 0
    if args.command == "demo":
        from dropline.demo import DemoOptions
        from dropline.demo import main as demo_main

        options = DemoOptions(
            returns=args.returns,
            stores=args.stores,
            kiosks=args.kiosks,
            home_pickups=max(0, args.home_pickups),
            workdir=args.workdir,
            policy=RefundPolicy(args.policy),
        )
        return demo_main(options)
    if args.command == "gateway":
        return _run_gateway(args.config)
    return _run_edge(args.config)


if __name__ == "__main__":
    sys.exit(main())
