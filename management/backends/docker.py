"""Replica backend that runs each replica as a Docker container pinned to its cpuset.

One container per replica, on the host network (so the replica reaches the
frontend on 127.0.0.1), labelled so that :meth:`DockerBackend.list` finds every
container this backend started even after a restart of the management service.
Calls block; the replica manager runs them in threads.

Hardening: containers run as a non-root user (``SCHOONER_DOCKER_USER``, default
``65534:65534``, nobody) with ``HOME=/tmp``, no new privileges and every
capability dropped; the model roots (``SCHOONER_MODEL_ROOTS`` the manager passes)
are mounted read-only at the same paths and nothing else of the host is; and
only Schooner's images run (``schooner/...``, which includes the images
``schooner build-image`` makes) unless the operator allows others by prefix in
``SCHOONER_DOCKER_ALLOWED_IMAGES`` (comma-separated).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Mapping

import docker
import docker.errors
import docker.types

from schooner import curve, defaults, model_roots
from management.backends.base import LaunchSpec, RunningReplica, replica_args
from management.errors import BackendError

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "schooner/replica:latest"
CLASSIC_IMAGE = "schooner/replica-classic:latest"
TORCH_IMAGE = "schooner/replica-torch:latest"

# Which image carries each zoo model's dependencies; models not named here run on
# DEFAULT_IMAGE (numpy only: noop, sleep).
DEFAULT_IMAGES: dict[str, str] = {
    "lgbm": CLASSIC_IMAGE,
    "kpca-svm": CLASSIC_IMAGE,
    "kernel-svm": CLASSIC_IMAGE,
    "elastic-net": CLASSIC_IMAGE,
    "vgg": TORCH_IMAGE,
    "inception": TORCH_IMAGE,
    "resnet18": TORCH_IMAGE,
}

LABEL_PREFIX = "schooner."
USER = "65534:65534"  # nobody:nogroup
ALLOWED_IMAGE_PREFIXES = ("schooner/",)
NAMESPACE = "default"
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")

ImageFor = Callable[[str], str] | Mapping[str, str]


def container_name(spec: LaunchSpec, namespace: str = NAMESPACE) -> str:
    """``schooner-<model>-<version>-<id>`` (namespace inserted when not the default), Docker-safe."""
    parts = ["schooner"] + ([namespace] if namespace != NAMESPACE else [])
    parts += [spec.model_name, spec.model_version, spec.replica_id]
    return _NAME_UNSAFE.sub("_", "-".join(parts))


def replica_command(spec: LaunchSpec, gpu_in_container: int | None) -> list[str]:
    """The ``python3 -m containers.replica`` command line for one replica."""
    return ["python3"] + replica_args(spec, gpu=gpu_in_container)


class DockerBackend:
    """Starts, stops and lists replica containers on one Docker engine."""

    name = "docker"

    def __init__(
        self,
        client: Any = None,
        image_for: ImageFor | None = None,
        default_image: str = DEFAULT_IMAGE,
        network_mode: str = "host",
        label_prefix: str = LABEL_PREFIX,
        namespace: str | None = None,
        nano_cpus: int | None = None,
        mem_limit: str | None = None,
    ) -> None:
        if not default_image:
            raise ValueError("default_image must be a non-empty image name")
        if not label_prefix.endswith("."):
            raise ValueError(f"label_prefix must end with '.', got {label_prefix!r}")
        # Two management services on one engine must use different namespaces: each stops
        # containers in its namespace that its own Redis does not know.
        namespace = defaults.resolve(namespace, "docker_namespace", NAMESPACE)
        if not namespace or _NAME_UNSAFE.search(namespace):
            raise ValueError(f"namespace must be a non-empty [a-zA-Z0-9_.-] string, got {namespace!r}")
        if nano_cpus is not None and nano_cpus <= 0:
            raise ValueError(f"nano_cpus must be positive, got {nano_cpus}")
        if client is None:
            try:
                client = docker.from_env()
                client.ping()
            except docker.errors.DockerException as err:
                raise BackendError(f"cannot reach the Docker engine: {err}") from err
        self._client = client
        self._image_for = DEFAULT_IMAGES if image_for is None else image_for
        self._default_image = default_image
        self._network_mode = network_mode
        self._prefix = label_prefix
        self._namespace = namespace
        self._nano_cpus = nano_cpus
        self._mem_limit = mem_limit

    @property
    def namespace(self) -> str:
        """The label namespace this backend starts, lists and stops containers in."""
        return self._namespace

    def image_for(self, spec: LaunchSpec) -> str:
        """The image for ``spec``: its own ``image``, else ``image_for(model)``, else the default."""
        if spec.image:
            return spec.image
        if callable(self._image_for):
            return self._image_for(spec.model) or self._default_image
        return self._image_for.get(spec.model, self._default_image)

    def start(self, spec: LaunchSpec) -> RunningReplica:
        """Run one detached container for ``spec``, pinned to ``spec.cpus`` (and ``spec.gpu``)."""
        if not spec.cpus:
            raise BackendError(f"replica {spec.replica_id}: no cpus to pin to")
        image = self.image_for(spec)
        name = container_name(spec, self._namespace)
        # Docker exposes only the requested GPU, renumbered as device 0 inside the container.
        gpu_inside = None if spec.gpu is None else 0
        kwargs: dict[str, Any] = dict(
            image=image,
            command=replica_command(spec, gpu_inside),
            name=name,
            detach=True,
            network_mode=self._network_mode,
            cpuset_cpus=",".join(str(c) for c in spec.cpus),
            labels=self._labels(spec),
            environment={"PYTHONUNBUFFERED": "1", **spec.env, **self._secrets(spec)},
        )
        if self._nano_cpus is not None:
            kwargs["nano_cpus"] = self._nano_cpus
        if self._mem_limit is not None:
            kwargs["mem_limit"] = self._mem_limit
        if spec.gpu is not None:
            kwargs["device_requests"] = [
                docker.types.DeviceRequest(device_ids=[str(spec.gpu)], capabilities=[["gpu"]])
            ]
        self._harden(spec, image, kwargs)
        container = self._run(name, kwargs)
        log.info("started replica %s as container %s (%s) on cpus %s gpu %s",
                 spec.replica_id, name, container.short_id, kwargs["cpuset_cpus"], spec.gpu)
        return RunningReplica(replica_id=spec.replica_id, backend=self.name, handle=container.id,
                              cpus=list(spec.cpus), gpu=spec.gpu, alive=True)

    def _harden(self, spec: LaunchSpec, image: str, kwargs: dict[str, Any]) -> None:
        """Non-root user, no privileges, only the allowed images, the model roots read-only."""
        allowed = ALLOWED_IMAGE_PREFIXES + tuple(
            p.strip() for p in defaults.resolve(None, "docker_allowed_images", "").split(",") if p.strip())
        if not image.startswith(allowed):
            raise BackendError(f"replica {spec.replica_id}: image {image!r} is not allowed; Schooner runs its own "
                               f"images ({', '.join(allowed)}); allow others with SCHOONER_DOCKER_ALLOWED_IMAGES")
        kwargs["user"] = defaults.resolve(None, "docker_user", USER)
        kwargs["security_opt"] = ["no-new-privileges"]
        kwargs["cap_drop"] = ["ALL"]
        kwargs["environment"] = {"HOME": "/tmp", **kwargs["environment"]}
        roots = model_roots.parse(spec.env.get(model_roots.ENV, ""))
        path = spec.model_data_path
        if path and not path.startswith(model_roots.IMAGE_PREFIX):
            try:
                model_roots.inside(path, roots)
            except model_roots.UnsafeModelPath as err:
                raise BackendError(f"replica {spec.replica_id}: {err}") from err
        if roots:
            kwargs["volumes"] = {r: {"bind": r, "mode": "ro"} for r in roots}

    @staticmethod
    def _secrets(spec: LaunchSpec) -> dict[str, str]:
        # The container cannot see the host's key file: the secret goes in its environment,
        # through the Docker API (never a command line).
        if not spec.curve_key_file:
            return {}
        try:
            pair = curve.read_key_file(spec.curve_key_file)
        except curve.CurveError as err:
            raise BackendError(f"replica {spec.replica_id}: {err}") from err
        return {curve.ENV_SECRET_KEY: pair.secret}

    def stop(self, replica_id: str, timeout_s: float) -> None:
        """SIGTERM the container (the replica drains), SIGKILL after ``timeout_s``, then remove it.

        Stopping a replica this backend does not know is a no-op, so stops can be retried.
        """
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        for container in self._find(replica_id):
            exit_code = None
            try:
                container.stop(timeout=math.ceil(timeout_s))
                container.reload()
                exit_code = container.attrs.get("State", {}).get("ExitCode")
                container.remove(force=True)
            except docker.errors.NotFound:
                pass  # gone already (removed by someone else meanwhile)
            except docker.errors.DockerException as err:
                raise BackendError(f"cannot stop replica {replica_id}: {err}") from err
            log.info("stopped and removed replica %s (container %s, exit %s)", replica_id,
                     container.short_id, exit_code)

    def list(self) -> list[RunningReplica]:
        """Every container this backend started and has not removed; ``alive`` = running."""
        try:
            containers = self._client.containers.list(all=True, filters={"label": self._scope()})
        except docker.errors.DockerException as err:
            raise BackendError(f"cannot list replica containers: {err}") from err
        return [r for r in (self._to_replica(c) for c in containers) if r is not None]

    def logs(self, replica_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines the replica's container wrote (stdout and stderr)."""
        if tail <= 0:
            raise ValueError(f"tail must be positive, got {tail}")
        containers = self._find(replica_id)
        if not containers:
            raise BackendError(f"no container for replica {replica_id}")
        try:
            return containers[0].logs(tail=tail).decode("utf-8", errors="replace")
        except docker.errors.DockerException as err:
            raise BackendError(f"cannot read logs of replica {replica_id}: {err}") from err

    def exit_code(self, replica_id: str) -> int | None:
        """The exit code of the replica's container, None while it runs or if unknown."""
        containers = self._find(replica_id)
        if not containers or containers[0].status in ("created", "running", "restarting"):
            return None
        return containers[0].attrs.get("State", {}).get("ExitCode")

    def _labels(self, spec: LaunchSpec) -> dict[str, str]:
        p = self._prefix
        return {
            f"{p}managed": "true",
            f"{p}namespace": self._namespace,
            f"{p}replica_id": spec.replica_id,
            f"{p}model": spec.model_name,
            f"{p}version": spec.model_version,
            f"{p}zoo_model": spec.model,
            f"{p}cpus": ",".join(str(c) for c in spec.cpus),
            f"{p}gpu": "" if spec.gpu is None else str(spec.gpu),
        }

    def _scope(self) -> list[str]:
        return [f"{self._prefix}managed=true", f"{self._prefix}namespace={self._namespace}"]

    def _run(self, name: str, kwargs: dict[str, Any]) -> Any:
        # Check the image first: containers.run would try to pull a missing one from a registry.
        try:
            self._client.images.get(kwargs["image"])
        except docker.errors.ImageNotFound as err:
            raise BackendError(f"image {kwargs['image']} not found; build it with "
                               f"bin/build_docker_images.sh") from err
        except docker.errors.DockerException as err:
            raise BackendError(f"cannot inspect image {kwargs['image']}: {err}") from err
        try:
            return self._client.containers.run(**kwargs)
        except docker.errors.APIError as err:
            if err.status_code == 409 and self._remove_stale(name):
                try:
                    return self._client.containers.run(**kwargs)
                except docker.errors.DockerException as retry_err:
                    raise BackendError(f"cannot start container {name}: {retry_err}") from retry_err
            raise BackendError(f"cannot start container {name}: {err}") from err
        except docker.errors.DockerException as err:
            raise BackendError(f"cannot start container {name}: {err}") from err

    def _remove_stale(self, name: str) -> bool:
        """Remove an exited container of ours that holds ``name``; True if it was removed."""
        try:
            old = self._client.containers.get(name)
        except docker.errors.DockerException:
            return False
        ours = old.labels.get(f"{self._prefix}managed") == "true"
        if not ours or old.status == "running":
            return False
        log.warning("removing stale container %s (%s) to reuse its name", name, old.status)
        try:
            old.remove(force=True)
        except docker.errors.DockerException:
            return False
        return True

    def _find(self, replica_id: str) -> list[Any]:
        labels = self._scope() + [f"{self._prefix}replica_id={replica_id}"]
        try:
            return self._client.containers.list(all=True, filters={"label": labels})
        except docker.errors.DockerException as err:
            raise BackendError(f"cannot look up replica {replica_id}: {err}") from err

    def _to_replica(self, container: Any) -> RunningReplica | None:
        labels = container.labels
        replica_id = labels.get(f"{self._prefix}replica_id")
        if not replica_id:
            return None
        cpus_label = labels.get(f"{self._prefix}cpus", "")
        gpu_label = labels.get(f"{self._prefix}gpu", "")
        return RunningReplica(
            replica_id=replica_id,
            backend=self.name,
            handle=container.id,
            cpus=[int(c) for c in cpus_label.split(",") if c],
            gpu=int(gpu_label) if gpu_label else None,
            alive=container.status == "running",
        )
