"""Read annotate outputs: ``read_latest(DST)`` gives the current annotation of every live object.

    from facebatch.annotations import read_latest
    df = read_latest("s3://bucket/annotations").to_pandas()
"""
from .annotate.state import read_latest, run_folders

__all__ = ["read_latest", "run_folders"]
