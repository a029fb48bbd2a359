"""``FaceAnalyzer``: images in; per face the box, landmarks and every head's outputs out.

One object loads the detector and a list of heads once (:mod:`.heads` for the keypoint and
attribute model files, :mod:`.registry` for any other); :meth:`FaceAnalyzer.analyze` runs the
detector batched over the images and each head once over all the faces, which are cut in each
head's crop frame once per call (:class:`~.registry.FaceBatch`). A head declares its outputs by
kind (:mod:`.outputs`): keypoints, binary attributes, regressions, embeddings; with a gallery the
analyzer adds the identity decision on top of the embedding. Annotate rows, the serve API,
``facebatch analyze`` and ``facebatch enroll`` build their fields from those declarations, so
the same photo gives the same answer everywhere. (The preprocess job uses the detector only.)

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
from ..geometry import order_faces_by_area, square_crop_box
from .heads import AttributeHead, KeypointHead, floats
from .inputs import CropFrame
from .outputs import BINARY, DECISION, EMBEDDING, KEYPOINTS, REGRESSION, Output, kinds_wanted, ordered
from .registry import AnalyzerHead, FaceBatch, create_head

DEFAULT_IDENTITY_THRESHOLD = 0.5
UNKNOWN = "unknown"
IDENTITY = Output("identity", DECISION, "closest gallery person above the threshold, else unknown")


@dataclass
class FaceResult:
    """One face, all coordinates in pixels of the image passed in (x, y pairs flattened).

    ``outputs`` maps each column a head filled (:mod:`.outputs`) to its value; ``declared`` is
    the analyzer's declared outputs, so :meth:`to_dict` gives the same keys whatever was asked
    for. ``to_dict()`` gives the flat record that annotate rows and the serve API use.
    """

    box: list[float]
    score: float
    landmarks: list[float]
    face_size: float
    crop_box: list[float]
    outputs: dict[str, Any] = field(default_factory=dict)
    declared: Sequence[Output] = ()

    def to_dict(self, embedding: bool = True) -> dict[str, Any]:
        """Detection fields, then every declared output's columns: a part that was not computed is
        ``None``, except binary and regression outputs (absent) and embeddings (only with
        ``embedding=True``)."""
        d: dict[str, Any] = {"box": self.box, "score": self.score, "landmarks": self.landmarks,
                             "face_size": self.face_size, "crop_box": self.crop_box}
        for o in self.declared:
            if o.kind == EMBEDDING and not embedding:
                continue
            if o.kind in (BINARY, REGRESSION) and o.name not in self.outputs:
                continue
            for col, _ in o.columns():
                d[col] = self.outputs.get(col)
        return d

    def __getattr__(self, name: str):  # keypoints68, embedding, identity, ...: a declared column's value
        if name in ("outputs", "declared") or name.startswith("__"):
            raise AttributeError(name)
        if any(name == c for o in self.declared for c, _ in o.columns()):
            return self.outputs.get(name)
        raise AttributeError(f"FaceResult has no output {name!r}; declared: "
                             f"{[c for o in self.declared for c, _ in o.columns()]}")

    @property
    def attributes(self) -> dict[str, float]:
        """Binary attribute scores that were computed, by name."""
        return {o.name: self.outputs[o.name] for o in self.declared if o.kind == BINARY and o.name in self.outputs}

    @property
    def labels(self) -> dict[str, bool]:
        return {a: self.outputs[f"{a}_label"] for a in self.attributes}


class FaceAnalyzer:
    """A detector and a list of heads (+ a gallery for identity decisions), loaded once.

    Build with :meth:`load`. The object is also a callable for Ray Data's ``map_batches``
    (a batch dict with an ``image`` column) and for a Ray Serve replica (a list of images).
    """

    def __init__(self, detector: BatchDetector, keypoints: KeypointHead | None = None,
                 attributes: AttributeHead | None = None, gallery=None,
                 identity_threshold: float | None = None, heads: Sequence[AnalyzerHead] = ()) -> None:
        self.detector, self.gallery = detector, gallery
        self.heads: list[AnalyzerHead] = [h for h in (keypoints, attributes) if h is not None] + list(heads)
        if attributes is not None and any(_has_embedding(h) for h in heads):
            attributes.embedding_output = False  # a dedicated identity model gives the embedding
        self._declared = {h: h.declares() for h in self.heads}  # each head's outputs, asked once
        # column -> (the head that gives it, the output it belongs to)
        self._giver = {c: (h, o.name) for h, outs in self._declared.items() for o in outs for c, _ in o.columns()}
        for h in self.heads:
            for col in getattr(h, "requires", ()):
                if self._giver.get(col, (h,))[0] is h:
                    raise ValueError(f"head {h.name!r} needs {col!r}, which no loaded head gives "
                                     "(load a keypoint model, or choose another alignment)")
        declared = [o for outs in self._declared.values() for o in outs]
        if gallery is not None and self.embedding_head is None:
            raise ValueError("a gallery needs a model with an identity embedding")
        if any(o.kind == EMBEDDING for o in declared):
            declared.append(IDENTITY)
        self.outputs: list[Output] = ordered(declared)
        if identity_threshold is None and gallery is not None:
            identity_threshold = (gallery.metadata.get("threshold")
                                  or getattr(self.embedding_head, "meta", {}).get("verification_threshold")
                                  or DEFAULT_IDENTITY_THRESHOLD)
        self.identity_threshold = identity_threshold
        self.timings: dict[str, float] = {"detect": 0.0, "crop": 0.0,
                                          **{_timing_key(h): 0.0 for h in self.heads}}

    @classmethod
    def load(cls, detector: str | BatchDetector = "mobilenet", keypoints: str | None = "keypoints68",
             attributes: str | None = "attributes", gallery: str | None = None, device: str = "cpu",
             identity_threshold: float | None = None, runtime: str | None = None,
             heads: Sequence[str] = (), identity: str | None = None, **detector_options) -> "FaceAnalyzer":
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
            heads: more heads by registered name (``name`` or ``module:name``, :mod:`.registry`).
            identity: where the ``embedding`` comes from: ``identity`` (the shipped recognition network,
                :mod:`.identity`), an identity ``.json``/``.dat``, or an attributes model with an embedding
                (e.g. ``attributes``' LDA embedding, for comparisons); ``None``: no embedding (a gallery
                implies ``identity``). Load it only where an output needs it (a gallery, embeddings,
                people): it processes biometric data.
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
        extra = [create_head(h, device=device, runtime=runtime) for h in heads]
        if gallery and not _wanted(identity):
            identity = "identity"
        if at is not None:  # the attributes model's own embedding only where it is the identity model asked for
            at.embedding_output = _wanted(identity) and str(identity) == str(attributes)
        if _wanted(identity) and not (at is not None and at.embedding_output):
            extra.append(_identity_head(identity, device, runtime))
        g = None
        if gallery:
            from ..attributes.gallery import Gallery
            from ..attributes.models import state_dict_sha256
            emb = next((h for h in (at, *extra) if h is not None and _has_embedding(h)), None)
            if emb is None:
                raise ValueError(f"--gallery needs an identity model with an embedding; {identity!r} has none")
            g = Gallery.load(gallery, expected_model_hash=state_dict_sha256(emb.model))
        return cls(det, kp, at, g, identity_threshold, heads=extra)

    # ------------------------------------------------------------------ heads
    @property
    def keypoints(self) -> KeypointHead | None:
        """The keypoint model head, if one is loaded."""
        return next((h for h in self.heads if isinstance(h, KeypointHead)), None)

    @property
    def attributes(self) -> AttributeHead | None:
        """The attribute model head, if one is loaded."""
        return next((h for h in self.heads if isinstance(h, AttributeHead)), None)

    @property
    def embedding_head(self) -> AnalyzerHead | None:
        """The head whose ``embedding`` the gallery matches, if any."""
        giver = self._giver.get("embedding")
        return giver[0] if giver and giver[1] == "embedding" else None

    @property
    def attribute_names(self) -> list[str]:
        """Binary attribute outputs, in row order."""
        return [o.name for o in self.outputs if o.kind == BINARY]

    def columns(self) -> list[tuple[str, str]]:
        """``(column, dtype)`` of every declared output, in row order (:mod:`.outputs`)."""
        return [c for o in self.outputs for c in o.columns()]

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
        emb = self.embedding_head
        if emb is not None:
            out["identity"] = {**emb.describe(), "embedding_dim": getattr(emb, "embedding_dim", None)}
        for h in self.heads:
            if not isinstance(h, (KeypointHead, AttributeHead)) and h is not emb:
                out.setdefault("heads", {})[h.name] = {**h.describe(), "outputs": [o.name for o in self._declared[h]]}
        if self.gallery is not None:
            out["gallery"] = {"people": len(self.gallery), "threshold": self.identity_threshold,
                              "source": self.gallery.metadata.get("source")}
        return out

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
            keypoints, attributes, identity, embedding: skip output kinds per call
                (:data:`~.outputs.PARTS`: ``attributes`` covers binary and regression outputs);
                a head none of whose outputs is asked for does not run.
            faces: detections already made for these images (skips the detector).

        Returns:
            One list per image of :class:`FaceResult`, largest face first.
        """
        if faces is None:
            faces = self.detect(images)
        if max_faces is not None:
            faces = [f[:max_faces] for f in faces]
        batch = FaceBatch(images, [(i, f) for i, fs in enumerate(faces) for f in fs])
        results: list[list[FaceResult]] = [[] for _ in images]
        if not len(batch):
            return results
        kinds = kinds_wanted(keypoints=keypoints, attributes=attributes, identity=identity, embedding=embedding)
        decide = DECISION in kinds and self.gallery is not None
        for head, wanted in self._plan(kinds, decide):
            self._run_head(head, batch, wanted)
        if decide:
            names = self.gallery.match(np.asarray(batch.values["embedding"]), float(self.identity_threshold))
            batch.values["identity"] = [n for n, _ in names]
            batch.values["identity_similarity"] = [float(s) for _, s in names]
        asked = {c for o in self.outputs if o.kind in kinds for c, _ in o.columns()}
        batch.values = {c: v for c, v in batch.values.items() if c in asked}  # not what only fed another head
        frame = next((h.input.frame for h in self.heads if getattr(h, "input", None) is not None), CropFrame())
        for k, (i, f) in enumerate(batch.faces):
            x1, y1, x2, y2 = (float(v) for v in f.box)
            outputs = {c: _plain(v[k]) for c, v in batch.values.items()}
            results[i].append(FaceResult(box=floats(f.box), score=float(f.score), landmarks=floats(f.landmarks),
                                         face_size=min(x2 - x1, y2 - y1),
                                         crop_box=floats(square_crop_box(f.box, frame.margin)),
                                         outputs=outputs, declared=self.outputs))
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
    def _plan(self, kinds: set[str], decide: bool) -> list[tuple[AnalyzerHead, set[str]]]:
        """Heads to run, in order, with the outputs each must give: those of the kinds asked for,
        the embedding a gallery decision needs, and what a running head ``requires`` of another."""
        wanted = {h: {o.name for o in outs if o.kind in kinds} for h, outs in self._declared.items()}
        if decide:
            wanted[self.embedding_head].add("embedding")
        for h in reversed(self.heads):  # a head needs only heads before it
            if wanted[h]:
                for col in getattr(h, "requires", ()):
                    producer, output = self._giver[col]
                    wanted[producer].add(output)
        return [(h, wanted[h]) for h in self.heads if wanted[h]]

    def _run_head(self, head: AnalyzerHead, batch: FaceBatch, wanted: set[str]) -> None:
        """Run one head; keep the columns of the outputs asked for; time it (its crops apart)."""
        frame = getattr(head, "input", None)
        if frame is not None:
            t = time.perf_counter()
            batch.crops(frame.frame)
            self.timings["crop"] += time.perf_counter() - t
        t = time.perf_counter()
        vals = head.run(batch, wanted)
        self.timings[_timing_key(head)] += time.perf_counter() - t
        keep = {c for o in self._declared[head] if o.name in wanted for c, _ in o.columns()}
        for col, v in vals.items():
            if col in keep:
                if len(v) != len(batch):
                    raise RuntimeError(f"head {head.name!r} gave {len(v)} values of {col!r} for {len(batch)} faces")
                batch.values[col] = v


def _identity_head(identity: str, device: str, runtime: str | None) -> AnalyzerHead:
    """An identity model as a head: :class:`~.identity.IdentityHead` for identity models, else an
    attributes model file's embedding alone."""
    from ..identity.meta import is_identity_model
    from .identity import IdentityHead
    if is_identity_model(identity):
        return IdentityHead(identity, device=device, runtime=runtime)
    head = AttributeHead.load(identity, device, runtime=runtime)
    if not head.has_embedding:
        raise ValueError(f"identity model {identity!r} has no identity embedding")
    head.attributes, head.thresholds = [], {}  # its embedding only: the attributes come from --attributes
    return head


def _timing_key(head) -> str:
    if isinstance(head, KeypointHead):
        return "keypoints"
    if isinstance(head, AttributeHead):
        return "attributes"
    return head.name


def _has_embedding(head) -> bool:
    return any(o.kind == EMBEDDING and o.name == "embedding" for o in head.declares())


def _plain(v):
    """A per-face value as results carry it: arrays become float lists, numpy scalars Python."""
    if isinstance(v, np.ndarray):
        return [float(x) for x in v.reshape(-1)]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _wanted(model: str | None) -> bool:
    return model is not None and str(model).lower() not in ("", "none")
