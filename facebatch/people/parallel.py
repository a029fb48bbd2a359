"""Ray glue: compute the graph's row blocks in Ray tasks when the collection is big.

The graph functions of :mod:`.graph` take a ``mapper(fn, jobs, base)`` that returns
``[fn(queries, offset, base) for queries, offset in jobs]``. :func:`mapper` picks one: Ray tasks
(the base embeddings put once into the object store, one task per row block, zero-copy reads in
the workers) when Ray is already initialised and there are at least ``min_faces`` faces; else
``None``, the serial loop in this process. The people stage never starts Ray itself: inside
``facebatch annotate --people`` the job's Ray is used; ``facebatch people`` alone runs here.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: below this many faces the blocks run in this process (Ray task overhead is not worth it)
RAY_MIN_FACES = 200_000


def mapper(n_faces: int, min_faces: int = RAY_MIN_FACES) -> Callable | None:
    """Ray tasks for ``n_faces >= min_faces`` when Ray is initialised, else ``None``."""
    if n_faces < min_faces:
        return None
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency, but the core does not need it
        return None
    return ray_map if ray.is_initialized() else None


def _call(fn, queries: np.ndarray, offset: int, base: np.ndarray):
    return fn(queries, offset, base)


def ray_map(fn, jobs: list[tuple[np.ndarray, int]], base: np.ndarray) -> list:
    """``fn`` over row blocks in Ray tasks (1 CPU each), results in job order."""
    import ray
    base_ref = ray.put(base)
    task = ray.remote(num_cpus=1)(_call)
    return ray.get([task.remote(fn, q, off, base_ref) for q, off in jobs])
