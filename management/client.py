"""A client of the management REST API that sends the admin token; and ``deploy``, one call to serve a model.

``deploy("iris", "model.joblib")`` uploads the file, registers the app and the
model version, links them and starts the replicas, then waits until they serve
(or says why not, e.g. the model version failed to load). ``schooner deploy``
is the same from the command line.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from typing import Any

import requests

from management import admin_token
from management.errors import ManagementError
from schooner import defaults

HTTP_TIMEOUT_S = 60.0
# Launchers by the extension of a model file; a directory holding model.py is "model-dir".
_BY_EXTENSION = {".joblib": "sklearn", ".pkl": "sklearn", ".pickle": "sklearn", ".txt": "lightgbm",
                 ".lgb": "lightgbm", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript",
                 ".onnx": "onnx", ".cloudpickle": "python-closure", ".closure": "python-closure"}


class AdminError(ManagementError):
    """The management service answered an error (its status, code and message), or could not be reached."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code or "unreachable"


def infer_launcher(path: str) -> str:
    """The launcher for a model file or directory, from its extension or its model.py; "" if unknown."""
    if os.path.isdir(path):
        return "model-dir" if os.path.isfile(os.path.join(path, "model.py")) else ""
    return _BY_EXTENSION.get(os.path.splitext(path)[1].lower(), "")


class AdminClient:
    """Calls ``<url>/admin/...`` with the admin token (found as :func:`admin_token.discover` says)."""

    def __init__(self, url: str = f"http://{defaults.HOST}:{defaults.MANAGEMENT_PORT}", token: str | None = None,
                 timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.url = (url if url.startswith(("http://", "https://")) else "http://" + url).rstrip("/")
        self.token = admin_token.discover() if token is None else token
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if self.token:
            self._session.headers["Authorization"] = f"Bearer {self.token}"

    def post(self, path: str, body: dict | None = None, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """POST ``body`` as JSON to ``/admin/<path>``; the decoded answer (text for Clipper's "Success!")."""
        url = f"{self.url}/admin/{path.lstrip('/').removeprefix('admin/')}"
        try:
            resp = self._session.post(url, json=body, timeout=timeout_s or self.timeout_s, **kwargs)
        except requests.RequestException as err:
            raise AdminError(f"cannot reach the management service at {self.url}: {err}") from err
        if resp.status_code != 200:
            try:
                info = resp.json()
            except ValueError:
                info = {"message": resp.text}
            raise AdminError(f"{path}: HTTP {resp.status_code}: {info.get('message', resp.text)}",
                             resp.status_code, str(info.get("error", "")))
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def upload(self, name: str, version: str, path: str) -> str:
        """Upload a model file or directory (as a tar.gz); the model_data_path to register it with."""
        if os.path.isdir(path):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(path, arcname=os.path.basename(os.path.normpath(path)) or "model",
                        filter=_no_links)
            data, filename = buf.getvalue(), "model.tar.gz"
        else:
            with open(path, "rb") as fh:
                data = fh.read()
            filename = os.path.basename(path)
        answer = self.post("upload_model", None, params={"model_name": name, "model_version": version,
                                                         "filename": filename}, data=data)
        return answer["model_data_path"]

    def close(self) -> None:
        self._session.close()


def _no_links(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return info if info.isfile() or info.isdir() else None


@dataclass
class Deployment:
    """What ``deploy`` set up."""

    app: str
    model: str
    version: str
    launcher: str
    model_data_path: str
    replicas: list[dict]


def deploy(name: str, path: str = "", *, launcher: str = "", version: str = "1", input_type: str = "floats",
           slo_ms: float = 100.0, replicas: int = 1, cpus_per_replica: int = 1, model_opts: dict | None = None,
           default_output: str = defaults.DEFAULT_OUTPUT, batch_size: int | None = None, upload: bool = True,
           wait_s: float = 120.0, management_url: str = f"http://{defaults.HOST}:{defaults.MANAGEMENT_PORT}",
           token: str | None = None) -> Deployment:
    """Serve the model at ``path`` as app and model ``name``; AdminError naming the step that failed.

    ``upload`` sends the file (or directory) to the management service, so it
    needs no shared filesystem; without it, ``path`` must lie in a model root.
    An app or model version that exists already is kept.
    """
    if path and not launcher:
        launcher = infer_launcher(path)
        if not launcher:
            raise ValueError(f"cannot tell the launcher of {path!r} from its name; pass launcher= "
                             f"(one of {', '.join(sorted(set(_BY_EXTENSION.values())))}, model-dir, ...)")
    if not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas must be an integer >= 0, got {replicas!r}")
    client = AdminClient(management_url, token)
    try:
        data_path = path
        if path and upload:
            try:
                data_path = client.upload(name, str(version), path)
            except AdminError as err:
                if err.code != "conflict":
                    raise
                data_path = ""  # uploaded before: the registered version keeps its files
        _kept(client, "add_app", {"name": name, "input_type": input_type, "default_output": default_output,
                                  "latency_slo_micros": int(slo_ms * 1000)})
        body: dict[str, Any] = {"model_name": name, "model_version": str(version), "input_type": input_type,
                                "launcher": launcher or name, "model_data_path": data_path,
                                "model_opts": model_opts or {}, "cpus_per_replica": cpus_per_replica}
        if batch_size is not None:
            body["batch_size"] = batch_size
        _kept(client, "add_model", body)
        _kept(client, "add_model_links", {"app_name": name, "model_names": [name]})
        started = client.post("set_num_replicas", {"model_name": name, "model_version": str(version),
                                                   "num_replicas": replicas, "cpus_per_replica": cpus_per_replica,
                                                   "wait_s": wait_s}, timeout_s=wait_s + HTTP_TIMEOUT_S)
        return Deployment(name, name, str(version), launcher or name, data_path, started)
    finally:
        client.close()


def _kept(client: AdminClient, path: str, body: dict) -> None:
    """A registry write where "exists already" (409) is fine."""
    try:
        client.post(path, body)
    except AdminError as err:
        if err.status != 409:
            raise
