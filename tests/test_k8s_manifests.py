"""The Kubernetes manifests parse, and the commands they run take the flags they pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from frontend.__main__ import build_config, parse_args as frontend_args  # noqa: E402
from management.config import parse_args as management_args  # noqa: E402

DIR = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def _docs() -> list[dict]:
    return [d for p in sorted(DIR.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _container(kind: str, name: str) -> dict:
    doc = next(d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name)
    return doc["spec"]["template"]["spec"]["containers"][0]


def _expand(args: list[str]) -> list[str]:
    # Kubernetes substitutes $(VAR) from the container's env; any well-formed value will do here.
    values = {"POD_IP": "10.0.0.7", "REDIS_URL": "redis://:pw@schooner-redis:6379/0"}
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in args]


def test_every_manifest_names_its_kind_and_the_kustomization_lists_them():
    docs = _docs()
    assert all(d.get("apiVersion") and d.get("kind") for d in docs)
    assert all(d["metadata"].get("name") for d in docs if d["kind"] != "Kustomization")
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "StatefulSet", "Deployment", "Service", "Kustomization"} <= kinds
    listed = next(d for d in docs if d["kind"] == "Kustomization")["resources"]
    assert all((DIR / name).exists() for name in listed)


def test_frontend_and_management_take_the_flags_the_manifests_pass():
    fe = _container("Deployment", "schooner-frontend")
    assert fe["command"] == ["python", "-m", "frontend"]
    config = build_config(frontend_args(_expand(fe["args"])))
    assert config.host == "0.0.0.0" and config.advertise_host == "10.0.0.7"
    mgmt = _container("Deployment", "schooner-management")
    assert mgmt["command"] == ["python", "-m", "management"]
    service = management_args(_expand(mgmt["args"]))
    assert service.backend == "ray" and service.ray_address == "schooner-ray-head-svc:6379"
