"""Open-set identity gallery on synthetic embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from facebatch.attributes.gallery import UNKNOWN, Gallery, l2_normalise


def _people(seed: int = 0, n_people: int = 5, per: int = 4, dim: int = 16, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(n_people, dim)))
    names = [f"person_{i}" for i in range(n_people)]
    emb, who = [], []
    for i, name in enumerate(names):
        for _ in range(per):
            emb.append(3.0 * (centres[i] + noise * rng.normal(size=dim)))  # not unit length on purpose
            who.append(name)
    return np.array(emb), who, centres, rng


def test_centroids_counts_and_match():
    emb, who, centres, rng = _people()
    g = Gallery.from_embeddings(emb, who, model_name="multitask", model_hash="abc")
    assert len(g) == 5 and g.names[0] == "person_0" and g.counts.tolist() == [4] * 5
    expect = l2_normalise(l2_normalise(emb[:4]).mean(0))
    np.testing.assert_allclose(g.centroids[0], expect, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(g.centroids, axis=1), 1.0, rtol=1e-6)
    queries = np.vstack([centres[2] + 0.05 * rng.normal(size=16), centres[4], -centres[0]])
    res = g.match(queries, threshold=0.7)
    assert [r[0] for r in res] == ["person_2", "person_4", UNKNOWN]
    assert res[1][1] > 0.99 and res[2][1] < 0.7
    assert g.match(centres[1], threshold=1.1)[0][0] == UNKNOWN  # above any cosine: nobody is known
    assert g.similarities(queries).shape == (3, 5)


def test_add_is_exact_and_validates():
    emb, who, _, _ = _people(seed=1)
    whole = Gallery.from_embeddings(emb, who)
    parts = Gallery.from_embeddings(emb[::2], who[::2])
    parts.add(emb[1::2], who[1::2])
    assert sorted(parts.names) == sorted(whole.names)
    order = [parts.names.index(n) for n in whole.names]
    np.testing.assert_allclose(parts.centroids[order], whole.centroids, rtol=1e-6)
    assert parts.counts[order].tolist() == whole.counts.tolist()
    with pytest.raises(ValueError, match="reserved"):
        whole.add(emb[:1], [UNKNOWN])
    with pytest.raises(ValueError, match="names"):
        whole.add(emb[:2], ["a"])


def test_empty_gallery_matches_nobody():
    g = Gallery(8)
    assert g.match(np.ones((2, 8)), threshold=0.0) == [(UNKNOWN, -1.0), (UNKNOWN, -1.0)]


def test_save_load_roundtrip(tmp_path):
    emb, who, centres, _ = _people(seed=2)
    g = Gallery.from_embeddings(emb, who, model_name="multitask", model_hash="f00d", threshold=0.42)
    path = g.save(tmp_path / "sub" / "gallery")
    assert path.name == "gallery.npz" and path.exists()
    back = Gallery.load(path, expected_model_hash="f00d")
    assert back.names == g.names and back.counts.tolist() == g.counts.tolist()
    np.testing.assert_allclose(back.centroids, g.centroids)
    assert back.metadata == {"model_name": "multitask", "model_hash": "f00d", "threshold": 0.42}
    assert back.match(centres, 0.5) == g.match(centres, 0.5)
    with pytest.raises(ValueError, match="rebuild"):
        Gallery.load(path, expected_model_hash="other")
