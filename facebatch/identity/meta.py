"""Identity model descriptions (torch-free, so a job's driver can validate options).

The shipped ``identity`` model is ``facebatch/release/identity.json``: which network file
(``face_recognition_models``' ``dlib_face_recognition_resnet_model_v1.dat``, by sha256; the
weights are never committed, they are converted on first use into the user cache), which
landmarks align the chip, and the verification threshold fitted at a stated false-accept rate
(the ``unknown`` decision of galleries). Its card is ``identity.md`` beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

RELEASE_DIR = Path(__file__).resolve().parent.parent / "release"
ALIGNMENTS = ("keypoints68", "retinaface")


def is_identity_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names an identity model (shipped json, a json or a dlib .dat file),
    as opposed to an attributes model file with an embedding."""
    p = Path(str(name_or_path)).expanduser()
    return p.suffix in (".json", ".dat") or (RELEASE_DIR / f"{name_or_path}.json").is_file()


def identity_meta(name_or_path: str = "identity") -> dict:
    """The identity model's description: the shipped name's ``release/<name>.json``, a JSON file
    of the same form, or a dlib ``.dat`` file (aligned on keypoints68, no fitted threshold)."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".dat" and p.is_file():
        return {"name": p.stem, "dat": str(p), "align": "keypoints68"}
    path = p if p.suffix == ".json" and p.is_file() else RELEASE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"identity model {name_or_path!r} is neither a shipped identity model "
                                f"({', '.join(sorted(q.stem for q in RELEASE_DIR.glob('*.json'))) or 'none'}), "
                                "an identity .json nor a dlib .dat file")
    meta = json.loads(path.read_text())
    meta.setdefault("name", path.stem)
    return {**meta, "path": str(path)}
