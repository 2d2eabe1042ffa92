"""Model uploads: a model file or directory (as a tar archive) into the first model root.

``POST /admin/upload_model?model_name=M&model_version=V&filename=F`` with the
file's bytes as the body (a ``.tar``/``.tar.gz``/``.tgz`` is unpacked) answers
``{"model_data_path": "<root>/M/V[/F]"}`` for ``add_model``. The body is
size-limited (``defaults.MAX_UPLOAD_BYTES``) and so is what an archive unpacks
to; an archive member that is absolute, climbs out with ``..``, is a link or a
device is refused, so nothing lands outside ``<root>/M/V``. A version that was
uploaded before is 409: model files are not replaced under a running replica.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile

from aiohttp import web

from management.api.common import MODEL_ROOTS_KEY, call, write
from management.errors import BadRequest, Conflict
from schooner import defaults

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ARCHIVES = (".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20


def _name(value: str | None, field: str) -> str:
    if not value or not _NAME_RE.match(value) or value in (".", ".."):
        raise BadRequest(f"query parameter {field!r} must be a name of letters, digits, '_', '.', '-' "
                         f"(got {value!r})")
    return value


def _unpack(archive: str, dest: str, limit: int) -> None:
    try:
        with tarfile.open(archive) as tar:
            total = 0
            members = tar.getmembers()
            for m in members:
                parts = m.name.replace("\\", "/").split("/")
                if m.name.startswith("/") or ".." in parts:
                    raise BadRequest(f"archive member {m.name!r} would land outside the model's directory")
                if not (m.isfile() or m.isdir()):
                    raise BadRequest(f"archive member {m.name!r} is a link or special file; only files and "
                                     "directories are accepted")
                total += m.size
                if total > limit:
                    raise BadRequest(f"archive unpacks to more than {limit} bytes")
            # The data filter refuses absolute names and '..' that would land outside dest.
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise BadRequest(f"cannot unpack the archive: {err}") from err


def _install(tmp: str, dest: str, filename: str, limit: int) -> str:
    """Move the uploaded file (unpacked if an archive) to ``dest``; the model_data_path to use."""
    stage = tempfile.mkdtemp(prefix=".upload-", dir=os.path.dirname(dest))
    try:
        if filename.endswith(_ARCHIVES):
            _unpack(tmp, stage, limit)
            entries = os.listdir(stage)
            # An archive of one directory (tar -C parent dir) serves that directory.
            inner = os.path.join(stage, entries[0]) if len(entries) == 1 else stage
            src = inner if os.path.isdir(inner) else stage
            path = dest
        else:
            os.replace(tmp, os.path.join(stage, filename))
            src, path = stage, os.path.join(dest, filename)
        if os.path.exists(dest):
            raise Conflict(f"{dest} was uploaded before; upload under a new model_version")
        os.rename(src, dest)
        os.chmod(dest, 0o700)
        return path
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@write
async def upload_model(request: web.Request) -> web.Response:
    """Save an uploaded model file or archive under the first model root."""
    roots = request.app[MODEL_ROOTS_KEY]
    if not roots:
        raise BadRequest("this management service has no model root to upload into (--model-root DIR)")
    name = _name(request.query.get("model_name"), "model_name")
    version = _name(request.query.get("model_version", "1"), "model_version")
    filename = _name(request.query.get("filename"), "filename")
    limit = defaults.MAX_UPLOAD_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"upload is {request.content_length} bytes; the limit is {limit}")
    parent = os.path.join(roots[0], name)
    await call(os.makedirs, parent, 0o700, True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=parent)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"upload is larger than the limit of {limit} bytes")
                out.write(chunk)
        path = await call(_install, tmp, os.path.join(parent, version), filename, 4 * limit)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return web.json_response({"model_data_path": path, "bytes": size})


def register(app: web.Application) -> None:
    app.router.add_post("/admin/upload_model", upload_model)
