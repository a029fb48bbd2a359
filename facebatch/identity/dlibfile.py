"""A reader for dlib's serialisation format, enough for its DNN model files (no dlib needed).

The format (``dlib/serialize.h``, ``dlib/float_details.h``, ``dlib/dnn/tensor.h``):

* integers: a control byte (low 4 bits: how many bytes follow; high bit: negative), then the
  absolute value little-endian in that many bytes;
* floats: a ``float_details``: the mantissa (int64) then the exponent (int16), both as integers
  above; the value is ``mantissa * 2**exponent`` (exponents 32000-32002 mean inf, -inf, nan);
* strings: their length as an integer, then the bytes; bools: the ASCII byte ``'1'`` or ``'0'``;
* ``resizable_tensor``: version 2 then ``n, k, nr, nc`` and ``n*k*nr*nc`` little-endian float32
  (version 1: the same shape and one ``float_details`` a value); ``alias_tensor``: version 1,
  then ``n, k, nr, nc``.

A network (``dlib/dnn/core.h``) is written from the loss layer inward: ``add_loss_layer``
(version 1) writes its loss details then its subnetwork; ``add_layer`` (version 2) writes its
version, its subnetwork, then its layer details and state; the ``add_layer`` that sits on the
input (version 3) writes the input layer first. Tag and skip layers (version 1) write only their
subnetwork. So all the versions come first (outermost first), then the details innermost first.
Tag and skip layers leave no other trace, which is why :func:`read_network` is given the layer
list it expects and checks the bytes against it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class DlibFormatError(ValueError):
    """The bytes are not the dlib object (or network layout) that was expected."""


@dataclass
class Layer:
    """One layer as read: its kind (``con``, ``affine``, ``tag``, ...), scalar fields, tensors."""
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


class Reader:
    """Sequential reader of dlib-serialised values from bytes; errors name the source and offset."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data, self.pos, self.name = memoryview(data), 0, name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} (at byte {self.pos} of {len(self.data)}); "
                               "this is not the dlib model file that was expected")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file reading {n} bytes")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def bool(self) -> bool:
        b = self._take(1)[0]
        if b not in (ord("0"), ord("1")):
            raise self.fail(f"bad bool byte 0x{b:02x}")
        return b == ord("1")

    def string(self, limit: int = 1 << 16) -> str:
        n = self.int()
        if not 0 <= n <= limit:
            raise self.fail(f"implausible string length {n}")
        return bytes(self._take(n)).decode("latin-1")

    def version_string(self, *allowed: str) -> str:
        start = self.pos
        try:
            v = self.string(limit=64)
        except DlibFormatError:
            self.pos = start
            raise self.fail(f"expected one of {allowed}") from None
        if v not in allowed:
            self.pos = start
            raise self.fail(f"expected one of {allowed}, found {v!r}")
        return v

    def version(self, *allowed: int, what: str) -> int:
        start = self.pos
        v = self.int()
        if v not in allowed:
            self.pos = start
            raise self.fail(f"expected {what} version {' or '.join(map(str, allowed))}, found {v}")
        return v

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor`` as a float32 array of shape ``(n, k, nr, nc)``."""
        v = self.version(1, 2, what="resizable_tensor")
        shape = tuple(self.int() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative tensor shape {shape}")
        if v == 1:  # dlib <= 19.2 wrote (n, nr, nc, k) and one float_details a value
            n, nr, nc, k = shape
            count = n * nr * nc * k
            return np.array([self.float() for _ in range(count)], np.float32).reshape(n, k, nr, nc)
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        self.version(1, what="alias_tensor")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _lr_multipliers(r: Reader, n: int) -> list[float]:
    return [r.float() for _ in range(n)]


def _con(r: Reader) -> Layer:
    v = r.version_string("con_4", "con_5", "con_6")
    params = r.tensor()
    f = {"num_filters": r.int(), "nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
         "padding_y": r.int(), "padding_x": r.int()}
    filters, biases = r.alias(), r.alias()
    _lr_multipliers(r, 4)
    f["use_bias"] = r.bool() if v in ("con_5", "con_6") else True
    if v == "con_6" and r.bool():
        raise r.fail("con_ with a fused relu is not supported")
    flat = params.reshape(-1)
    nw = math.prod(filters)
    if flat.size != nw + (math.prod(biases) if f["use_bias"] else 0):
        raise r.fail(f"con_ parameter count {flat.size} does not match filters {filters} + biases {biases}")
    t = {"weight": flat[:nw].reshape(filters)}
    if f["use_bias"]:
        t["bias"] = flat[nw:]
    return Layer("con", f, t)


def _affine(r: Reader) -> Layer:
    r.version_string("affine_", "affine_2")
    params = r.tensor().reshape(-1)
    gamma, beta = r.alias(), r.alias()
    mode = r.int()  # 0: CONV_MODE (per channel), 1: FC_MODE (per element)
    n = math.prod(gamma)
    if params.size != n + math.prod(beta):
        raise r.fail(f"affine_ parameter count {params.size} does not match gamma {gamma} + beta {beta}")
    return Layer("affine", {"mode": mode, "shape": gamma}, {"gamma": params[:n], "beta": params[n:]})


def _pool(kind: str):
    def read(r: Reader) -> Layer:
        r.version_string(f"{kind}_2")
        f = {k: r.int() for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        return Layer(kind, f)
    return read


def _fc(r: Reader) -> Layer:
    r.version_string("fc_2")
    f = {"num_outputs": r.int(), "num_inputs": r.int()}
    params = r.tensor().reshape(-1)
    weights, biases = r.alias(), r.alias()
    f["bias_mode"] = r.int()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    _lr_multipliers(r, 4)
    nw = math.prod(weights)
    t = {"weight": params[:nw].reshape(weights[:2])}  # (num_inputs, num_outputs): y = x @ w
    if f["bias_mode"] == 0:
        t["bias"] = params[nw:]
    return Layer("fc", f, t)


def _plain(kind: str, tag: str):
    def read(r: Reader) -> Layer:
        r.version_string(tag)
        return Layer(kind)
    return read


def _input_rgb_image_sized(r: Reader) -> Layer:
    r.version_string("input_rgb_image_sized")
    f = {"avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float(), "nr": r.int(), "nc": r.int()}
    return Layer("input_rgb_image_sized", f)


def _loss_metric(r: Reader) -> Layer:
    v = r.version_string("loss_metric_", "loss_metric_2")
    f = {"margin": r.float(), "dist_thresh": r.float()} if v == "loss_metric_2" else {"margin": 0.1, "dist_thresh": 0.75}
    return Layer("loss_metric", f)


DETAILS = {
    "con": _con, "affine": _affine, "relu": _plain("relu", "relu_"), "add_prev": _plain("add_prev", "add_prev_"),
    "avg_pool": _pool("avg_pool"), "max_pool": _pool("max_pool"), "fc": _fc,
    "input_rgb_image_sized": _input_rgb_image_sized, "loss_metric": _loss_metric,
}
NO_DETAILS = ("tag", "skip")


def _state(r: Reader, version: int, on_input: bool) -> None:
    """Skip an ``add_layer``'s training state: three bools and the gradient/output tensors."""
    for _ in range(3):
        r.bool()
    r.tensor(), r.tensor()  # x_grad, cached_output
    if on_input:
        r.tensor()  # grad_final
        if version >= 3:
            r.int()  # _sample_expansion_factor
    elif version >= 2:
        r.tensor()  # params_grad


def _check(r: Reader, index: int, layer: Layer, expect: dict[str, Any]) -> None:
    for k, want in expect.items():
        got = layer.fields.get(k)
        if got != want:
            raise r.fail(f"layer {index} ({layer.kind}): expected {k}={want!r}, found {got!r}")


def read_network(path: str | Path, loss: str, layers: Sequence[tuple[str, dict[str, Any]]],
                 input_layer: str) -> tuple[Layer, list[Layer], Layer]:
    """Read a dlib network file whose layout is known.

    Args:
        path: the ``.dat`` file.
        loss: the loss layer kind (``"loss_metric"``).
        layers: ``(kind, expected_fields)`` from the layer below the loss down to the layer on the
            input (outermost first, as in the C++ type); kinds are the keys of :data:`DETAILS` or
            ``tag``/``skip``. Each expected field is checked against the file.
        input_layer: the input layer kind (``"input_rgb_image_sized"``).

    Returns:
        ``(loss, layers, input)``: ``layers`` in the same order as given (outermost first), each
        with its fields and tensors.

    Raises:
        DlibFormatError: the file is not this network, naming the file, the byte offset and the
            layer that differs.
    """
    path = Path(path)
    r = Reader(path.read_bytes(), str(path))
    r.version(1, what="add_loss_layer")
    loss_layer = DETAILS[loss](r)
    kinds = [k for k, _ in layers]
    if not kinds or kinds[-1] in NO_DETAILS:
        raise ValueError("the innermost layer must be a computational layer on the input")
    versions = []
    for i, kind in enumerate(kinds):
        if kind in NO_DETAILS:
            versions.append(r.version(1, what=f"add_{kind}_layer (layer {i})"))
        elif i == len(kinds) - 1:
            versions.append(r.version(2, 3, what=f"add_layer on the input (layer {i}, {kind})"))
        else:
            versions.append(r.version(1, 2, what=f"add_layer (layer {i}, {kind})"))
    inp = DETAILS[input_layer](r)
    out: list[Layer] = [Layer(k) for k in kinds]
    for i in range(len(kinds) - 1, -1, -1):
        kind, expect = layers[i]
        if kind in NO_DETAILS:
            continue
        try:
            out[i] = DETAILS[kind](r)
        except DlibFormatError as e:
            raise DlibFormatError(f"{e} [layer {i}, expected {kind}]") from None
        _check(r, i, out[i], expect)
        _state(r, versions[i], on_input=i == len(kinds) - 1)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes left over after the network")
    return loss_layer, out, inp

