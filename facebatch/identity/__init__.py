"""Face identity without training: dlib's metric face-recognition ResNet, in torch.

* :mod:`.dlibfile`: a reader for dlib's serialisation format (no dlib needed at run time);
* :mod:`.resnet`: the network as a torch module, loaded from ``face_recognition_models``'
  ``.dat`` file and cached as a state dict; :func:`embed` for batched 128-d descriptors;
* :mod:`.align`: 150x150 chips aligned exactly as dlib's ``get_face_chip`` makes them.

>>> model = load_dlib_resnet()                                      # doctest: +SKIP
>>> chip = chip_from_ibug68(image_rgb, keypoints68)                 # doctest: +SKIP
>>> d = embed(chip[None], model)      # (1, 128); same person if L2 < 0.6   # doctest: +SKIP
"""
from __future__ import annotations

from .align import (DLIB5_TEMPLATE, IBUG68_TO_DLIB5, RETINAFACE_TEMPLATE, chip_from_ibug68,
                    chip_from_retinaface, face_chip)
from .dlibfile import DlibFormatError

# served lazily from .resnet, so that importing the package (or .align) does not import torch
_FROM_RESNET = ("CHIP_SIZE", "DAT_NAME", "EMBED_DIM", "DlibResNet", "cache_dir", "chips_to_tensor", "convert_dat",
                "embed", "find_dat", "l2_normalize", "load_dlib_resnet")


def __getattr__(name: str):
    if name in _FROM_RESNET:
        from . import resnet
        value = getattr(resnet, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHIP_SIZE", "DAT_NAME", "DLIB5_TEMPLATE", "EMBED_DIM", "IBUG68_TO_DLIB5", "RETINAFACE_TEMPLATE",
           "DlibFormatError", "DlibResNet", "cache_dir", "chip_from_ibug68", "chip_from_retinaface",
           "chips_to_tensor", "convert_dat", "embed", "face_chip", "find_dat", "l2_normalize", "load_dlib_resnet"]
