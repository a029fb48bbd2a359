"""Connecting to Ray: a cluster when an address is given, otherwise an embedded local Ray on 127.0.0.1.

Ray reads some settings from the environment at import time, so :func:`local_ray_env`
is applied before ``import ray`` here and in tests.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

LOCAL_ENV = {
    # Bind every Ray port to 127.0.0.1 instead of the machine's network address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray 2.60 enables token auth by default; an embedded single-user cluster does not need it.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def local_ray_env() -> None:
    """Set the environment an embedded local Ray needs (keeps values the user set)."""
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)


def resolve_address(address: str | None) -> str | None:
    """``--address`` wins, then ``$RAY_ADDRESS``; ``None``/``local`` means an embedded local Ray."""
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if addr in ("local", ""):
        return None
    return addr


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True) -> dict:
    """Connect to a cluster or start a local Ray bound to 127.0.0.1; reuse an existing connection.

    Args:
        address: cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); ``None`` reads
            ``$RAY_ADDRESS`` and falls back to a local Ray.
        num_cpus: CPUs for a local Ray (default: all of this machine's).
        num_gpus: GPUs for a local Ray (default: detected).
        quiet: lower Ray's own log noise.

    Returns:
        ``{"address": ..., "local": bool, "resources": {...}}``.
    """
    addr = resolve_address(address)
    if addr is None:
        if "ray" in sys.modules and any(os.environ.get(k) != v for k, v in LOCAL_ENV.items()):
            log.warning("ray was imported before facebatch set %s; a local Ray may listen on more than "
                        "127.0.0.1. Call facebatch.raycluster.local_ray_env() before importing ray.",
                        ", ".join(LOCAL_ENV))
        local_ray_env()
    import ray

    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=True,
                      logging_level=logging.WARNING if quiet else logging.INFO)
        if addr is None:
            os.environ.pop("RAY_ADDRESS", None)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1", **kwargs)
        else:
            kwargs.pop("include_dashboard")
            ray.init(address=addr, **kwargs)
    ctx = ray.get_runtime_context()
    res = ray.cluster_resources()
    info = {"address": addr or "local", "local": addr is None, "resources": {k: res[k] for k in ("CPU", "GPU") if k in res},
            "node_id": ctx.get_node_id()}
    log.info("ray: %s", info)
    return info
