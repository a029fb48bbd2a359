"""Read annotate outputs: ``read_latest(DST)`` gives the current annotation of every live object.

    from facebatch.annotations import read_latest
    df = read_latest("s3://bucket/annotations").to_pandas()
    one = read_latest("s3://bucket/annotations", identity_model="270df1908f07")  # one identity model's rows

Embeddings of two identity models are never mixed (see :func:`read_latest`); ``models`` and
``identity_model`` say which models made each row (docs/ANNOTATIONS.md, "Model versions").
"""
from .annotate.state import read_latest, run_folders

__all__ = ["read_latest", "run_folders"]
