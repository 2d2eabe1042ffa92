"""CURVE key issuance: the one place the manager makes, hands out and revokes replica keys.

Each replica start gets a fresh key pair, written ``0600`` under
``<state_dir>/keys/replicas/<replica_id>.key_secret``; its public half goes
into the replica's Redis record (and the ``replica_keys`` index), which the
frontends follow, so a replica's key is registered before its process starts.
Backends hand the pair to the replica through the environment: the file's path
for a local process, the secret itself for a container (the Docker API carries
it, never a command line). Stopping a replica for good deletes its file and
record, which revokes the key.

The frontend's key pair lives next to them (``<state_dir>/keys/frontend.key_secret``);
every frontend of a deployment uses it, so one replica key works with all of them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from schooner import curve
from schooner.curve import KeyPair

log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")


def keys_dir(state_dir: str | os.PathLike) -> Path:
    """Where a deployment keeps its CURVE keys."""
    return Path(state_dir) / "keys"


def frontend_key_file(state_dir: str | os.PathLike) -> Path:
    """The frontend's key pair file of a deployment."""
    return keys_dir(state_dir) / "frontend.key_secret"


def frontend_pair(state_dir: str | os.PathLike) -> KeyPair:
    """The deployment's frontend key pair, made (0600) on first use."""
    return curve.load_or_create(frontend_key_file(state_dir))


class KeyIssuer:
    """Issues and revokes replica key pairs; knows the frontend's public key to give them."""

    def __init__(self, state_dir: str | os.PathLike, server_key: str) -> None:
        self.dir = keys_dir(state_dir) / "replicas"
        self.server_key = curve.check_public_key(server_key, "the frontend's public key")

    def path(self, replica_id: str) -> Path:
        """The key file of ``replica_id``."""
        if not _SAFE_ID.match(replica_id):
            raise ValueError(f"replica id {replica_id!r} cannot name a key file")
        return self.dir / f"{replica_id}.key_secret"

    def issue(self, replica_id: str) -> tuple[KeyPair, Path]:
        """A fresh key pair for ``replica_id`` (replacing an earlier one), and its file."""
        pair = KeyPair.generate()
        path = curve.write_key_file(self.path(replica_id), pair)
        return pair, path

    def revoke(self, replica_id: str) -> None:
        """Delete ``replica_id``'s key file (its record, deleted by the caller, unregisters the key)."""
        try:
            self.path(replica_id).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not delete the key file of replica %s: %s", replica_id, err)
