"""Schooner's query frontend, wire protocol and client library.

Importing this package needs only numpy, pyzmq and msgpack (replica images have no
more); the server modules that need orjson and httptools are imported by the frontend process.
"""

from schooner.errors import (BadInput, ModelError, NoModel, Overloaded, ProtocolError, ReplicaLost,
                             SchoonerError, ShuttingDown, UnknownApp)
from schooner.types import AppSpec, DeploymentState, InputType, ModelSpec, ReplicaInfo, ReplicaState

__all__ = [
    "AppSpec", "BadInput", "DeploymentState", "InputType", "ModelError", "ModelSpec", "NoModel",
    "Overloaded", "ProtocolError", "ReplicaInfo", "ReplicaLost", "ReplicaState", "SchoonerError",
    "ShuttingDown", "UnknownApp",
]
