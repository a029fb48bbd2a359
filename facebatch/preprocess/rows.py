"""Turning one decoded input and its detections into output rows. Pure: no Ray, no I/O.

Shared by the preprocess job, evaluation on raw datasets, and annotation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .. import schema as S
from ..geometry import match_labelled_face, order_faces_by_area, points_to_crop, square_crop_box
from ..inference.inputs import CropFrame, face_crop


@dataclass(frozen=True)
class CropConfig:
    """How faces become crops.

    Args:
        crop_size: side of the square crop in pixels.
        margin: each side of the square grows by this fraction of the face box's larger side.
        all_faces: one row per face instead of only the largest.
        keep_crops: store JPEG crop bytes (``--no-crops`` turns this off).
        jpeg_quality: quality of the stored crops.
    """

    crop_size: int = 256
    margin: float = 0.2
    all_faces: bool = False
    keep_crops: bool = True
    jpeg_quality: int = 95

    @property
    def frame(self) -> CropFrame:
        """The crop frame of the stored crops (what models trained on them record in their meta)."""
        return CropFrame(self.margin, self.crop_size, self.jpeg_quality)

    def validate(self) -> "CropConfig":
        if not 16 <= self.crop_size <= 2048:
            raise ValueError(f"--crop-size must be between 16 and 2048, got {self.crop_size}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"--margin must be between 0 and 2, got {self.margin}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must be between 1 and 100, got {self.jpeg_quality}")
        return self


def label_fields(record) -> dict:
    """The label columns of a row from an input record (keypoints in original pixels)."""
    kp = getattr(record, "keypoints", None)
    attrs = getattr(record, "attributes", None) or None
    return {
        S.KP_SCHEME: getattr(record, "keypoint_scheme", None) if kp is not None else None,
        S.KEYPOINTS: None if kp is None else np.asarray(kp, np.float32).reshape(-1).tolist(),
        S.ATTRIBUTES: None if attrs is None else json.dumps({k: int(v) for k, v in sorted(attrs.items())}),
        S.IDENTITY: getattr(record, "identity", None),
        S.PERSON: getattr(record, "person", None),
    }


def rows_for_image(base: dict, image: np.ndarray | None, faces: list, record, cfg: CropConfig) -> list[dict]:
    """Output rows for one input.

    Args:
        base: columns already known (path, sha256, size, status, error, split).
        image: the decoded RGB image, or ``None`` when decoding failed.
        faces: detections for the image (any order).
        record: the input record, for labels.
        cfg: crop options.

    Returns:
        One row, or one per face with ``cfg.all_faces``; an input without a face still gives one row.
    """
    row = {**S.empty_row(), **base, **label_fields(record)}
    if image is None or base.get(S.STATUS) != S.OK:
        return [row]
    faces = order_faces_by_area(faces)
    row[S.N_FACES] = len(faces)
    if not faces:
        row.update({S.STATUS: S.NO_FACE, S.FACE_INDEX: -1,
                    S.ERROR: "no face found above the score threshold"})
        return [row]
    kp = getattr(record, "keypoints", None)
    chosen = list(enumerate(faces))
    matched = None
    if kp is not None:  # the labelled points belong to one face, not always the largest
        matched = match_labelled_face([f.box for f in faces], kp)
    if not cfg.all_faces:
        chosen = chosen[matched:matched + 1] if matched is not None else chosen[:1]
    out = []
    for i, face in chosen:
        r = dict(row)
        if cfg.keep_crops:  # the crop every model's input is built from (facebatch.inference.inputs)
            cbox, r[S.CROP] = face_crop(image, face.box, cfg.frame)
        else:
            cbox = square_crop_box(face.box, cfg.margin)
        r.update({S.FACE_INDEX: i, S.BOX: [float(v) for v in face.box], S.SCORE: float(face.score),
                  S.LANDMARKS: np.asarray(face.landmarks, np.float32).reshape(-1).tolist(),
                  S.CROP_BOX: [float(v) for v in cbox], S.CROP_SIZE: cfg.crop_size})
        if kp is not None and i != matched:
            r[S.ERROR] = ("the labelled points lie on another face" if matched is not None else
                          "the labelled points match no detected face; keypoint labels left empty")
        elif kp is not None:
            px, norm = points_to_crop(np.asarray(kp, np.float32), cbox, cfg.crop_size)
            r[S.KEYPOINTS_CROP] = px.reshape(-1).tolist()
            r[S.KEYPOINTS_NORM] = norm.reshape(-1).tolist()
        out.append(r)
    return out
