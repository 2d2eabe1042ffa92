"""What every console script shares: ``--version``, one log format, one line for a port in use."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Any, Callable, NoReturn, TypeVar

from schooner import __version__

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
# Every HTTP answer of a Schooner process names its pid, so a readiness check knows the answer came
# from the process it started and not from another server on the port.
PID_HEADER = "Schooner-Pid"

T = TypeVar("T")


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``<prog> <version>`` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the program's version and exit")


def setup_logging(level: str | int = "INFO") -> None:
    """Log to stderr in the one format every Schooner process uses."""
    if isinstance(level, str):
        level = level.upper()
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)


async def add_pid_header(request: Any, response: Any) -> None:
    """aiohttp ``on_response_prepare`` hook: the :data:`PID_HEADER` on every answer."""
    response.headers[PID_HEADER] = str(os.getpid())


def is_port_in_use(err: BaseException) -> bool:
    """Whether ``err`` (an OSError, or pyzmq's ZMQError) says the address is already in use."""
    return getattr(err, "errno", None) == errno.EADDRINUSE


def port_in_use_exit(prog: str, err: BaseException) -> NoReturn:
    """Say in one line which address is taken, and exit with status 2 (no traceback)."""
    print(f"{prog}: cannot listen: {err} (another process holds the port; `schooner status` "
          "shows a running Schooner, or pick another port)", file=sys.stderr, flush=True)
    sys.exit(2)


def run_listening(prog: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, turning "address already in use" into :func:`port_in_use_exit`."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - only the port-in-use case is ours; the rest re-raise
        if is_port_in_use(err):
            port_in_use_exit(prog, err)
        raise
