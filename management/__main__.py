"""``python -m management``: the management service (REST admin API, replica manager)."""

from __future__ import annotations

import asyncio
import signal

from management.config import ServiceConfig, parse_args
from management.service import serve
from schooner.cli import run_listening, setup_logging


async def _run(config: ServiceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop)


def main(argv: list[str] | None = None) -> None:
    """Parse flags and run the service until SIGINT or SIGTERM."""
    config = parse_args(argv)
    setup_logging(config.log_level)
    run_listening("schooner-management", asyncio.run, _run(config))


if __name__ == "__main__":
    main()
