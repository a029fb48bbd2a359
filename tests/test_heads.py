"""The head seam: a head registered outside the package, named in the config, shows up in
``analyze`` with its declared columns (annotate and serve: tests/test_heads_jobs.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facebatch.imaging import decode_image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the head is named tests.brightness_head, as Ray workers import it
    sys.path.insert(0, str(ROOT))

HEAD = "tests.brightness_head:brightness"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def analyzer(mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    return FaceAnalyzer.load(weights_path=str(mobilenet_weights), keypoints=None, attributes=None, heads=[HEAD])


@pytest.fixture(scope="module")
def images(udacity_root):
    names = sorted(p.name for p in (udacity_root / "training").iterdir())[::700][:4]
    return [decode_image((udacity_root / "training" / n).read_bytes()).image for n in names]


def test_named_head_gives_its_column_with_real_values(analyzer, images):
    from facebatch.inference import CropFrame, face_crop
    assert ("brightness", "float") in analyzer.columns()
    assert "keypoints68" not in dict(analyzer.columns())  # no keypoint head: no keypoint column
    res = analyzer.analyze(images)
    assert all(r for r in res), "every udacity68 frame has a face"
    for img, faces in zip(images, res):
        d = faces[0].to_dict()
        # independent: the crop the frame gives, to grey, resized to 32 px, mean / 255
        _, crop = face_crop(img, faces[0].box, CropFrame())
        grey = Image.open(__import__("io").BytesIO(crop)).convert("L").resize((32, 32), Image.BILINEAR)
        assert d["brightness"] == pytest.approx(np.asarray(grey, np.float64).mean() / 255, abs=1e-4)
    dark = analyzer.analyze([(im // 2).astype(np.uint8) for im in images], faces=analyzer.detect(images))
    for a, b in zip(res, dark):
        assert b[0].brightness == pytest.approx(a[0].brightness / 2, abs=0.02)
    assert "brightness" in analyzer.describe()["heads"]


def test_switches_and_unknown_names(analyzer, images):
    from facebatch.inference import FaceAnalyzer
    f = analyzer.analyze(images[:1], attributes=False)[0][0].to_dict()
    assert "brightness" not in f  # a regression output is an attribute-kind part
    with pytest.raises(ValueError, match="unknown head 'nope'.*brightness"):
        FaceAnalyzer.load(detector=analyzer.detector, keypoints=None, attributes=None, heads=["nope"])
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        FaceAnalyzer.load(detector=analyzer.detector, keypoints=None, attributes=None, heads=["no_such_module:x"])


def test_two_outputs_of_one_name_are_refused():
    from facebatch.inference.outputs import BINARY, REGRESSION, Output, ordered
    with pytest.raises(ValueError, match="declared by two outputs"):
        ordered([Output("smile", BINARY), Output("smile_label", REGRESSION)])
    with pytest.raises(ValueError, match="unknown kind"):
        Output("x", "histogram")
