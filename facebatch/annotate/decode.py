"""Moved: reduced-scale decoding is :func:`facebatch.imaging.decode_scaled` (and ``crop_scale``,
``Scaled``). This alias stays only until ``annotate/report.py`` imports it from ``facebatch.imaging``;
delete it then."""
from ..imaging import Scaled, crop_scale, decode_scaled

__all__ = ["Scaled", "crop_scale", "decode_scaled"]
