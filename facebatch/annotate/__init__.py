"""The annotate job: the :class:`~facebatch.inference.FaceAnalyzer` run at scale on Ray Data,
incremental over a folder or bucket (new and changed objects only), one row per face.

Modules: :mod:`.config` (options), :mod:`.decode` (reduced-scale JPEG decoding), :mod:`.rows`
(output schema), :mod:`.state` (listing, diff, manifest, run folders, :func:`read_latest`),
:mod:`.lock`, :mod:`.pipeline` (the Ray Data job), :mod:`.report` (report.html), :mod:`.cli`.
"""
from .state import read_latest

__all__ = ["read_latest"]
