"""Values that ``json.dumps`` writes as strict JSON: metrics with NaN or infinity become null."""
from __future__ import annotations

import math


def json_safe(v):
    """``v`` with every non-finite float (in nested dicts, lists and tuples) replaced by ``None``;
    tuples become lists. Other values are returned as they are."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v
