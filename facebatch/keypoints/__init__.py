"""Facial keypoints: schemes, augmentation, metrics, losses and models (pure torch/numpy, no Ray).

Modules: :mod:`.schemes` (layouts, conventions, iBUG-68 -> Kaggle-15), :mod:`.augment`,
:mod:`.metrics`, :mod:`.losses`, :mod:`.models`, :mod:`.draw`.
"""
from .schemes import IBUG68, KAGGLE15, SCHEMES, Scheme, get_scheme, ibug68_to_kaggle15

__all__ = ["IBUG68", "KAGGLE15", "SCHEMES", "Scheme", "get_scheme", "ibug68_to_kaggle15"]
