"""dlib's metric face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in torch.

The network is ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``: 150x150 RGB
chips, ``(x - mean) / 256``, a 7x7/2 convolution (32 filters, no padding), affine, relu, 3x3/2
max pooling, 14 residual blocks (32, 64, 128 and 256 filters; four of them downsample with a
3x3/2 unpadded convolution while their shortcut takes a 2x2/2 average pool), a global average
pool and a 128-d fully connected layer without bias. Where a block's two branches differ in size
(more channels on the main path; from 8 px the main path gives 3 px and the shortcut 4, from 4 px
1 and 2) dlib's ``add_prev`` adds them zero-padded at the end (bottom, right, last channels).

The weights are read from dlib's file with :mod:`.dlibfile` (dlib is not needed), each affine
(frozen batch norm) folded into the convolution before it, and the result cached as a torch
state dict under ``<facebatch cache>/dlib`` (next to ``runtime``'s ONNX exports), keyed by the
``.dat`` file's sha256, so later loads skip the parse.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import cache_dir as _onnx_cache_dir
from ..weights import WeightsError, find_weights, load_into, load_state_dict, sha256_file
from .dlibfile import read_network

log = logging.getLogger(__name__)

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
EMBED_DIM = 128
_FORMAT = 1  # bump when the module's layout or the conversion changes
# (width, downsamples) of the residual blocks in forward order: alevel4 .. alevel0
BLOCKS = ([(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
          + [(256, True)] + [(256, False)] * 2 + [(256, True)])


def _pool_fields(n: int, s: int) -> dict:
    return {"nr": n, "nc": n, "stride_y": s, "stride_x": s, "padding_y": 0, "padding_x": 0}


def _con_fields(n: int, k: int, s: int) -> dict:
    pad = 0 if s != 1 else k // 2  # dlib's con_ default padding
    return {"num_filters": n, "nr": k, "nc": k, "stride_y": s, "stride_x": s, "padding_y": pad, "padding_x": pad}


def dlib_layout() -> list[tuple[str, dict]]:
    """``anet_type`` below the loss, outermost layer first, as :func:`.dlibfile.read_network` takes it."""
    out: list[tuple[str, dict]] = [("fc", {"num_outputs": EMBED_DIM, "num_inputs": 256, "bias_mode": 1}),
                                   ("avg_pool", _pool_fields(0, 1))]
    for width, down in reversed(BLOCKS):
        block = [("affine", {}), ("con", _con_fields(width, 3, 1)), ("relu", {}), ("affine", {}),
                 ("con", _con_fields(width, 3, 2 if down else 1))]
        if down:  # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<...>>>>>>>
            out += [("relu", {}), ("add_prev", {}), ("avg_pool", _pool_fields(2, 2)), ("skip", {}), ("tag", {}),
                    *block, ("tag", {})]
        else:  # relu<add_prev1<block<tag1<...>>>>
            out += [("relu", {}), ("add_prev", {}), *block, ("tag", {})]
    out += [("max_pool", _pool_fields(3, 2)), ("relu", {}), ("affine", {}), ("con", _con_fields(32, 7, 2))]
    return out


class _Block(nn.Module):
    """relu(conv2(relu(conv1(x))) + shortcut(x)), the two summed zero-padded to a common size."""

    def __init__(self, cin: int, cout: int, down: bool, size: int) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        main = (size - 3) // 2 + 1 if down else size
        short = (size - 2) // 2 + 1 if down else size
        self.out_size = max(main, short)
        self.pad_main = self.out_size - main
        self.pad_short = (self.out_size - short, cout - cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        s = F.avg_pool2d(x, 2, 2) if self.down else x
        if self.pad_main:
            y = F.pad(y, (0, self.pad_main, 0, self.pad_main))
        if any(self.pad_short):
            p, c = self.pad_short
            s = F.pad(s, (0, p, 0, p, 0, c))
        return F.relu(y + s)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: ``(B, 3, 150, 150)`` float RGB in 0..255 -> ``(B, 128)``,
    the raw descriptor (not L2-normalised) that dlib's ``compute_face_descriptor`` returns."""

    input_size = CHIP_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, cin, size = [], 32, ((CHIP_SIZE - 7) // 2 + 1 - 3) // 2 + 1
        for width, down in BLOCKS:
            blocks.append(_Block(cin, width, down, size))
            cin, size = width, blocks[-1].out_size
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, EMBED_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def _fold(con, affine) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights and bias with the following per-channel affine ``gamma*x + beta`` folded in."""
    g = torch.from_numpy(affine.tensors["gamma"]).double()
    b = torch.from_numpy(affine.tensors["beta"]).double()
    w = torch.from_numpy(con.tensors["weight"]).double()
    bias = torch.from_numpy(con.tensors["bias"]).double()
    return (w * g[:, None, None, None]).float(), (bias * g + b).float()


def convert_dat(dat_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read dlib's ``.dat`` file into a :class:`DlibResNet` state dict; raises
    :class:`.dlibfile.DlibFormatError` naming the file if it is not this network."""
    _, layers, inp = read_network(dat_path, "loss_metric", dlib_layout(), "input_rgb_image_sized")
    if (inp.fields["nr"], inp.fields["nc"]) != (CHIP_SIZE, CHIP_SIZE):
        raise WeightsError(f"{dat_path}: input is {inp.fields['nr']}x{inp.fields['nc']}, expected 150x150")
    fwd = layers[::-1]  # forward order
    pairs = [(fwd[i], fwd[i + 1]) for i, layer in enumerate(fwd) if layer.kind == "con"]
    if any(a.kind != "affine" for _, a in pairs) or any(a.fields["mode"] != 0 for _, a in pairs):
        raise WeightsError(f"{dat_path}: every convolution should be followed by a per-channel affine layer")
    model = DlibResNet()
    convs = [model.stem] + [c for b in model.blocks for c in (b.conv1, b.conv2)]
    state = {"mean": torch.tensor([inp.fields[k] for k in ("avg_red", "avg_green", "avg_blue")],
                                  dtype=torch.float32).view(1, 3, 1, 1)}
    names = {id(m): n for n, m in model.named_modules()}
    for conv, (con, affine) in zip(convs, pairs, strict=True):
        w, b = _fold(con, affine)
        state[f"{names[id(conv)]}.weight"], state[f"{names[id(conv)]}.bias"] = w, b
    fc = fwd[-1]
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(fc.tensors["weight"].T))
    return state


def _package_models_dir() -> list[Path]:
    """``face_recognition_models/models`` if that package is installed (found without importing
    it: its ``__init__`` needs ``pkg_resources``, gone from recent setuptools)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "models" for p in spec.submodule_search_locations]


def find_dat(dat_path: str | os.PathLike | None = None, name: str = DAT_NAME) -> Path:
    """``dat_path``, else ``name`` in the weights search path (``$FACEBATCH_WEIGHTS_DIR``, the
    user cache, the data folder) or the installed ``face_recognition_models`` package."""
    if dat_path is not None:
        p = Path(dat_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"dlib model file {p} not found")
        return p
    return find_weights(name, extra=_package_models_dir(),
                        hint="Install dlib's public-domain models with `pip install face_recognition_models`.")


def cache_dir() -> Path:
    """``<facebatch cache root>/dlib`` (default ``~/.cache/facebatch/dlib``; ``$FACEBATCH_CACHE_DIR``)."""
    return _onnx_cache_dir().parent / "dlib"


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Cache the converted state dict; a reader sees the old file, the new one or none."""
    from fsspec.implementations.local import LocalFileSystem

    from ..batch.write import write_atomic
    try:
        write_atomic(LocalFileSystem(), str(path), lambda f: torch.save(state, f))
    except OSError as e:
        log.info("could not cache the converted dlib model at %s (%s)", path, e)


def load_dlib_resnet(dat_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                     cache: bool = True) -> DlibResNet:
    """dlib's face-recognition ResNet as an eval-mode :class:`DlibResNet` on ``device``.

    The ``.dat`` file (see :func:`find_dat`) is converted on first use and the state dict cached
    as ``cache_dir()/dlib_resnet-<sha256 of the .dat>-f<format>.pt`` (loaded with
    ``weights_only=True``); ``cache=False`` converts without reading or writing the cache.
    """
    dat = find_dat(dat_path)
    digest = sha256_file(dat)
    path = cache_dir() / f"dlib_resnet-{digest[:32]}-f{_FORMAT}.pt"
    state = None
    if cache and path.is_file():
        try:
            state = load_state_dict(path)
        except WeightsError as e:
            log.warning("ignoring unreadable cached dlib conversion: %s", e)
    if state is None:
        state = convert_dat(dat)
        if cache:
            _save_atomic(state, path)
    model = load_into(DlibResNet(), state, path if cache else dat, "dlib face-recognition ResNet")
    model.source_sha256 = digest
    return model.eval().to(device)


@functools.lru_cache(maxsize=4)
def _default_model(device: str) -> DlibResNet:
    return load_dlib_resnet(device=device)


def chips_to_tensor(chips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(B, 150, 150, 3)`` uint8 RGB chips (or one ``(150, 150, 3)``) as a ``(B, 3, 150, 150)`` float tensor."""
    t = torch.as_tensor(np.asarray(chips) if not isinstance(chips, torch.Tensor) else chips)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or tuple(t.shape[1:]) != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected (B, 150, 150, 3) RGB chips, got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().contiguous()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


@torch.inference_mode()
def embed(chips: np.ndarray | torch.Tensor, model: nn.Module | None = None, normalize: bool = False,
          batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """128-d descriptors of aligned chips (see :mod:`.align`): ``(B, 128)`` float32.

    Raw descriptors match dlib's ``compute_face_descriptor`` (dlib's "same person" threshold is an
    L2 distance of 0.6); ``normalize=True`` returns them L2-normalised (for cosine similarity).
    ``model`` may be any module with :class:`DlibResNet`'s input and output, e.g. the one
    ``runtime.accelerate`` returns; by default :func:`load_dlib_resnet`'s on ``device`` (loaded once).
    """
    if model is None:
        model = _default_model(str(torch.device(device)))
    x = chips_to_tensor(chips)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = [model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    y = torch.cat(out).numpy() if out else np.zeros((0, EMBED_DIM), np.float32)
    return l2_normalize(y) if normalize else y
