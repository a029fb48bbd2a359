"""The quality gate: which faces are good enough to be clustered (pure numpy; Pillow for crops).

A face is clusterable when all of these hold (:class:`QualityGate`, defaults in brackets):

* it has an embedding (annotate ran with ``--embeddings``), else reason ``no_embedding``;
* ``face_size`` (shorter side of the box, pixels) >= ``min_face_size`` [40]: the identity model
  works on 150 px chips; udacity68's faces of 30-40 px cluster with BCubed F 0.73, those over
  80 px with 0.85 (``small``);
* detector ``score`` >= ``min_score`` [0.9] (``low_score``);
* pose from the 68 points, |yaw| <= ``max_yaw`` [60 degrees], |pitch| <= ``max_pitch``
  [40 degrees] (``pose``; see :func:`head_pose`); a face without ``keypoints68`` passes this test.
  On celeba6k, faces up to 60 degrees of yaw still cluster with BCubed F 0.92 (0.96 frontal),
  beyond it 0.52;
* blur, when the row has a ``crop`` (annotate ``--crops``): variance of the Laplacian of the crop's
  grey levels >= ``min_sharpness`` [15] (``blurry``), measured at the face's own resolution (the
  256 px crop resized to 1.4 x ``face_size``, 32 to 128 px), so a small but sharp face is not taken
  for a blurred one. Sharp faces score 87 or more (1st percentile, celeba6k) and 32 or more
  (udacity68's video frames); a Gaussian blur of sigma 1% of the crop's side brings the medians to
  29 and 26, 2% to 6.

The first failing test is the face's ``gate`` reason; gated faces get no person and are listed in
``faces.parquet`` with the reason, never forced into a person.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

#: the 68-point (iBUG 300-W) indices used for pose, and an approximate adult mean face in
#: millimetres: x to the image right, y down, z away from the camera; nose tip at the origin. The
#: textbook 6-point head model plus the inner eye corners and the nose bottom, tilted 6.7 degrees
#: about x so that GENKI-4K's labelled poses give no mean pitch error (400 photos: yaw MAE 5.0,
#: pitch MAE 6.7 degrees; yaw correlation 0.96).
POSE_POINTS = (30, 8, 36, 39, 42, 45, 33, 48, 54)
MEAN_FACE_3D = np.array([
    (0.0, 0.0, 0.0),       # 30 nose tip
    (0.0, 70.9, 22.4),     # 8  chin
    (-50.0, -41.2, 25.4),  # 36 image-left eye, outer corner
    (-16.0, -39.9, 22.5),  # 39 image-left eye, inner corner
    (16.0, -39.9, 22.5),   # 42 image-right eye, inner corner
    (50.0, -41.2, 25.4),   # 45 image-right eye, outer corner
    (0.0, 10.3, 15.3),     # 33 nose bottom (subnasale)
    (-33.0, 29.5, 31.7),   # 48 mouth, image-left corner
    (33.0, 29.5, 31.7),    # 54 mouth, image-right corner
], dtype=np.float64)

REASONS = ("no_embedding", "small", "low_score", "pose", "blurry")


@dataclass(frozen=True)
class QualityGate:
    """Thresholds of the gate (see the module doc); ``None`` turns a test off."""

    min_face_size: float | None = 40.0
    min_score: float | None = 0.9
    max_yaw: float | None = 60.0
    max_pitch: float | None = 40.0
    min_sharpness: float | None = 15.0


def head_pose(keypoints68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(yaw, pitch)`` in degrees of faces ``(N, 136)`` (flat x, y pairs in pixels).

    A scaled-orthographic (affine) camera is fitted by least squares to the 9 points of
    :data:`MEAN_FACE_3D` (``x = A X + t``, a closed form shared by all faces), its two rows are
    made orthonormal, and the face's forward axis is read off the rotation. Yaw is positive when
    the face turns to the image right, pitch positive when it looks down. Rows with missing points
    give NaN.
    """
    kp = np.asarray(keypoints68, np.float64).reshape(-1, 68, 2)[:, POSE_POINTS, :]
    X = MEAN_FACE_3D - MEAN_FACE_3D.mean(0)
    P = X @ np.linalg.inv(X.T @ X)  # (m, 3): A = x_c^T P
    xc = kp - kp.mean(1, keepdims=True)
    A = np.einsum("nmi,mj->nij", xc, P)  # (N, 2, 3)
    r1 = A[:, 0] / np.linalg.norm(A[:, 0], axis=1, keepdims=True)
    r2 = A[:, 1] - (A[:, 1] * r1).sum(1, keepdims=True) * r1
    r2 /= np.linalg.norm(r2, axis=1, keepdims=True)
    r3 = np.cross(r1, r2)  # camera z (away from the camera) in model coordinates
    # the model's -z axis (out of the face) in camera coordinates is -(r1[2], r2[2], r3[2])
    fx, fy, fz = -r1[:, 2], -r2[:, 2], -r3[:, 2]
    yaw = np.degrees(np.arctan2(fx, -fz))
    pitch = np.degrees(np.arctan2(fy, np.hypot(fx, fz)))
    return yaw, pitch


def sharpness(crop_jpeg: bytes, size: int = 128) -> float:
    """Variance of the 4-neighbour Laplacian of a face crop's grey levels, resized to ``size`` px."""
    size = int(min(max(size, 32), 128))
    from PIL import Image
    with Image.open(io.BytesIO(crop_jpeg)) as im:
        g = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def gate(n: int, gate: QualityGate, has_embedding: np.ndarray, face_size=None, score=None,
         keypoints68=None, crops=None) -> np.ndarray:
    """The gate reason of each of ``n`` faces (``object`` array, ``None`` = passes).

    Args:
        has_embedding: ``bool (n,)``.
        face_size, score: ``(n,)`` floats (NaN = unknown, passes), or ``None`` (column absent).
        keypoints68: ``(n, 136)`` floats (NaN rows pass), or ``None``.
        crops: a list of JPEG ``bytes`` (``None`` entries pass), or ``None``.
    """
    reason = np.full(n, None, dtype=object)

    def mark(fails: np.ndarray, why: str) -> None:
        fails = np.asarray(fails, bool) & np.equal(reason, None)
        reason[fails] = why

    mark(~np.asarray(has_embedding, bool), "no_embedding")
    with np.errstate(invalid="ignore"):
        if gate.min_face_size is not None and face_size is not None:
            mark(np.asarray(face_size, np.float64) < gate.min_face_size, "small")
        if gate.min_score is not None and score is not None:
            mark(np.asarray(score, np.float64) < gate.min_score, "low_score")
        if keypoints68 is not None and (gate.max_yaw is not None or gate.max_pitch is not None):
            yaw, pitch = head_pose(keypoints68)
            bad = np.zeros(n, bool)
            if gate.max_yaw is not None:
                bad |= np.abs(yaw) > gate.max_yaw
            if gate.max_pitch is not None:
                bad |= np.abs(pitch) > gate.max_pitch
            mark(bad, "pose")
    if crops is not None and gate.min_sharpness is not None:
        todo = [i for i in range(n) if reason[i] is None and crops[i] is not None]
        side = np.full(n, 128.0) if face_size is None else np.nan_to_num(np.asarray(face_size, float) * 1.4, nan=128)
        blurry = [i for i in todo if sharpness(crops[i], round(side[i])) < gate.min_sharpness]
        mark(np.isin(np.arange(n), blurry), "blurry")
    return reason
