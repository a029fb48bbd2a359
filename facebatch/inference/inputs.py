"""The one input contract: face crops -> model input tensors, driven by the model file's ``meta``.

Every path that feeds a model (training, evaluation, threshold fitting, enrollment, the
:class:`~facebatch.inference.FaceAnalyzer`, annotate and serve) goes through these functions,
so a face gives the same tensor wherever it comes from.

The crop frame (what the model saw in training):

1. ``square_crop_box(box, margin)``: a square around the detector box, each side grown by
   ``margin`` (0.2) of the box's larger side, integer pixel bounds, black outside the image;
2. cut and resized to ``crop_size`` (256) with Pillow's bilinear filter;
3. a JPEG round trip at ``jpeg_quality`` (95): preprocess stores crops as JPEG, so every
   model was trained on decoded JPEG crops.

**Decision on the JPEG round trip: keep it**, at inference too. The shipped models were trained
and evaluated on round-tripped crops; encoding a 256 px crop at quality 95 is deterministic
(the same bytes as the preprocess row), so a photo gives bit-identical model input through a
preprocess row and through the analyzer, and the measured metrics carry over unchanged. It
costs about 1 ms per face (encode + decode of a 256 px crop). A model file may set
``meta["crop_frame"]["jpeg_quality"] = None`` to skip it.

Model input: the crop resized to the model's ``input_size`` with Pillow's bilinear filter
(antialiased when shrinking), converted to grey (ITU-R 601 luma, Pillow's ``L``) before
resizing for 1-channel models, then ``float32 / 255`` as ``(B, C, S, S)``. Normalisation
(mean/std, BGR) happens inside each model.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..geometry import crop_square, square_crop_box
from ..imaging import encode_jpeg

CROP_MARGIN = 0.2
CROP_SIZE = 256
CROP_JPEG_QUALITY = 95


@dataclass(frozen=True)
class CropFrame:
    """How a face is cut from its photo before it is resized for a model (see the module doc)."""

    margin: float = CROP_MARGIN
    crop_size: int = CROP_SIZE
    jpeg_quality: int | None = CROP_JPEG_QUALITY

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: input side, grey or colour, and the crop frame of its training crops.

    Args:
        size: square input side in pixels.
        grey: 1-channel (grey) input instead of RGB.
        frame: the crop frame (defaults: preprocess's margin 0.2, 256 px, JPEG 95, which
            every model file without a ``crop_frame`` entry was trained on).
    """

    size: int
    grey: bool = False
    frame: CropFrame = CropFrame()

    @classmethod
    def from_meta(cls, meta: dict) -> "InputSpec":
        """From a model file's ``meta`` (``input_size``, ``grey``, optional ``crop_frame``)."""
        if not meta or "input_size" not in meta:
            raise ValueError("model file meta has no input_size; it was not written by facebatch training")
        frame = CropFrame(**(meta.get("crop_frame") or {}))
        return cls(int(meta["input_size"]), bool(meta.get("grey")), frame)


def face_crop(image: np.ndarray, box, frame: CropFrame = CropFrame()) -> tuple[tuple[int, int, int, int], bytes | np.ndarray]:
    """The crop a model sees for one face: ``(crop_box in image pixels, crop)``.

    The crop is JPEG bytes when the frame has a ``jpeg_quality`` (the same bytes the preprocess
    job stores), else a ``uint8 (crop_size, crop_size, 3)`` array.
    """
    cbox = square_crop_box(box, frame.margin)
    crop = crop_square(image, cbox, frame.crop_size)
    return cbox, (encode_jpeg(crop, quality=frame.jpeg_quality) if frame.jpeg_quality else crop)


def decode_crop(crop: bytes | np.ndarray, size: int, grey: bool = False) -> np.ndarray:
    """A stored crop (JPEG bytes or an RGB array) -> ``uint8 (size, size, C)`` model pixels."""
    if isinstance(crop, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(crop))
    else:
        arr = np.asarray(crop)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"a crop must be JPEG bytes or a uint8 (H, W, 3) RGB array, got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr)
    img = img.convert("L" if grey else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if grey else arr


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``uint8 (N, S, S, C)`` model pixels -> ``float32 (N, C, S, S)`` in ``[0, 1]`` (a new tensor)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ValueError(f"expected uint8 (N, S, S, C) pixels, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float().div_(255.0)


def model_input(crops: Sequence[bytes | np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Crops (from :func:`face_crop` or preprocess rows' ``crop`` column) -> a model's input batch."""
    c = 1 if spec.grey else 3
    if len(crops) == 0:
        return torch.zeros((0, c, spec.size, spec.size))
    return to_tensor(np.stack([decode_crop(cr, spec.size, spec.grey) for cr in crops]))
