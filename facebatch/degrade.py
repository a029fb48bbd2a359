"""What real photos do to faces, as a repeatable degradation of a source image (pure numpy/Pillow).

A SPEC is comma-separated ``name=value`` items, applied in this order whatever order they are
written in:

- ``blur=SIGMA``: Gaussian blur, sigma in pixels of the original image;
- ``scale=S``: downscale by ``S`` (0 < S <= 1) with antialiasing (Pillow's area-aware bicubic
  filter); the result stays small (faces get fewer pixels), labels scale with it;
- ``jpeg=Q``: re-encode as JPEG at quality ``Q`` (1-100), then decode.

``facebatch evaluate ... --degrade scale=0.5,jpeg=30`` applies it to every source image before
detection; training uses the same operations, drawn at random, as augmentation.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

KEYS = ("blur", "scale", "jpeg")


@dataclass(frozen=True)
class Degradation:
    """A parsed SPEC (see the module doc); the identity when every field is at its default."""

    blur: float = 0.0
    scale: float = 1.0
    jpeg: int | None = None

    @classmethod
    def parse(cls, spec: str | None) -> "Degradation":
        """Parse ``"scale=0.5,jpeg=30"``; ``None``/``""``/``"none"`` is no degradation.

        Raises:
            ValueError: naming the bad item and the allowed ones.
        """
        if spec is None or str(spec).strip().lower() in ("", "none"):
            return cls()
        vals: dict = {}
        for item in str(spec).split(","):
            key, sep, value = item.strip().partition("=")
            key = key.strip().lower()
            if not sep or key not in KEYS:
                raise ValueError(f"--degrade {spec!r}: bad item {item.strip()!r}; use comma-separated "
                                 f"name=value with names {', '.join(KEYS)} (e.g. scale=0.5,jpeg=30)")
            if key in vals:
                raise ValueError(f"--degrade {spec!r}: {key} given twice")
            try:
                vals[key] = int(value) if key == "jpeg" else float(value)
            except ValueError:
                raise ValueError(f"--degrade {spec!r}: {key}={value!r} is not a number") from None
        d = cls(**vals)
        if not 0.0 < d.scale <= 1.0:
            raise ValueError(f"--degrade {spec!r}: scale must be in (0, 1], got {d.scale}")
        if d.jpeg is not None and not 1 <= d.jpeg <= 100:
            raise ValueError(f"--degrade {spec!r}: jpeg quality must be 1-100, got {d.jpeg}")
        if not 0.0 <= d.blur <= 50.0:
            raise ValueError(f"--degrade {spec!r}: blur sigma must be 0-50 px, got {d.blur}")
        return d

    @property
    def is_identity(self) -> bool:
        return self.blur == 0.0 and self.scale == 1.0 and self.jpeg is None

    def __str__(self) -> str:
        parts = ([f"blur={self.blur:g}"] if self.blur else []) + ([f"scale={self.scale:g}"] if self.scale != 1 else []) \
            + ([f"jpeg={self.jpeg}"] if self.jpeg is not None else [])
        return ",".join(parts) or "none"

    def to_dict(self) -> dict:
        return {**asdict(self), "spec": str(self)}

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Degrade an RGB ``uint8 (H, W, 3)`` image; returns ``(image, (sx, sy))`` where a point
        ``(x, y)`` of the original is ``(x * sx, y * sy)`` in the result."""
        if self.is_identity:
            return image, (1.0, 1.0)
        h, w = image.shape[:2]
        im = Image.fromarray(image)
        if self.blur > 0:
            im = im.filter(ImageFilter.GaussianBlur(self.blur))
        sx = sy = 1.0
        if self.scale != 1.0:
            nw, nh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
            im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
            sx, sy = nw / w, nh / h
        if self.jpeg is not None:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=int(self.jpeg))
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return np.asarray(im, dtype=np.uint8), (sx, sy)


def random_degrade(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.2, 1.0),
                   jpeg: tuple[int, int] = (20, 95), blur: tuple[float, float] = (0.0, 1.0),
                   p: float = 0.5) -> np.ndarray:
    """Training augmentation for a face crop: with probability ``p`` each, downscale to a random
    share of its side and back up (bilinear), blur, and JPEG re-encode at a random quality.
    The crop keeps its size, so labels in crop coordinates do not move."""
    h, w = image.shape[:2]
    im = Image.fromarray(image)
    if rng.random() < p:
        s = float(rng.uniform(*scale))
        small = im.resize((max(4, round(w * s)), max(4, round(h * s))), Image.BICUBIC, reducing_gap=None)
        im = small.resize((w, h), Image.BILINEAR)
    if blur[1] > 0 and rng.random() < p:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(*blur))))
    if rng.random() < p:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(rng.integers(jpeg[0], jpeg[1] + 1)))
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(im, dtype=np.uint8)
