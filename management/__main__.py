"""``python -m management``: the management service (REST admin API, replica manager)."""

from __future__ import annotations

import asyncio
import logging
import signal

from management.config import ServiceConfig, parse_args
from management.service import serve


async def _run(config: ServiceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(config, stop)


def main(argv: list[str] | None = None) -> None:
    """Parse flags and run the service until SIGINT or SIGTERM."""
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(config))


if __name__ == "__main__":
    main()
