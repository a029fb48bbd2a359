"""One face-analysis path shared by every command: the input contract, loaded model heads, and
:class:`FaceAnalyzer`.

Layering: core (geometry, imaging, formats, detection, keypoints, attributes, models) ->
**inference** -> jobs and services (preprocess, annotate, serve, evaluation, training) -> cli.
"""
from .analyzer import UNKNOWN, FaceAnalyzer, FaceResult
from .heads import AttributeHead, KeypointHead, load_model
from .inputs import CropFrame, InputSpec, decode_crop, face_crop, model_input, to_tensor

__all__ = ["AttributeHead", "CropFrame", "FaceAnalyzer", "FaceResult", "InputSpec", "KeypointHead", "UNKNOWN",
           "decode_crop", "face_crop", "load_model", "model_input", "to_tensor"]
