"""Local paths and s3:// URIs behind one fsspec interface.

S3 settings come from options or the usual environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible servers.
"""
from __future__ import annotations

import errno
import os
from typing import Any

import fsspec


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def storage_options(endpoint_url: str | None = None) -> dict[str, Any]:
    """s3fs options from an explicit endpoint or the environment, with short botocore retries."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts: dict[str, Any] = {}
    # Forward the driver's credentials so Ray workers on other nodes use the same ones;
    # without them s3fs falls back to each node's own credential chain (instance roles).
    for opt, env in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN")):
        if os.environ.get(env):
            opts[opt] = os.environ[env]
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    # botocore's own retries stay short (3 attempts, about 3 s); longer outages are retried by the
    # jobs with backoff for --retry-seconds (facebatch.batch.retry.call_with_retries)
    opts["config_kwargs"] = {"retries": {"max_attempts": 3, "mode": "standard"}}
    return opts


def filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or URI."""
    uri = str(uri)
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **(options or {}))
        return fs, path
    fs = fsspec.filesystem("file")
    return fs, os.path.abspath(os.path.expanduser(uri))


def object_info(path: str, options: dict[str, Any] | None = None, known: dict | None = None) -> dict:
    """The listing info of one object (size, ETag or mtime): ``known`` when the lister already gave
    it, else a stat now; ``{}`` when the object cannot be stat'ed (the read then gives it a status)."""
    if known is not None:
        return known
    try:
        fs, p = filesystem(path, options)
        return fs.info(p)
    except Exception:
        return {}


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _endpoint(options: dict[str, Any] | None) -> str:
    ep = ((options or {}).get("client_kwargs") or {}).get("endpoint_url")
    return ep or "AWS S3 (default endpoint)"


def storage_error_message(exc: BaseException, uri: str, options: dict[str, Any] | None = None) -> str | None:
    """One line for an S3 failure a user can fix (no credentials, endpoint unreachable), else ``None``.

    Names the endpoint and the setting to change; the caller raises it as a ``ValueError``
    (exit 2, no traceback)."""
    if not is_remote(uri):
        return None
    names = {c.__name__ for e in _chain(exc) for c in type(e).__mro__}
    ep = _endpoint(options)
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return (f"no S3 credentials for {uri} (endpoint {ep}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE)")
    text = " ".join(str(e) for e in _chain(exc))
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"} or \
            (is_transient(exc) and not (names & {"ClientError"})):
        return (f"cannot reach the S3 endpoint {ep} for {uri} ({type(exc).__name__}: {text[:160]}); "
                f"check --s3-endpoint-url / AWS_ENDPOINT_URL and that the server is up")
    if any(t in text for t in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")):
        return (f"S3 refused access to {uri} (endpoint {ep}): {text[:160]}; check AWS_ACCESS_KEY_ID, "
                f"AWS_SECRET_ACCESS_KEY and the bucket's permissions")
    return None


def check_writable(uri: str, options: dict[str, Any] | None = None) -> None:
    """Create the output folder and write and delete a probe file, or raise ``PermissionError`` naming it
    (``ValueError`` with the endpoint and variable to set for S3 credential or connection problems)."""
    fs, path = filesystem(uri, options)
    probe = join(path, "_facebatch_write_probe")
    try:
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as exc:
        msg = storage_error_message(exc, uri, options)
        if msg:
            raise ValueError(msg) from None
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


# ---- which storage errors a retry could fix (used by every job's retries) ----------------------

_TRANSIENT_NAMES = {
    # botocore / urllib3 / aiohttp / s3fs names, matched by name so this module imports none of them
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ConnectionError", "HTTPClientError", "ServerDisconnectedError", "ClientConnectorError",
    "ClientOSError", "ClientPayloadError", "ServerTimeoutError", "FSTimeoutError", "IncompleteRead",
    "ResponseParserError", "ProxyConnectionError", "NewConnectionError", "ProtocolError",
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "RequestLimitExceeded"}
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN}
_TRANSIENT_TEXT = ("connection refused", "connection reset", "connection was closed", "timed out", "timeout",
                   "slow down", "slowdown", "service unavailable", "internal error", "could not connect",
                   "server disconnected", "broken pipe", "temporarily unavailable", "(503)", "(500)", "(502)", "(504)")


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry could fix: connection refused/reset, timeouts, HTTP 5xx, SlowDown.

    Missing objects, permissions, bad credentials and corrupt data are not transient.
    The exception, its causes and contexts are all looked at (s3fs and aiobotocore wrap errors).
    """
    for e in _chain(exc):
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        names = {c.__name__ for c in type(e).__mro__}
        if names & {"NoCredentialsError", "PartialCredentialsError", "NoSuchBucket", "NoSuchKey"}:
            return False
        if isinstance(e, (ConnectionError, TimeoutError)) or names & _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = str((resp.get("Error") or {}).get("Code", ""))
            status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                return True
        text = str(e).lower()
        if any(t in text for t in _TRANSIENT_TEXT):
            return True
    return False
