"""The online annotation API on Ray Serve: one photo in, the same face answers as the batch jobs.

* :mod:`.options` -- :class:`ServeOptions` and the Serve limits derived from them;
* :mod:`.api` -- the HTTP routes, independent of Ray (token, body limit, decoding, JSON errors);
* :mod:`.app` -- the Serve deployments and :func:`build_app` (``facebatch.serve.app:app``);
* :mod:`.cli` -- ``facebatch serve``.

The HTTP API is documented in ``docs/API.md``.
"""
from .options import ServeOptions

__all__ = ["ServeOptions"]
