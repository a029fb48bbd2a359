"""Degradations for robustness evaluation and training (pure; real photos from the shared data)."""
from __future__ import annotations

import numpy as np
import pytest

from facebatch.degrade import Degradation, random_degrade
from facebatch.imaging import decode_image


@pytest.fixture(scope="module")
def photo(celeba_root):
    return decode_image(next((celeba_root / "test_dataset" / "celeb_5").glob("*.jpg")).read_bytes()).image


def test_parse_spec_and_errors():
    d = Degradation.parse("jpeg=30, scale=0.5")
    assert (d.scale, d.jpeg, d.blur) == (0.5, 30, 0.0) and str(d) == "scale=0.5,jpeg=30"
    assert Degradation.parse(None).is_identity and Degradation.parse("none").is_identity
    for bad, msg in [("scale=2", "scale must be"), ("size=3", "bad item"), ("jpeg=x", "not a number"),
                     ("jpeg=0", "1-100"), ("scale=0.5,scale=0.4", "twice"), ("blur", "bad item")]:
        with pytest.raises(ValueError, match=msg):
            Degradation.parse(bad)


def test_scale_jpeg_and_blur_change_the_photo_as_said(photo):
    h, w = photo.shape[:2]
    small, (sx, sy) = Degradation.parse("scale=0.5").apply(photo)
    assert small.shape[:2] == (round(h * 0.5), round(w * 0.5)) and sx == pytest.approx(0.5, abs=0.01)
    # antialiased: the small image is close to a box average of the original
    box = photo[: 2 * (h // 2), : 2 * (w // 2)].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
    assert np.abs(small[: h // 2, : w // 2].astype(float) - box).mean() < 6
    q30, s = Degradation.parse("jpeg=30").apply(photo)
    q90, _ = Degradation.parse("jpeg=90").apply(photo)
    assert s == (1.0, 1.0) and q30.shape == photo.shape
    err30, err90 = (np.abs(q.astype(float) - photo).mean() for q in (q30, q90))
    assert err90 < err30 and err30 > 1.0
    blurred, _ = Degradation.parse("blur=2").apply(photo)
    grad = lambda a: np.abs(np.diff(a.astype(float), axis=1)).mean()  # noqa: E731
    assert grad(blurred) < 0.7 * grad(photo)
    same, _ = Degradation.parse("").apply(photo)
    assert same is photo


def test_random_degrade_keeps_the_size_and_varies(photo):
    rng = np.random.default_rng(0)
    outs = [random_degrade(photo, rng, p=1.0) for _ in range(4)]
    assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outs)
    assert len({o.tobytes() for o in outs}) == 4
    assert all(np.abs(o.astype(float) - photo).mean() > 0.5 for o in outs)
