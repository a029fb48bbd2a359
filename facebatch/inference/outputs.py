"""What an analyzer head outputs, by kind, and the columns each output becomes.

Every consumer of :class:`~facebatch.inference.FaceAnalyzer` results (annotate rows, the serve
API, ``facebatch analyze``, the annotate report) builds its fields from these declarations,
never from a list of its own: a head that declares an output is all it takes for a column.

Kinds and their columns (``dtype`` is what the column holds, per face):

========== ================================ ==========================================
kind       columns                          values
========== ================================ ==========================================
keypoints  ``NAME``                         points: flat x, y pairs in image pixels
binary     ``NAME``, ``NAME_label``         float score; bool ``score >= threshold``
regression ``NAME``                         float
embedding  ``NAME``                         vector: list of floats (biometric data)
decision   ``NAME``, ``NAME_similarity``    string (a gallery name or ``unknown``); float
========== ================================ ==========================================

The identity decision is not a head of its own: :class:`FaceAnalyzer` makes it on top of an
embedding when it holds a gallery. Points columns are image coordinates, so code that rescales
a face (annotate decodes JPEGs at reduced scale) rescales them with the box.
"""
from __future__ import annotations

from dataclasses import dataclass

KEYPOINTS = "keypoints"
BINARY = "binary"
REGRESSION = "regression"
EMBEDDING = "embedding"
DECISION = "decision"
KINDS = (KEYPOINTS, BINARY, REGRESSION, DECISION, EMBEDDING)  # also the column order of a row

#: per-call switches of ``FaceAnalyzer.analyze`` (and the serve API's query flags) -> kinds
PARTS = {"keypoints": (KEYPOINTS,), "attributes": (BINARY, REGRESSION), "identity": (DECISION,),
         "embedding": (EMBEDDING,)}

POINTS, FLOAT, BOOL, VECTOR, STRING = "points", "float", "bool", "vector", "string"


@dataclass(frozen=True)
class Output:
    """One declared output of a head.

    Attributes:
        name: the main column's name (``keypoints68``, ``smile``, ``embedding``, ...).
        kind: one of :data:`KINDS`.
        doc: one line for docs and ``describe()``.
    """

    name: str
    kind: str
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"output {self.name!r}: unknown kind {self.kind!r}; known: {', '.join(KINDS)}")

    def columns(self) -> list[tuple[str, str]]:
        """``(column name, dtype)`` of every column this output fills."""
        if self.kind == KEYPOINTS:
            return [(self.name, POINTS)]
        if self.kind == BINARY:
            return [(self.name, FLOAT), (f"{self.name}_label", BOOL)]
        if self.kind == REGRESSION:
            return [(self.name, FLOAT)]
        if self.kind == EMBEDDING:
            return [(self.name, VECTOR)]
        return [(self.name, STRING), (f"{self.name}_similarity", FLOAT)]


def ordered(outputs: list[Output]) -> list[Output]:
    """Outputs in row order: by kind (:data:`KINDS`), then as declared; a name declared twice is
    an error naming both."""
    seen: dict[str, Output] = {}
    for o in outputs:
        for col, _ in o.columns():
            if col in seen:
                raise ValueError(f"column {col!r} is declared by two outputs: {seen[col]} and {o}")
            seen[col] = o
    return sorted(outputs, key=lambda o: KINDS.index(o.kind))


def columns(outputs: list[Output]) -> list[tuple[str, str]]:
    """Every ``(column, dtype)`` of these outputs, in row order."""
    return [c for o in ordered(outputs) for c in o.columns()]


def kinds_wanted(**parts: bool) -> set[str]:
    """The kinds the per-call switches ask for (``keypoints=False`` drops keypoints, ...)."""
    return {k for part, ks in PARTS.items() if parts.get(part, True) for k in ks}
