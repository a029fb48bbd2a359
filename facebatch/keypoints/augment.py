"""Keypoint-aware augmentation: one affine matrix moves the image and its points together.

Geometry (crop, horizontal flip, rotation, scale, shift) is composed into a single ``2x3``
matrix ``M`` that maps pixel-index coordinates of the source image to those of the output
(see :mod:`.schemes` for the conventions). The image is resampled once through ``M`` and the
points are multiplied by ``M``; a flip also reorders points with the scheme's ``flip_perm``
so that "left eye" stays the subject's left eye. Photometric changes (brightness, contrast,
saturation, blur) leave points untouched. Everything random comes from a numpy ``Generator``.

Images are either ``uint8`` numpy arrays ``HxWx3`` / ``HxW``, or float torch tensors ``CxHxW``
with values in ``[0, 1]``; results come back in the type they came in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .schemes import Scheme, get_scheme

ImageLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------- matrices
def _h(m: np.ndarray) -> np.ndarray:
    """2x3 -> 3x3 homogeneous."""
    return np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])


def compose(*matrices: np.ndarray) -> np.ndarray:
    """``compose(A, B)`` applies ``B`` first, then ``A`` (like matrix products). Returns 2x3.

    Args:
        matrices: 2x3 affine matrices.
    """
    out = np.eye(3)
    for m in matrices:
        out = out @ _h(m)
    return out[:2]


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix.

    Args:
        m: 2x3 matrix.
    """
    return np.linalg.inv(_h(m))[:2]


def crop_matrix(box: tuple[float, float, float, float], out_size: tuple[int, int] | int) -> np.ndarray:
    """Matrix taking a crop box of the source to a ``W x H`` output.

    Args:
        box: ``(x0, y0, x1, y1)`` pixel edges in the source, like a PIL crop box (pixel ``x0``
            becomes output pixel 0 at scale 1). May extend past the image.
        out_size: ``(W, H)`` of the output, or one side.
    """
    ow, oh = (out_size, out_size) if np.isscalar(out_size) else out_size
    x0, y0, x1, y1 = map(float, box)
    sx, sy = ow / (x1 - x0), oh / (y1 - y0)
    # out = (src + 0.5 - x0) * s - 0.5
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


def flip_matrix(width: int) -> np.ndarray:
    """Horizontal mirror of a ``width``-pixel-wide image: ``x -> width - 1 - x``.

    Args:
        width: image width in pixels.
    """
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def rotation_matrix(center: tuple[float, float], angle_deg: float = 0.0, scale: float = 1.0,
                    shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotate by ``angle_deg`` (counter-clockwise on screen) and scale about ``center``, then shift.

    Args:
        center: ``(x, y)`` fixed point of rotation and scaling, pixel coordinates.
        angle_deg: rotation; positive turns the content counter-clockwise as displayed.
        scale: zoom factor (> 1 enlarges the content).
        shift: ``(dx, dy)`` pixels added afterwards.
    """
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    cx, cy = center
    # y points down, so [[c, s], [-s, c]] is counter-clockwise on screen
    return np.array([[c, s, cx - c * cx - s * cy + shift[0]],
                     [-s, c, cy + s * cx - c * cy + shift[1]]])


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to ``(..., 2)`` points (NaN stays NaN).

    Args:
        points: pixel coordinates.
        m: 2x3 matrix.
    """
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


# ---------------------------------------------------------------- image plumbing
def _to_tensor(image: ImageLike) -> tuple[torch.Tensor, str]:
    """Any supported image -> float CHW tensor in [0, 1], plus a tag to convert back."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(f"tensor images must be float CxHxW in [0, 1], got {image.dtype} {tuple(image.shape)}")
        return image.float(), "tensor"
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 HxWx3 or HxW, got {arr.dtype}")
    if arr.ndim == 2:
        return torch.from_numpy(arr.copy()).float().div_(255.0)[None], "u8_hw"
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0), "u8_hwc"


def _from_tensor(x: torch.Tensor, tag: str) -> ImageLike:
    if tag == "tensor":
        return x
    arr = (x.clamp(0, 1) * 255.0).round_().to(torch.uint8).numpy()
    return arr[0] if tag == "u8_hw" else np.ascontiguousarray(arr.transpose(1, 2, 0))


def warp_affine(image: ImageLike, m: np.ndarray, out_size: tuple[int, int] | int,
                border: str = "zeros", antialias: bool = True) -> ImageLike:
    """Resample ``image`` so that source point ``p`` lands on output point ``m @ p``.

    Bilinear sampling; when ``m`` shrinks by more than 1.5x the source is first reduced with an
    antialiased resize (folded into the matrix), so big photos -> small crops do not alias.

    Args:
        image: uint8 HxWx3 / HxW array, or float CxHxW tensor in [0, 1].
        m: 2x3 matrix, source pixel coords -> output pixel coords.
        out_size: ``(W, H)`` of the output, or one side.
        border: ``"zeros"``, ``"border"`` (repeat edge) or ``"reflection"``.
        antialias: pre-shrink large sources as described above.
    """
    x, tag = _to_tensor(image)
    ow, oh = (out_size, out_size) if np.isscalar(out_size) else out_size
    m = np.asarray(m, dtype=np.float64)
    zoom = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if antialias and zoom < 1 / 1.5:
        h, w = x.shape[-2:]
        nh, nw = max(1, round(h * zoom)), max(1, round(w * zoom))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        m = compose(m, invert(crop_matrix((0, 0, w, h), (nw, nh))))  # resized -> source -> out
    h, w = x.shape[-2:]
    inv = torch.from_numpy(invert(m)).float()
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=torch.float32), torch.arange(ow, dtype=torch.float32),
                            indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ inv.T  # (oh, ow, 2) source pixel coords
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], -1)
    out = F.grid_sample(x[None], grid[None], mode="bilinear", padding_mode=border, align_corners=False)[0]
    return _from_tensor(out, tag)


# ---------------------------------------------------------------- photometric
def color_jitter(image: ImageLike, brightness: float = 1.0, contrast: float = 1.0,
                 saturation: float = 1.0) -> ImageLike:
    """Scale brightness, contrast (about the mean grey) and saturation (about each pixel's grey).

    Args:
        image: uint8 array or float CxHxW tensor in [0, 1].
        brightness, contrast, saturation: factors; 1 leaves the image unchanged.
    """
    x, tag = _to_tensor(image)
    x = x * brightness
    grey = _grey(x)
    x = (x - grey.mean()) * contrast + grey.mean()
    if x.shape[0] == 3:
        grey = _grey(x)
        x = (x - grey) * saturation + grey
    return _from_tensor(x.clamp(0, 1), tag)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1:
        return x
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def gaussian_blur(image: ImageLike, sigma: float) -> ImageLike:
    """Separable Gaussian blur with reflected edges.

    Args:
        image: uint8 array or float CxHxW tensor in [0, 1].
        sigma: standard deviation in pixels (<= 0 returns the image unchanged).
    """
    if sigma <= 0:
        return image
    x, tag = _to_tensor(image)
    r = max(1, min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1))  # reflect padding needs r < side
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[0]
    y = F.pad(x[None], (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)[0]
    return _from_tensor(y, tag)


# ---------------------------------------------------------------- the augmenter
@dataclass
class AugmentConfig:
    """Ranges for :func:`augment`; each value is drawn uniformly in its range.

    Attributes:
        flip_p: probability of a horizontal flip.
        rotate_deg: rotation drawn in ``[-rotate_deg, rotate_deg]``.
        scale: zoom range ``(lo, hi)``.
        shift: maximum shift as a fraction of the output side, each axis.
        brightness, contrast, saturation: factors drawn in ``[1 - v, 1 + v]``.
        blur_p: probability of a Gaussian blur, sigma drawn in ``blur_sigma`` (output pixels).
        border: padding for pixels from outside the source (see :func:`warp_affine`).
        downscale_p: probability of a resolution loss: the output is shrunk to a factor drawn in
            ``downscale`` (antialiased) and brought back up (bilinear), as a small face in a
            photo looks once cropped and resized to the model's input.
        occlude_p: probability of an occluder: a rectangle of random grey level whose sides are
            drawn in ``occlude_size`` (fractions of the output side). Points keep their labels,
            so the model learns to place hidden points from the rest of the face.
    """

    flip_p: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    border: str = "zeros"
    downscale_p: float = 0.0
    downscale: tuple[float, float] = (0.25, 1.0)
    occlude_p: float = 0.0
    occlude_size: tuple[float, float] = (0.15, 0.4)


NO_AUGMENT = AugmentConfig(flip_p=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0,
                           contrast=0.0, saturation=0.0, blur_p=0.0)


@dataclass
class AugmentResult:
    """Output of :func:`augment`.

    Attributes:
        image: augmented image, same type as the input.
        points: ``(K, 2)`` points in output pixels, already reordered when ``flipped``.
        matrix: the 2x3 source -> output matrix used for both image and points.
        flipped: whether a horizontal flip (and the point permutation) was applied.
        params: the drawn values, for logging and tests.
    """

    image: ImageLike
    points: np.ndarray
    matrix: np.ndarray
    flipped: bool
    params: dict = field(default_factory=dict)


def _size_of(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return int(image.shape[1]), int(image.shape[0])


def geometry(rng: np.random.Generator, out_size: tuple[int, int], config: AugmentConfig,
             base: np.ndarray | None = None) -> tuple[np.ndarray, bool, dict]:
    """Draw the geometric part: returns ``(matrix, flipped, params)``.

    Args:
        rng: numpy random generator.
        out_size: ``(W, H)`` of the output.
        config: ranges.
        base: matrix applied first (e.g. :func:`crop_matrix`); identity if ``None``.
    """
    ow, oh = out_size
    flipped = bool(rng.random() < config.flip_p)
    angle = float(rng.uniform(-config.rotate_deg, config.rotate_deg))
    scale = float(rng.uniform(*config.scale))
    shift = (float(rng.uniform(-config.shift, config.shift) * ow), float(rng.uniform(-config.shift, config.shift) * oh))
    center = ((ow - 1) / 2.0, (oh - 1) / 2.0)
    m = rotation_matrix(center, angle, scale, shift)
    if flipped:
        m = compose(m, flip_matrix(ow))
    if base is not None:
        m = compose(m, base)
    return m, flipped, {"flip": flipped, "angle": angle, "scale": scale, "shift": shift}


def augment(image: ImageLike, points: np.ndarray, scheme: Scheme | str, rng: np.random.Generator,
            config: AugmentConfig | None = None, out_size: tuple[int, int] | int | None = None,
            crop_box: tuple[float, float, float, float] | None = None) -> AugmentResult:
    """Randomly crop/flip/rotate/scale/shift image and points together, then jitter colours and blur.

    Args:
        image: uint8 HxWx3 / HxW array or float CxHxW tensor in [0, 1].
        points: ``(K, 2)`` pixel coordinates of ``image``; NaN allowed (stays NaN).
        scheme: keypoint layout (for the flip permutation); ``K`` must match it.
        rng: numpy random generator; the same seed gives the same result.
        config: ranges; default :class:`AugmentConfig()`. Use :data:`NO_AUGMENT` for crop only.
        out_size: output ``(W, H)`` or one side; default the crop box size or the input size.
        crop_box: ``(x0, y0, x1, y1)`` in source pixels mapped onto the output before the random
            transform (which acts about the output centre); default the whole image.
    """
    scheme = get_scheme(scheme)
    config = config or AugmentConfig()
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (scheme.n_points, 2):
        raise ValueError(f"points must be ({scheme.n_points}, 2) for {scheme.name}, got {points.shape}")
    w, h = _size_of(image)
    box = crop_box if crop_box is not None else (0, 0, w, h)
    if out_size is None:
        out_size = (round(box[2] - box[0]), round(box[3] - box[1]))
    out_size = (out_size, out_size) if np.isscalar(out_size) else tuple(out_size)
    m, flipped, params = geometry(rng, out_size, config, base=crop_matrix(box, out_size))
    out = warp_affine(image, m, out_size, border=config.border)
    pts = transform_points(points, m)
    if flipped:
        pts = pts[list(scheme.flip_perm)]
    b, c, s = (float(rng.uniform(1 - v, 1 + v)) for v in (config.brightness, config.contrast, config.saturation))
    params.update(brightness=b, contrast=c, saturation=s)
    if (b, c, s) != (1.0, 1.0, 1.0):
        out = color_jitter(out, b, c, s)
    blur = float(rng.uniform(*config.blur_sigma)) if rng.random() < config.blur_p else 0.0
    params["blur_sigma"] = blur
    if blur > 0:
        out = gaussian_blur(out, blur)
    factor = float(rng.uniform(*config.downscale)) if rng.random() < config.downscale_p else 1.0
    params["downscale"] = factor
    if factor < 1.0:
        out = downscale_up(out, factor)
    if rng.random() < config.occlude_p:
        ow, oh = out_size
        bw, bh = (int(round(float(rng.uniform(*config.occlude_size)) * side)) for side in (ow, oh))
        x0, y0 = int(rng.integers(0, max(1, ow - bw + 1))), int(rng.integers(0, max(1, oh - bh + 1)))
        level = float(rng.uniform(0.0, 1.0))
        params["occluder"] = (x0, y0, x0 + bw, y0 + bh)
        out = occlude(out, (x0, y0, x0 + bw, y0 + bh), level)
    return AugmentResult(out, pts, m, flipped, params)


def downscale_up(image: ImageLike, factor: float) -> ImageLike:
    """Lose resolution: shrink by ``factor`` with antialiasing, then resize back up (bilinear).

    Args:
        image: uint8 array or float CxHxW tensor in [0, 1].
        factor: in ``(0, 1]``; 1 returns the image unchanged.
    """
    if factor >= 1.0:
        return image
    x, tag = _to_tensor(image)
    h, w = x.shape[-2:]
    small = (max(2, round(h * factor)), max(2, round(w * factor)))
    y = F.interpolate(x[None], size=small, mode="bilinear", antialias=True, align_corners=False)
    y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)[0]
    return _from_tensor(y.clamp(0, 1), tag)


def occlude(image: ImageLike, box: tuple[int, int, int, int], level: float) -> ImageLike:
    """Paint ``box`` = ``(x0, y0, x1, y1)`` (output pixels, end exclusive) a flat grey ``level`` in [0, 1]."""
    x, tag = _to_tensor(image)
    x = x.clone()
    x0, y0, x1, y1 = box
    x[:, y0:y1, x0:x1] = level
    return _from_tensor(x, tag)


def hflip(image: ImageLike, points: np.ndarray, scheme: Scheme | str) -> tuple[ImageLike, np.ndarray]:
    """Mirror an image left-right and move/reorder its points accordingly.

    Args:
        image: uint8 HxWx3 / HxW array or float CxHxW tensor.
        points: ``(K, 2)`` pixel coordinates; NaN allowed.
        scheme: layout with the left/right permutation.
    """
    scheme = get_scheme(scheme)
    w, _ = _size_of(image)
    if isinstance(image, torch.Tensor):
        flipped = image.flip(-1)
    else:
        flipped = np.ascontiguousarray(np.asarray(image)[:, ::-1])
    pts = transform_points(points, flip_matrix(w))[list(scheme.flip_perm)]
    return flipped, pts
