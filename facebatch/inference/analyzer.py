"""``FaceAnalyzer``: images in; per face the box, landmarks, keypoints, attributes and identity out.

One object loads the detector and every model once; :meth:`FaceAnalyzer.analyze` runs the
detector batched over the images, cuts every face of every image in the models' crop frame
(:mod:`.inputs`), and runs each model once over all the faces. The preprocess, annotate and
serve paths, ``facebatch analyze`` and ``facebatch enroll`` all use it, so the same photo gives
the same answer everywhere.

    >>> fa = FaceAnalyzer.load()                           # doctest: +SKIP
    >>> faces = fa.analyze([rgb])[0]                       # doctest: +SKIP
    >>> faces[0]["keypoints68"][:2], faces[0]["smile_label"]  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..detection import BatchDetector, Face, create_detector
from ..geometry import order_faces_by_area, points_from_crop
from ..keypoints.schemes import ibug68_to_kaggle15
from .heads import AttributeHead, KeypointHead
from .inputs import CropFrame, decode_crop, face_crop, model_input

DEFAULT_IDENTITY_THRESHOLD = 0.5
UNKNOWN = "unknown"


@dataclass
class FaceResult:
    """One face, all coordinates in pixels of the image passed in (x, y pairs flattened).

    ``attributes`` maps each attribute to its score; ``labels`` to ``score >= threshold`` with
    the threshold stored in the model file. ``to_dict()`` gives the flat record that annotate
    rows and the serve API use.
    """

    box: list[float]
    score: float
    landmarks: list[float]
    face_size: float
    crop_box: list[float]
    keypoints68: list[float] | None = None
    keypoints15: list[float] | None = None
    attributes: dict[str, float] = field(default_factory=dict)
    labels: dict[str, bool] = field(default_factory=dict)
    embedding: list[float] | None = None
    identity: str | None = None
    identity_similarity: float | None = None

    def to_dict(self, embedding: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"box": self.box, "score": self.score, "landmarks": self.landmarks,
                             "face_size": self.face_size, "crop_box": self.crop_box,
                             "keypoints68": self.keypoints68, "keypoints15": self.keypoints15}
        for a, s in self.attributes.items():
            d[a] = s
            d[f"{a}_label"] = self.labels[a]
        d["identity"], d["identity_similarity"] = self.identity, self.identity_similarity
        if embedding:
            d["embedding"] = self.embedding
        return d


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float64).reshape(-1)]


class FaceAnalyzer:
    """Detector + keypoint model + attribute/identity model (+ gallery), loaded once.

    Build with :meth:`load`. The object is also a callable for Ray Data's ``map_batches``
    (a batch dict with an ``image`` column) and for a Ray Serve replica (a list of images).
    """

    def __init__(self, detector: BatchDetector, keypoints: KeypointHead | None = None,
                 attributes: AttributeHead | None = None, gallery=None,
                 identity_threshold: float | None = None) -> None:
        self.detector, self.keypoints, self.attributes, self.gallery = detector, keypoints, attributes, gallery
        if gallery is not None and (attributes is None or not attributes.has_embedding):
            raise ValueError("a gallery needs an attributes model with an identity embedding")
        if identity_threshold is None and gallery is not None:
            identity_threshold = (gallery.metadata.get("threshold")
                                  or attributes.meta.get("verification_threshold") or DEFAULT_IDENTITY_THRESHOLD)
        self.identity_threshold = identity_threshold
        self.timings: dict[str, float] = {"detect": 0.0, "crop": 0.0, "keypoints": 0.0, "attributes": 0.0}

    @classmethod
    def load(cls, detector: str | BatchDetector = "mobilenet", keypoints: str | None = "keypoints68",
             attributes: str | None = "attributes", gallery: str | None = None, device: str = "cpu",
             identity_threshold: float | None = None, runtime: str | None = None,
             **detector_options) -> "FaceAnalyzer":
        """Load every model once.

        Args:
            detector: detector backend (``mobilenet``, ``resnet50``) or a built detector.
            keypoints: shipped name (``keypoints68``, ``keypoints15``), model file, or ``None`` to skip.
            attributes: shipped name (``attributes``), model file, or ``None`` to skip.
            gallery: an ``enroll`` gallery (.npz) for identities, or ``None``.
            device: torch device for every model (``cpu``, ``cuda``).
            identity_threshold: cosine similarity below which a face is ``unknown`` (default: the
                gallery's, else the model's, else 0.5).
            runtime: what runs the detector, keypoint and attribute networks: ``auto`` (onnxruntime on CPU,
                torch on CUDA), ``torch`` or ``onnxruntime``; ``None``: ``$FACEBATCH_CPU_RUNTIME``,
                else ``auto``. onnxruntime falls back to torch with a warning if it cannot be used;
                :meth:`describe` says which ran. The resnet50 detector runs in torch.
            **detector_options: :class:`~facebatch.detection.DetectorConfig` fields
                (``score_threshold``, ``max_side``, ``weights_dir``, ...).
        """
        det = detector if isinstance(detector, BatchDetector) else create_detector(detector, device=device,
                                                                                   **detector_options)
        if hasattr(det.backend, "set_runtime"):
            if runtime is not None:
                det.backend.set_runtime(runtime)
            det.backend.prepare()  # export/check now, not in the first analyze call
        kp = KeypointHead.load(keypoints, device, runtime=runtime) if _wanted(keypoints) else None
        at = AttributeHead.load(attributes, device, runtime=runtime) if _wanted(attributes) else None
        g = None
        if gallery:
            from ..attributes.gallery import Gallery
            from ..attributes.models import state_dict_sha256
            if at is None:
                raise ValueError("--gallery needs an attributes model with an identity embedding")
            g = Gallery.load(gallery, expected_model_hash=state_dict_sha256(at.model))
        return cls(det, kp, at, g, identity_threshold)

    # ------------------------------------------------------------------ provenance
    def describe(self) -> dict:
        """Each model's name and sha256, the detector config, the runtime that ran each network:
        what produced a result."""
        runtime = getattr(self.detector.backend, "runtime_info", None) or {"runtime": "torch"}
        out = {"detector": {**self.detector.info, "runtime": runtime},
               "keypoints": self.keypoints.describe() if self.keypoints else None,
               "attributes": None, "gallery": None}
        if self.attributes:
            out["attributes"] = {**self.attributes.describe(), "attributes": self.attributes.attributes,
                                 "thresholds": self.attributes.thresholds}
        if self.gallery is not None:
            out["gallery"] = {"people": len(self.gallery), "threshold": self.identity_threshold,
                              "source": self.gallery.metadata.get("source")}
        return out

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attributes.attributes) if self.attributes else []

    # ------------------------------------------------------------------ the path
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image, largest first (the order of ``face_index``). Batched, but only images
        with the same padded network input share a batch, so every image gets exactly the faces
        it gets alone: annotate, serve and ``analyze`` agree whatever else is in the batch."""
        t = time.perf_counter()
        faces = [order_faces_by_area(f) for f in self.detector.detect(list(images), exact=True)] if len(images) else []
        self.timings["detect"] += time.perf_counter() - t
        return faces

    def analyze(self, images: Sequence[np.ndarray], max_faces: int | None = None, keypoints: bool = True,
                attributes: bool = True, identity: bool = True, embedding: bool = True,
                faces: list[list[Face]] | None = None) -> list[list[FaceResult]]:
        """Analyze RGB ``uint8 (H, W, 3)`` images of any sizes.

        Args:
            images: the images.
            max_faces: keep only the largest N faces of each image (``None``: all).
            keypoints, attributes, identity, embedding: skip parts per call (a model that was
                not loaded is always skipped).
            faces: detections already made for these images (skips the detector).

        Returns:
            One list per image of :class:`FaceResult`, largest face first.
        """
        if faces is None:
            faces = self.detect(images)
        if max_faces is not None:
            faces = [f[:max_faces] for f in faces]
        flat = [(i, f) for i, fs in enumerate(faces) for f in fs]
        results = [[] for _ in images]
        if not flat:
            return results
        t = time.perf_counter()
        crops = self._crops(images, flat)
        self.timings["crop"] += time.perf_counter() - t
        recs = []
        for i, f in flat:
            x1, y1, x2, y2 = (float(v) for v in f.box)
            recs.append(FaceResult(box=_floats(f.box), score=float(f.score), landmarks=_floats(f.landmarks),
                                   face_size=min(x2 - x1, y2 - y1), crop_box=[]))
            results[i].append(recs[-1])
        if self.keypoints is not None and keypoints:
            t = time.perf_counter()
            self._run_keypoints(crops, recs)
            self.timings["keypoints"] += time.perf_counter() - t
        if self.attributes is not None and (attributes or identity or embedding):
            t = time.perf_counter()
            self._run_attributes(crops, recs, attributes, identity, embedding)
            self.timings["attributes"] += time.perf_counter() - t
        first = next(iter(crops.values()))
        for r, cbox in zip(recs, first[0]):
            r.crop_box = _floats(cbox)
        return results

    def __call__(self, batch):
        """Ray Data / Ray Serve entry point.

        * a dict batch with an ``image`` column (RGB arrays; ``None`` for an image that failed
          to decode): returns the other columns plus ``faces``, a list of face dicts per image;
        * a list of images: returns a list of face-dict lists.
        """
        if isinstance(batch, dict):
            images = list(batch["image"])
            ok = [k for k, im in enumerate(images) if im is not None]
            res = self.analyze([np.asarray(images[k]) for k in ok])
            faces: list[Any] = [[] for _ in images]
            for k, r in zip(ok, res):
                faces[k] = [f.to_dict() for f in r]
            return {**{c: v for c, v in batch.items() if c != "image"}, "faces": faces}
        return [[f.to_dict() for f in r] for r in self.analyze([np.asarray(im) for im in batch])]

    # ------------------------------------------------------------------ internals
    def _frames(self) -> list[CropFrame]:
        heads = [h for h in (self.keypoints, self.attributes) if h is not None]
        return list(dict.fromkeys(h.input.frame for h in heads)) or [CropFrame()]

    def _crops(self, images, flat) -> dict[CropFrame, tuple[list, list]]:
        """Per distinct crop frame: (crop boxes, crops) of every face, cut once."""
        out = {}
        for frame in self._frames():
            boxes, crops = [], []
            for i, f in flat:
                cbox, crop = face_crop(images[i], f.box, frame)
                boxes.append(cbox)
                crops.append(crop)
            if frame.jpeg_quality:  # decode each JPEG once; every model resizes from the same pixels
                crops = [decode_crop(c, frame.crop_size) for c in crops]
            out[frame] = (boxes, crops)
        return out

    def _run_keypoints(self, crops, recs: list[FaceResult]) -> None:
        head = self.keypoints
        boxes, cr = crops[head.input.frame]
        unit = head.predict(model_input(cr, head.input))
        for r, u, cbox in zip(recs, unit, boxes):
            pts = points_from_crop(u, cbox)
            if head.scheme.name == "ibug68":
                r.keypoints68 = _floats(pts)
                r.keypoints15 = _floats(ibug68_to_kaggle15(pts[None])[0])
            elif head.scheme.name == "kaggle15":
                r.keypoints15 = _floats(pts)

    def _run_attributes(self, crops, recs, attributes: bool, identity: bool, embedding: bool) -> None:
        head = self.attributes
        _, cr = crops[head.input.frame]
        want_emb = head.has_embedding and (embedding or (identity and self.gallery is not None))
        out = head.outputs(model_input(cr, head.input), embedding=want_emb)
        if attributes:
            for a, s in out["scores"].items():
                t = head.thresholds[a]
                for r, v in zip(recs, s):
                    r.attributes[a] = float(v)
                    r.labels[a] = bool(v >= t)
        emb = out["embedding"]
        if emb is None:
            return
        if identity and self.gallery is not None:
            for r, (name, sim) in zip(recs, self.gallery.match(emb, float(self.identity_threshold))):
                r.identity, r.identity_similarity = name, float(sim)
        if embedding:
            for r, e in zip(recs, emb):
                r.embedding = [float(v) for v in e]


def _wanted(model: str | None) -> bool:
    return model is not None and str(model).lower() not in ("", "none")
