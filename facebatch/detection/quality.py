"""Checking detections against 68-point labels (iBUG order). Pure numpy.

A detection *is* the labelled face when its box contains the centre of the labelled
points. Landmark error compares the 5 detector points with: the mean of each eye's 6
points (36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54), divided by
the inter-ocular distance between the outer eye corners (36, 45).
"""
from __future__ import annotations

import numpy as np

from .detector import Face


def five_from_ibug68(pts: np.ndarray) -> np.ndarray:
    """The ``(5, 2)`` reference points in detector order from ``(68, 2)`` iBUG points."""
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(np.float32)


def interocular(pts: np.ndarray) -> float:
    return float(np.linalg.norm(pts[36] - pts[45]))


def labelled_centre(pts: np.ndarray) -> np.ndarray:
    return np.nanmean(pts, axis=0)


def match_labelled_face(faces: list[Face], pts: np.ndarray) -> Face | None:
    """The highest-scoring face whose box contains the labelled points' centre, or ``None``."""
    cx, cy = labelled_centre(pts)
    for f in faces:  # faces arrive highest score first
        x1, y1, x2, y2 = f.box
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return f
    return None


def landmark_errors(face: Face, pts: np.ndarray) -> np.ndarray:
    """Per-landmark error divided by the inter-ocular distance, ``(5,)``."""
    ref = five_from_ibug68(pts)
    return np.linalg.norm(face.landmarks - ref, axis=1) / max(interocular(pts), 1e-6)
