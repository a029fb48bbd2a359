"""The actor pool of a batch job, sized from the cluster, checked before any work.

The job's options object gives ``workers``, ``cpus_per_worker`` and ``gpus_per_worker`` (both
jobs' configs do).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, NamedTuple


class WorkerPlan(NamedTuple):
    """``(actors, CPUs per actor, torch threads per actor)``."""

    actors: int
    cpus: float
    threads: int


def plan_workers(cfg: Any, cluster_cpus: float, cluster_gpus: float, node_cpus: float | None = None) -> WorkerPlan:
    """The pool that leaves CPU for the read tasks.

    On CPU each actor runs one torch thread (``--cpus-per-worker 2`` gives two); the pool gets one
    actor per core, and a tenth of the cluster's CPUs (at least half a core) is kept free for the
    read and decode tasks so they cannot be starved.

    Raises ``ValueError`` (before any work) when the actors cannot all be placed: a CUDA device on
    a cluster without GPUs, more CPUs per actor than the largest node (``node_cpus``) has, or a
    pool larger than the cluster. Ray would wait for them forever.
    """
    cpw_opt, gpw = cfg.cpus_per_worker, cfg.gpus_per_worker
    largest = node_cpus if node_cpus is not None else cluster_cpus
    if cpw_opt is not None and cpw_opt > largest:
        raise ValueError(f"--cpus-per-worker {cpw_opt:g} but the largest node has {largest:g} CPUs "
                         f"(cluster: {cluster_cpus:g}); choose at most {largest:g}")
    threads = max(1, int(cpw_opt or 1))
    if gpw > 0:
        if cluster_gpus <= 0:
            raise ValueError(f"a GPU per actor (--device cuda, --gpus-per-worker {gpw:g}) but the cluster has no GPUs; "
                             "use --device cpu")
        if cluster_gpus < gpw:
            raise ValueError(f"--gpus-per-worker {gpw} but the cluster has {cluster_gpus} GPUs")
        n = cfg.workers or max(1, int(cluster_gpus // gpw))
        if n * gpw > cluster_gpus + 1e-9:
            raise ValueError(f"--workers {n} x --gpus-per-worker {gpw:g} needs more than the "
                             f"cluster's {cluster_gpus:g} GPUs")
        return WorkerPlan(n, cpw_opt or 1.0, threads)
    n = cfg.workers or max(1, int(round(cluster_cpus)))
    if cpw_opt and n * cpw_opt > cluster_cpus + 1e-9:
        raise ValueError(f"--workers {n} x --cpus-per-worker {cpw_opt:g} needs more than "
                         f"the cluster's {cluster_cpus:g} CPUs")
    reserve = max(0.5, 0.1 * cluster_cpus)
    cpw = cpw_opt or max(0.1, math.floor((cluster_cpus - reserve) / n * 100) / 100)
    # One torch thread per actor unless whole CPUs are given explicitly: scaling out with actors is
    # faster for small convolutions, and rows do not depend on how many actors ran.
    return WorkerPlan(n, cpw, threads)


def plan_on_cluster(cfg: Any, info: dict) -> WorkerPlan:
    """:func:`plan_workers` for the cluster that :func:`facebatch.raycluster.init_ray` joined."""
    res = info["resources"]
    return plan_workers(cfg, res.get("CPU", 1), res.get("GPU", 0), node_cpus=largest_node_cpus())


def precheck_local(cfg: Any, address: str | None) -> None:
    """Before starting an embedded local Ray, check the worker options against this machine, so a
    request it cannot meet fails in seconds instead of after Ray's start-up (or never)."""
    import os
    from ..raycluster import resolve_address
    if resolve_address(address) is not None or ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        return
    gpus = 0
    if cfg.gpus_per_worker > 0:
        import torch
        gpus = torch.cuda.device_count()
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    plan_workers(cfg, cpus, gpus)


def largest_node_cpus() -> float | None:
    """The CPUs of the largest node alive, or ``None`` when Ray cannot say."""
    import ray
    try:
        return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=None)
    except Exception:
        return None


def _raylet_reachable(node: dict) -> bool:
    import socket
    try:
        socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=3).close()
        return True
    except (OSError, KeyError, ValueError):
        return False


def alive_resources(wait_s: float = 60.0) -> tuple[float, float, float | None]:
    """``(CPUs, GPUs, largest node's CPUs)`` of the nodes alive now. The lost worker's error comes
    before the cluster has marked its node dead (health checks take seconds): wait up to ``wait_s``
    for nodes whose raylet no longer answers to be marked dead, and leave them out in any case."""
    import ray
    deadline = time.time() + wait_s
    while True:
        alive = [nd for nd in ray.nodes() if nd.get("Alive")]
        gone = [nd for nd in alive if not _raylet_reachable(nd)]
        if not gone or time.time() > deadline:
            break
        time.sleep(1.0)
    res = [nd["Resources"] for nd in alive if nd not in gone]
    return (sum(r.get("CPU", 0) for r in res), sum(r.get("GPU", 0) for r in res),
            max((r.get("CPU", 0) for r in res), default=None))
