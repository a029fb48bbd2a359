"""A test-only analyzer head: each face's mean brightness, a regression output.

It exists to prove the head seam (issue 20): registering it here and naming it
(``tests.brightness_head:brightness``) must be all it takes for a ``brightness`` column to
appear in ``FaceAnalyzer.analyze``, annotate rows and the serve API. Ray workers import it by
that name (the repository root is on their path).
"""
from __future__ import annotations

from facebatch.inference.inputs import InputSpec
from facebatch.inference.outputs import REGRESSION, Output
from facebatch.inference.registry import register_head


@register_head("brightness")
class BrightnessHead:
    """Mean grey level in [0, 1] of the face's 32 px crop (the default crop frame)."""

    name = "brightness"

    def __init__(self, device: str = "cpu", runtime: str | None = None) -> None:
        self.input = InputSpec(32, grey=True)

    def declares(self) -> list[Output]:
        return [Output("brightness", REGRESSION, "mean grey level of the face crop, 0-1")]

    def run(self, faces, wanted: set[str]) -> dict[str, list]:
        return {"brightness": faces.input(self.input).mean(dim=(1, 2, 3)).tolist()}

    def describe(self) -> dict:
        return {"name": self.name, "version": 1}
