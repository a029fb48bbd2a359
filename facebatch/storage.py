"""Local paths and s3:// URIs behind one fsspec interface.

S3 settings come from options or the usual environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible servers.
"""
from __future__ import annotations

import os
from typing import Any

import fsspec


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def storage_options(endpoint_url: str | None = None) -> dict[str, Any]:
    """s3fs options from an explicit endpoint or the environment (empty for AWS defaults)."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict[str, Any] = {}
    # Forward the driver's credentials so Ray workers on other nodes use the same ones;
    # without them s3fs falls back to each node's own credential chain (instance roles).
    for opt, env in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if os.environ.get(env):
            opts[opt] = os.environ[env]
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or URI."""
    uri = str(uri)
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **(options or {}))
        return fs, path
    fs = fsspec.filesystem("file")
    return fs, os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def check_writable(uri: str, options: dict[str, Any] | None = None) -> None:
    """Create the output folder and write and delete a probe file, or raise ``PermissionError`` naming it."""
    fs, path = filesystem(uri, options)
    probe = join(path, "_facebatch_write_probe")
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as exc:
        raise PermissionError(f"cannot write to output {uri!r}: {type(exc).__name__}: {exc}. "
                              "Choose a folder or bucket you can write to (--output).") from None


def arrow_filesystem(uri: str, endpoint_url: str | None = None):
    """A pyarrow filesystem for Ray Data reads/writes of ``s3://`` with a custom endpoint, else ``None``."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not str(uri).startswith("s3://") or not endpoint:
        return None
    from urllib.parse import urlparse
    import pyarrow.fs as pafs
    u = urlparse(endpoint)
    return pafs.S3FileSystem(endpoint_override=u.netloc or endpoint, scheme=u.scheme or "https",
                             access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                             secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                             session_token=os.environ.get("AWS_SESSION_TOKEN"),
                             region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
