"""People: group the faces of an annotate output into persons, night after night.

    from facebatch.people import run_people, name_person
    run_people("DST")                      # after `facebatch annotate ... --embeddings`
    name_person("DST", 12, "Alice", gallery="people.npz")

Modules, pure core first:

* :mod:`.quality` - the quality gate (size, score, pose from the 68 points, blur of the crop);
* :mod:`.graph` - the kNN threshold graph of the embeddings in blocks (never N x N);
* :mod:`.cluster` - Chinese whispers and connected components;
* :mod:`.night` - one night: known persons frozen, new faces whispered in, merges;
* :mod:`.state` - ``DST/_people/`` (faces, people, history) and its atomic swap;
* :mod:`.live` - the live faces of the annotate output (``read_latest``);
* :mod:`.parallel` - Ray tasks over graph blocks for big collections;
* :mod:`.stage` - :func:`run_people`; :mod:`.naming` - :func:`name_person`;
  :mod:`.report` - the biggest persons for the annotate report.

Importing this package does not import torch or Ray. ``_people/`` holds embeddings (biometric
data); :func:`forget_all` deletes it.
"""
from __future__ import annotations

from .naming import forget_all, name_person
from .quality import QualityGate
from .stage import run_people
from .state import load_state

__all__ = ["QualityGate", "forget_all", "load_state", "name_person", "run_people"]
