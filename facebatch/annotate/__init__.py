"""The annotate job: the :class:`~facebatch.inference.FaceAnalyzer` run at scale on Ray Data,
incremental over a folder or bucket (new and changed objects only), one row per face.

Modules: :mod:`.config` (options), :mod:`.rows` (output schema), :mod:`.state` (listing, diff,
manifest, run folders, the default sink, :func:`read_latest`), :mod:`.lock`, :mod:`.read` (the
read tasks), :mod:`.pipeline` (the Ray Data job), :mod:`.report` (report.html), :mod:`.cli`,
:mod:`.versions` (model fingerprints, stale objects), :mod:`.forget` (``facebatch forget``: erasure).
Decoding at reduced scale is :func:`facebatch.imaging.decode_scaled`; the shard, retry, check,
sink and pool machinery is :mod:`facebatch.batch`'s.
"""
from .state import read_latest

__all__ = ["read_latest"]
