"""Open-set identity gallery: one centroid per known person, "unknown" below a threshold.

A person's centroid is the mean of their L2-normalised embeddings, re-normalised. The gallery
keeps the un-normalised means and the counts so that more embeddings can be added exactly.
Saved as one ``.npz`` (``allow_pickle=False``) holding the arrays and a JSON metadata string
(model name, model hash, embedding size, ...); :meth:`Gallery.load` can refuse a gallery built
with a different model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

UNKNOWN = "unknown"
FORMAT_VERSION = 1


def l2_normalise(x: Any) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero).

    Args:
        x: ``(n, d)`` array.
    """
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Gallery:
    """Known people and their centroid embeddings.

    Args:
        emb_dim: embedding size.
        metadata: free JSON-serialisable metadata; ``model_name`` and ``model_hash`` are the
            conventional keys (see :func:`facebatch.attributes.models.state_dict_sha256`).
    """

    def __init__(self, emb_dim: int, metadata: dict[str, Any] | None = None) -> None:
        self.emb_dim = int(emb_dim)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.names: list[str] = []
        self.means = np.zeros((0, self.emb_dim), dtype=np.float64)
        self.counts = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_embeddings(cls, embeddings: Any, people: Sequence[Any], model_name: str | None = None,
                        model_hash: str | None = None, **metadata: Any) -> "Gallery":
        """Build a gallery from embeddings and the person of each.

        Args:
            embeddings: ``(n, d)`` embeddings (need not be normalised).
            people: person name per embedding (converted to ``str``).
            model_name: the model that produced the embeddings.
            model_hash: its weights hash.
            **metadata: more metadata to record.
        """
        emb = np.asarray(embeddings, dtype=np.float64)
        meta = {"model_name": model_name, "model_hash": model_hash, **metadata}
        g = cls(emb.shape[1], meta)
        g.add(emb, people)
        return g

    def __len__(self) -> int:
        return len(self.names)

    def add(self, embeddings: Any, people: Sequence[Any]) -> None:
        """Add embeddings of new or known people (known people's centroids are updated exactly).

        Args:
            embeddings: ``(n, d)``.
            people: person name per embedding.
        """
        emb = l2_normalise(np.asarray(embeddings, dtype=np.float64).reshape(-1, self.emb_dim))
        people = [str(p) for p in people]
        if len(people) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(people)} person names")
        if UNKNOWN in people:
            raise ValueError(f"{UNKNOWN!r} is reserved for non-matches; rename that person")
        index = {n: i for i, n in enumerate(self.names)}
        for name in dict.fromkeys(people):
            sel = emb[[p == name for p in people]]
            if name in index:
                i = index[name]
                c = self.counts[i]
                self.means[i] = (self.means[i] * c + sel.sum(0)) / (c + len(sel))
                self.counts[i] = c + len(sel)
            else:
                index[name] = len(self.names)
                self.names.append(name)
                self.means = np.vstack([self.means, sel.mean(0, keepdims=True)])
                self.counts = np.r_[self.counts, len(sel)]

    @property
    def centroids(self) -> np.ndarray:
        """Unit-length centroids ``(n_people, d)``, float32."""
        return l2_normalise(self.means).astype(np.float32)

    def similarities(self, embeddings: Any) -> np.ndarray:
        """Cosine similarity ``(n, n_people)`` of (normalised) embeddings to every centroid.

        Args:
            embeddings: ``(n, d)``.
        """
        emb = l2_normalise(np.asarray(embeddings, dtype=np.float64).reshape(-1, self.emb_dim))
        return emb @ l2_normalise(self.means).T

    def match(self, embeddings: Any, threshold: float) -> list[tuple[str, float]]:
        """Nearest person per embedding, or ``"unknown"`` when the best similarity is below
        ``threshold``. The similarity returned is always the best one found (-1.0 for an empty
        gallery).

        Args:
            embeddings: ``(n, d)`` or ``(d,)``.
            threshold: cosine-similarity threshold (e.g. a verification threshold from
                :func:`facebatch.attributes.metrics.verification_accuracy`).
        """
        emb = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.emb_dim)
        if len(self) == 0:
            return [(UNKNOWN, -1.0)] * len(emb)
        sims = self.similarities(emb)
        best = sims.argmax(axis=1)
        out = []
        for row, k in enumerate(best):
            s = float(sims[row, k])
            out.append((self.names[k] if s >= threshold else UNKNOWN, s))
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the gallery to one ``.npz`` file (suffix added when missing); returns the path.

        Args:
            path: destination file.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, "format_version": FORMAT_VERSION, "emb_dim": self.emb_dim,
                "n_people": len(self)}
        np.savez(path, names=np.array(self.names, dtype=np.str_), means=self.means, counts=self.counts,
                 metadata=np.array(json.dumps(meta, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, expected_model_hash: str | None = None) -> "Gallery":
        """Read a gallery written by :meth:`save`.

        Args:
            path: the ``.npz`` file.
            expected_model_hash: when given, refuse a gallery built with another model.
        """
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"]))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported gallery format {meta.get('format_version')!r}")
            g = cls(int(meta["emb_dim"]), {k: v for k, v in meta.items()
                                            if k not in ("format_version", "emb_dim", "n_people")})
            g.names = [str(n) for n in z["names"]]
            g.means = np.asarray(z["means"], dtype=np.float64).reshape(-1, g.emb_dim)
            g.counts = np.asarray(z["counts"], dtype=np.int64)
        if expected_model_hash is not None and g.metadata.get("model_hash") != expected_model_hash:
            raise ValueError(f"{path}: gallery was built with model hash {g.metadata.get('model_hash')!r}, "
                             f"not {expected_model_hash!r}; rebuild it with the current model")
        return g
