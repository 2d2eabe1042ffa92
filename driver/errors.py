"""Errors of the driver: refused sweeps, failed deployments, failed measurements."""

from __future__ import annotations

from schooner.errors import SchoonerError


class DriverError(Exception):
    """Base of every error the driver raises on purpose."""


class ImpossibleSweep(DriverError):
    """The requested sweep cannot run on this machine (checked before anything starts)."""


class DeployError(DriverError):
    """The management service refused or failed a deployment call."""

    def __init__(self, message: str, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class ResultsError(DriverError):
    """A results directory or file is missing or not a driver results file."""


class DriverBacklog(SchoonerError):
    """The driver itself could not keep up with an open-loop rate; counted as a failed query."""

    code = "driver_backlog"
