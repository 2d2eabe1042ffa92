"""The events every store write publishes, and which of them change what the frontend serves."""

from __future__ import annotations

import enum


class EventKind(str, enum.Enum):
    """The ``kind`` of an event on the events channel."""

    APP_ADDED = "app_added"
    APP_DELETED = "app_deleted"
    MODEL_ADDED = "model_added"
    MODEL_DELETED = "model_deleted"
    MODEL_UPDATED = "model_updated"
    VERSION_SET = "current_version_set"
    LINKS_ADDED = "links_added"
    LINKS_DELETED = "links_deleted"
    REPLICA_PUT = "replica_put"
    REPLICA_DELETED = "replica_deleted"
    DESIRED_SET = "desired_set"
    DESIRED_DELETED = "desired_deleted"


# Events that do not change what the frontend serves (DeploymentState); followers skip them.
_NON_STATE_KINDS = frozenset({EventKind.REPLICA_PUT, EventKind.REPLICA_DELETED,
                              EventKind.DESIRED_SET, EventKind.DESIRED_DELETED})


def changes_state(event: dict) -> bool:
    """Whether an event may change the DeploymentState (unknown kinds: assume yes)."""
    return event.get("kind") not in {k.value for k in _NON_STATE_KINDS}
