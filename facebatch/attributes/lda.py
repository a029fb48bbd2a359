"""Closed-form identity projection: PCA then Fisher LDA on backbone features (numpy only).

A small network trained with a margin loss on a few hundred people learns an embedding that fits
those people and transfers poorly to new ones. The backbone's spatial feature map keeps more of
what tells faces apart; a linear discriminant fitted on the training people (celeba6k's 168;
adding udacity68's video frames made it worse, see docs/MODELS.md) turns it into an embedding in
which same-person variation is whitened away. This is the classic "deep features + LDA" recipe of face verification, fitted in
seconds, with no gradient steps.

:func:`fit_lda` returns ``(mean, proj)``; an embedding is ``normalise((x - mean) @ proj)`` where
``x`` is the L2-normalised feature vector (:meth:`MultiTaskFaceNet.lda_features`).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def fit_lda(features: Any, people: Any, dim: int = 256, pca_dim: int = 384, reg: float = 0.1,
            min_images: int = 2) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit the projection on ``features`` of labelled people.

    Steps: centre; keep the top ``pca_dim`` principal directions (the within-class scatter of
    a few thousand faces in 6,400 dimensions is singular without this); whiten the within-class
    scatter, shrunk towards a multiple of the identity by ``reg`` (a share of its mean
    eigenvalue); then keep the ``dim`` directions of largest between-class spread.

    Args:
        features: ``(n, d)`` L2-normalised feature vectors (float).
        people: person id per row ``(n,)``; people with fewer than ``min_images`` rows are left
            out (they carry no within-person variation).
        dim: embedding size (at most ``people - 1`` and ``pca_dim``).
        pca_dim: principal directions kept before LDA.
        reg: within-class shrinkage, > 0.
        min_images: rows a person needs to count.

    Returns:
        ``(mean (d,), proj (d, k), info)``, float32; ``info`` holds the counts and settings.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(people).ravel()
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be (n, d) with one person per row; got {x.shape} and {y.shape}")
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    _, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_images
    x, inv = x[keep], inv[keep]
    _, inv = np.unique(inv, return_inverse=True)
    n_people = int(inv.max() + 1) if len(inv) else 0
    if n_people < 3:
        raise ValueError(f"LDA needs at least 3 people with {min_images}+ images each; got {n_people}")
    pca_dim = int(min(pca_dim, x.shape[1], len(x) - 1))
    dim = int(min(dim, n_people - 1, pca_dim))
    mean = x.mean(0)
    xc = x - mean
    # principal directions (float32 SVD: the bulk of the fit's time at 16k x 6,400)
    _, _, vt = np.linalg.svd(xc.astype(np.float32), full_matrices=False)
    p = vt[:pca_dim].T.astype(np.float64)
    z = xc @ p
    class_means = np.zeros((n_people, pca_dim))
    np.add.at(class_means, inv, z)
    class_means /= np.bincount(inv, minlength=n_people)[:, None]
    within = z - class_means[inv]
    sw = within.T @ within / len(z)
    sw += reg * np.trace(sw) / pca_dim * np.eye(pca_dim)
    centred_means = class_means - class_means.mean(0)
    sb = centred_means.T @ centred_means / n_people
    ev, v = np.linalg.eigh(sw)
    whiten = v / np.sqrt(ev)
    ev2, v2 = np.linalg.eigh(whiten.T @ sb @ whiten)
    order = np.argsort(ev2)[::-1][:dim]
    proj = p @ whiten @ v2[:, order]
    info = {"people": n_people, "images": int(len(x)), "left_out_images": int((~keep).sum()), "dim": dim,
            "pca_dim": pca_dim, "reg": float(reg), "feature_dim": int(x.shape[1]),
            "between_within_ratio_top": float(ev2[order[0]]), "between_within_ratio_last": float(ev2[order[-1]])}
    return mean.astype(np.float32), proj.astype(np.float32), info


def project(features: Any, mean: Any, proj: Any) -> np.ndarray:
    """Unit-length embeddings ``normalise((features - mean) @ proj)`` (the model's arithmetic)."""
    e = (np.asarray(features, dtype=np.float64) - mean) @ np.asarray(proj, dtype=np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
