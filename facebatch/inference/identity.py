"""The ``identity`` model as an analyzer head: dlib's metric face-recognition ResNet
(:mod:`facebatch.identity`) on chips aligned from each face's landmarks, one unit-length 128-d
``embedding`` per face, batched over every face of an ``analyze`` call.

The shipped ``identity`` model and its description: :mod:`facebatch.identity.meta`.

It needs landmarks: ``align: "keypoints68"`` reads the keypoint head's ``keypoints68`` (the
analyzer runs that head first even when keypoints were not asked for); ``"retinaface"`` uses the
detector's five landmarks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..identity import chip_from_ibug68, chip_from_retinaface
from ..identity.meta import ALIGNMENTS, identity_meta
from ..identity.project import project
from ..runtime import accelerate
from .outputs import EMBEDDING, Output
from .registry import FaceBatch


def projection_of(meta: dict) -> dict | None:
    """The fitted embedding map named by an identity model's ``projection`` (an .npz beside its json)."""
    name = meta.get("projection")
    if not name:
        return None
    path = Path(meta["path"]).parent / name
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("mean", "basis", "radius")}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"identity model {meta.get('name')!r}: cannot read its projection {path} ({exc}); "
                         "reinstall facebatch or refit with tools/fit_identity_model.py") from None


class IdentityHead:
    """Analyzer head of an identity model (see the module doc).

    Args:
        name_or_path: ``identity`` (shipped), an identity ``.json`` or a dlib ``.dat`` file.
        device: torch device.
        runtime: ``auto`` (onnxruntime on CPU, torch on CUDA), ``torch``, ``onnxruntime`` or ``None``
            (``$FACEBATCH_CPU_RUNTIME``), as for the other heads.
        align: override the model's alignment (:data:`ALIGNMENTS`).
    """

    task = "identity"
    embedding_dim = 128

    def __init__(self, name_or_path: str = "identity", device: str = "cpu", runtime: str | None = None,
                 align: str | None = None, project: bool = True) -> None:
        from ..identity import load_dlib_resnet
        self.meta = identity_meta(name_or_path)
        self.projection = projection_of(self.meta) if project else None
        self.align = align or self.meta.get("align", "keypoints68")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"identity alignment must be one of {ALIGNMENTS}, got {self.align!r}")
        self.requires = ("keypoints68",) if self.align == "keypoints68" else ()
        self.model = load_dlib_resnet(self.meta.get("dat"), device=device)
        want = self.meta.get("dat_sha256")
        if want and want != self.model.source_sha256:
            raise ValueError(f"identity model {self.meta['name']!r} was fitted on the network file with sha256 "
                             f"{want[:12]}..., but {self.model.source_sha256[:12]}... was found; install "
                             "face_recognition_models 0.3.0 or point FACEBATCH_WEIGHTS_DIR at that file")
        self.device = torch.device(device)
        example = torch.rand((2, 3, 150, 150), generator=torch.Generator().manual_seed(0)) * 255
        self.runner, self.runtime_info = accelerate(self.model, example, runtime, self.device,
                                                    what=f"identity {self.name}")
        self.input = None  # cuts its own aligned chips, from the photo
        # what the face's box, grown by a quarter each side, must span in the image chips are cut
        # from (annotate decodes big JPEGs again at a finer scale below it): the chip's 150 px
        self.crop_need = (150, 0.25)

    @property
    def name(self) -> str:
        return self.meta["name"]

    def declares(self) -> list[Output]:
        return [Output("embedding", EMBEDDING, f"128-d unit-length identity embedding ({self.name}, dlib ResNet)")]

    def chips(self, faces: FaceBatch) -> np.ndarray:
        """``uint8 (N, 150, 150, 3)`` aligned chips of the batch's faces."""
        out = np.zeros((len(faces), 150, 150, 3), np.uint8)
        for k, (i, f) in enumerate(faces.faces):
            if self.align == "keypoints68":
                out[k] = chip_from_ibug68(faces.images[i], np.reshape(faces.values["keypoints68"][k], (68, 2)))
            else:
                out[k] = chip_from_retinaface(faces.images[i], np.reshape(f.landmarks, (5, 2)))
        return out

    @torch.inference_mode()
    def raw_descriptors(self, chips: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """dlib's raw 128-d descriptors ``(N, 128)`` of aligned chips (``compute_face_descriptor``'s)."""
        x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
        parts = [self.runner(x[i:i + batch_size].to(self.device)).float().cpu().numpy()
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)

    def embed_chips(self, chips: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings ``(N, 128)`` of aligned chips: the model's projection of the raw
        descriptors (:mod:`facebatch.identity.project`), or the descriptors L2-normalised."""
        y = self.raw_descriptors(chips, batch_size)
        if self.projection is not None:
            return project(y, **self.projection)
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def run(self, faces: FaceBatch, wanted: set[str]) -> dict[str, np.ndarray]:
        return {"embedding": self.embed_chips(self.chips(faces))}

    def describe(self) -> dict:
        return {"name": self.name, "path": self.meta.get("path"), "model": "dlib_resnet_v1",
                "dat_sha256": self.model.source_sha256, "align": self.align,
                "verification_threshold": self.meta.get("verification_threshold"),
                "runtime": dict(self.runtime_info)}
