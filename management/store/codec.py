"""Encoding of specs into Redis hash fields and back, and validation of names used in keys."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from typing import Any

from schooner.types import AppSpec, ModelSpec
from management.errors import BadRequest

# Names become parts of Redis keys and "name:version" set members: no ':' or glob characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(value: Any, what: str) -> str:
    """Validate an app/model name or version; BadRequest naming ``what``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise BadRequest(f"{what} must be 1-128 letters, digits, '_', '.', '-' "
                         f"(starting with a letter or digit), got {value!r}")
    return value


def text(value: Any) -> str:
    """A str from a Redis reply that may be bytes."""
    return value.decode() if isinstance(value, bytes) else value


def _field_kinds(cls: type) -> dict[str, str]:
    """'str', 'int', 'float' or 'json' for each field, from its default's type."""
    kinds = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            sample = f.default
        elif f.default_factory is not dataclasses.MISSING:
            sample = f.default_factory()
        else:
            sample = ""  # required fields (name, version, input_type) are strings
        if isinstance(sample, (str, enum.Enum)):
            kinds[f.name] = "str"
        elif isinstance(sample, bool) or sample is None or isinstance(sample, (list, dict)):
            kinds[f.name] = "json"
        elif isinstance(sample, int):
            kinds[f.name] = "int"
        elif isinstance(sample, float):
            kinds[f.name] = "float"
        else:
            kinds[f.name] = "json"
    return kinds


APP_KINDS = _field_kinds(AppSpec)
MODEL_KINDS = _field_kinds(ModelSpec)


def encode_spec(spec: Any, kinds: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, kind in kinds.items():
        value = getattr(spec, name)
        if isinstance(value, enum.Enum):
            value = value.value
        out[name] = json.dumps(value) if kind == "json" else str(value)
    return out


def decode_spec(cls: type, raw: dict, kinds: dict[str, str]) -> Any:
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        key, value = text(key), text(value)
        kind = kinds.get(key)
        if kind is None:
            continue  # a field written by a newer Schooner
        fields[key] = {"str": str, "int": int, "float": float, "json": json.loads}[kind](value)
    return cls(**fields)


def version_order(version: str) -> tuple:
    """Sort key: numeric parts numerically, so '10' comes after '9'."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", version))
