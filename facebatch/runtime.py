"""Runtime choice: what runs a torch module's forward, on CPU and on CUDA.

:func:`accelerate` picks it per model: onnxruntime on CPU (on the same weights), torch on CUDA,
or what ``runtime=`` / ``$FACEBATCH_CPU_RUNTIME`` asks for (:func:`requested_runtime`). On CPU, onnxruntime runs the RetinaFace-MobileNet detector and the keypoint networks markedly
faster than torch on the same weights (``bench/onnx_bench.py``, docs/BENCHMARKS.md "CPU runtime").
:func:`accelerate` exports a module with ``torch.onnx.export`` (opset 17, dynamic batch and,
where asked, dynamic height/width), caches the file, opens an onnxruntime session and checks it
against torch on a fixed input. A module that cannot be exported whole (the keypoint ensemble's
antialiased resize has no ONNX form) is split: each submodule its forward calls is exported
alone, and the rest stays in torch.

Nothing here ever fails a job: onnxruntime missing, an export error or outputs further than
:data:`TOLERANCE` from torch's log a warning with the reason and give back the torch module.

The runtime is chosen per model with ``runtime=`` or, by default, ``$FACEBATCH_CPU_RUNTIME``:
``auto`` (onnxruntime on CPU, torch on CUDA), ``torch`` or ``onnxruntime``. Exports are cached
under ``$FACEBATCH_CACHE_DIR/onnx`` (default ``~/.cache/facebatch/onnx``), one file per weights,
torch version, module class and input spec, written atomically so parallel actors never read a
half-written file.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
ENV_RUNTIME = "FACEBATCH_CPU_RUNTIME"
ENV_CACHE = "FACEBATCH_CACHE_DIR"
TOLERANCE = 1e-3
OPSET = 17
_FORMAT = 1  # bump to invalidate every cached export
CACHE_FILES = 64  # the cache keeps the most recently used exports (and export failures)
SPLIT_DEPTH = 3  # how many levels down a module that does not export whole is split


class OrtUnavailable(RuntimeError):
    """Why a module could not run in onnxruntime (the message is the reason logged)."""


class _NoExport(OrtUnavailable):
    """The module itself cannot be exported or does not match torch: its parts might."""


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime``, else ``$FACEBATCH_CPU_RUNTIME``, else ``auto``; an unknown argument is an error,
    an unknown environment value a warning (``auto``)."""
    if runtime is not None:
        r = str(runtime).strip().lower()
        if r not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        return r
    env = os.environ.get(ENV_RUNTIME, "").strip().lower()
    if env and env not in RUNTIMES:
        log.warning("%s=%r is not one of %s; using auto", ENV_RUNTIME, env, ", ".join(RUNTIMES))
        return "auto"
    return env or "auto"


def cache_dir() -> Path:
    """``$FACEBATCH_CACHE_DIR/onnx``, default ``~/.cache/facebatch/onnx``."""
    root = os.environ.get(ENV_CACHE)
    if not root:
        try:
            root = Path.home() / ".cache" / "facebatch"
        except RuntimeError:  # no home directory (some containers)
            root = Path(tempfile.gettempdir()) / f"facebatch-cache-{os.getuid()}"
    return Path(root).expanduser() / "onnx"


class OrtModule(nn.Module):
    """An onnxruntime session in place of a torch module: tensors in, tensors out (CPU, float32),
    as one tensor, a tuple, or a dict with the ``keys`` of the module's dict.

    Plain attributes of the module it replaces (``input_size``, ``in_channels``, ...) are copied,
    so a parent that reads them still works. Picklable: the ONNX bytes travel, the session is
    rebuilt.
    """

    def __init__(self, onnx_bytes: bytes, source: nn.Module | None = None, path: Path | None = None,
                 cached: bool = False, keys: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.onnx_bytes, self.path, self.cached, self.keys = onnx_bytes, path, cached, keys
        for k, v in (vars(source) if source is not None else {}).items():
            if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple)):
                setattr(self, k, v)
        self.session = _session(onnx_bytes)

    def forward(self, x: torch.Tensor):
        outs = self.session.run(None, {"x": x.detach().to("cpu", torch.float32).contiguous().numpy()})
        outs = [torch.from_numpy(o) for o in outs]
        if self.keys is not None:
            return dict(zip(self.keys, outs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.session = _session(self.onnx_bytes)


def _session(onnx_bytes: bytes):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting pool threads after a call: they would steal the cores the next step needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _key(module: nn.Module, example: torch.Tensor, dynamic: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    cls = type(module)
    for part in (_FORMAT, OPSET, torch.__version__, f"{cls.__module__}.{cls.__qualname__}", repr(module),
                 tuple(example.shape), str(example.dtype), dynamic):
        h.update(repr(part).encode() + b"\0")
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{cls.__name__}-{h.hexdigest()[:24]}"


class _Unsupported(_NoExport):
    """An operator without an ONNX form: the same every time, so remembered in the cache."""


def _export(module: nn.Module, example: torch.Tensor, dynamic: tuple[int, ...], keys: tuple[str, ...] | None) -> bytes:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except Exception as e:
        raise OrtUnavailable(f"the onnx package is not installed ({type(e).__name__}: {e})") from e
    names = {0: "batch", 2: "height", 3: "width"}
    axes = {"x": {d: names.get(d, f"d{d}") for d in dynamic}}
    f = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), f, input_names=["x"], output_names=list(keys or ()) or None,
                              opset_version=OPSET, dynamic_axes=axes, dynamo=False)
    except Exception as e:  # unsupported operators, untraceable control flow, ...
        unsupported = type(e).__name__ == "UnsupportedOperatorError"
        raise (_Unsupported if unsupported else _NoExport)(
            f"ONNX export of {type(module).__name__} failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}") from e
    return f.getvalue()


@contextlib.contextmanager
def _quiet_exporter():
    """torch 2.14's TorchScript exporter turns its C++ log on for every export (it tests the
    function ``_jit_is_onnx_log_enabled`` instead of calling it) and then prints the whole graph,
    thousands of lines, to stderr when an operator has no ONNX form. Skip that context here."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils as ts_utils
        original = ts_utils.setup_onnx_logging
    except (ImportError, AttributeError):  # another torch: nothing to silence
        yield
        return
    ts_utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()
    try:
        yield
    finally:
        ts_utils.setup_onnx_logging = original


def _cache_write(path: Path, data: bytes) -> bool:
    """Write atomically (a parallel reader sees the old file, the new one, or none), then drop the
    least recently used files beyond :data:`CACHE_FILES`. False, logged, if it cannot write."""
    from fsspec.implementations.local import LocalFileSystem

    from .batch.write import write_atomic
    try:
        write_atomic(LocalFileSystem(), str(path), lambda f: f.write(data))
    except OSError as e:
        log.info("could not write %s (%s); the ONNX export is used from memory", path, e)
        return False
    try:
        files = sorted((p for p in path.parent.iterdir() if p.suffix in (".onnx", ".noexport")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[CACHE_FILES:]:
            old.unlink(missing_ok=True)
    except OSError:  # another process pruned at the same time
        pass
    return True


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def onnx_module(module: nn.Module, example: torch.Tensor, dynamic: tuple[int, ...] = (0,),
                check: torch.Tensor | None = None) -> OrtModule:
    """``module`` (eval mode, CPU, one tensor in) as an :class:`OrtModule`, exported or read from the
    cache and checked against torch; raises :class:`OrtUnavailable` with the reason otherwise."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:
        raise OrtUnavailable(f"onnxruntime is not installed ({type(e).__name__}: {e})") from e
    x = _check_input(example, check)
    with torch.inference_mode():
        ref = module(x)
    keys = tuple(ref) if isinstance(ref, dict) else None  # a dict comes back as a dict
    path = cache_dir() / f"{_key(module, example, dynamic)}.onnx"
    failed = path.with_suffix(".noexport")  # a known export failure: the parts are tried at once
    if failed.exists():
        _touch(failed)
        raise _NoExport(failed.read_text(errors="replace").strip() + " (cached)")
    ort_mod = None
    try:
        ort_mod = OrtModule(path.read_bytes(), module, path, cached=True, keys=keys)
        _touch(path)
    except FileNotFoundError:
        pass
    except Exception as e:  # a corrupt or unreadable cache file: export again
        log.warning("cached ONNX file %s is unusable (%s); exporting again", path, e)
    if ort_mod is None:
        try:
            data = _export(module, example, dynamic, keys)
        except _Unsupported as e:
            _cache_write(failed, str(e).encode())
            raise
        if not _cache_write(path, data):
            path = None
        try:
            ort_mod = OrtModule(data, module, path, keys=keys)
        except Exception as e:
            raise _NoExport(f"onnxruntime could not load the export of {type(module).__name__}: "
                            f"{type(e).__name__}: {e}") from e
    with torch.inference_mode():
        _compare(module, ref, ort_mod(x))
    return ort_mod


def _check_input(example: torch.Tensor, check: torch.Tensor | None) -> torch.Tensor:
    """``check``, by default the example's first item mirrored: other values, and a batch size
    other than the export's (2 or more), so a batch baked into the graph shows."""
    return example[:1].flip(-1) if check is None else check


def _check(module: nn.Module, ort_mod: nn.Module, example: torch.Tensor, check: torch.Tensor | None = None) -> None:
    x = _check_input(example, check)
    with torch.inference_mode():
        _compare(module, module(x), ort_mod(x))


def _compare(module: nn.Module, ref, got) -> None:
    """Same outputs (structure, shapes, values within :data:`TOLERANCE`) or :class:`_NoExport`."""
    if isinstance(ref, dict) != isinstance(got, dict) or (isinstance(ref, dict) and list(ref) != list(got)):
        raise _NoExport(f"onnxruntime outputs of {type(module).__name__} are not structured as torch's")
    ref, got = _as_list(ref), _as_list(got)
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got)):
        raise _NoExport(f"onnxruntime outputs of {type(module).__name__} have other shapes than torch's")
    diff = max(float((r.float() - g).abs().max()) if r.numel() else 0.0 for r, g in zip(ref, got))
    if not diff <= TOLERANCE:
        raise _NoExport(f"onnxruntime outputs of {type(module).__name__} differ from torch by {diff:.2e} "
                        f"(> {TOLERANCE:g})")


def _replaced(module: nn.Module, new: dict[str, nn.Module]) -> nn.Module:
    """A copy of ``module`` with the submodules named in ``new`` replaced; the rest is shared."""
    out = copy.copy(module)
    out._modules = dict(module._modules)
    for child in out._modules:
        if child in new:
            out._modules[child] = new[child]
        else:
            sub = {k[len(child) + 1:]: v for k, v in new.items() if k.startswith(child + ".")}
            if sub:
                out._modules[child] = _replaced(out._modules[child], sub)
    return out


def _as_list(y) -> list[torch.Tensor]:
    if isinstance(y, dict):
        return list(y.values())
    return list(y) if isinstance(y, (tuple, list)) else [y]


def accelerate(model: nn.Module, example: torch.Tensor, runtime: str | None = None, device="cpu",
               dynamic: tuple[int, ...] = (0,), what: str = "model",
               check: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """The module to run ``model``'s forward with, and provenance ``{"runtime", ...}``.

    Returns ``model`` itself under torch (asked for, CUDA, or any failure, logged as a warning),
    else an :class:`OrtModule` or, when ``model`` cannot be exported whole, a copy of ``model``
    whose submodules are :class:`OrtModule` s (``onnx_parts`` names them).

    Args:
        model: eval-mode module taking one ``(B, C, H, W)`` tensor, returning a tensor, a tuple or
            a dict of tensors.
        example: a batch (2 or more) like the real inputs: exported at, and traced for the parts.
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``None`` for ``$FACEBATCH_CPU_RUNTIME``.
        device: where the model runs; onnxruntime is used on CPU only.
        dynamic: input dimensions left free in the export (0: batch, 2 and 3: height and width).
        what: the model's name in log lines.
        check: the input the outputs are compared on (default: see :func:`_check`); give one of
            another height and width when those are dynamic.
    """
    requested = requested_runtime(runtime)
    info = {"runtime": "torch", "requested": requested}
    if requested == "torch":
        return model, info
    if torch.device(device).type != "cpu":
        if requested == "onnxruntime":
            log.warning("%s: onnxruntime is only used on CPU; running torch on %s", what, device)
        return model, info
    try:
        runner, parts = _convert(model, example.detach().cpu().float(), dynamic, check)
    except OrtUnavailable as e:
        log.warning("%s: using torch, not onnxruntime: %s", what, e)
        return model, {**info, "fallback_reason": str(e)}
    except Exception as e:  # never fail a job over the runtime
        log.warning("%s: using torch, not onnxruntime: unexpected %s: %s", what, type(e).__name__, e)
        return model, {**info, "fallback_reason": f"{type(e).__name__}: {e}"}
    import onnxruntime
    info.update(runtime="onnxruntime", onnxruntime=onnxruntime.__version__,
                onnx_parts=["(whole model)"] if parts == [""] else parts,
                threads=max(1, torch.get_num_threads()))
    return runner, info


def _convert(model: nn.Module, example: torch.Tensor, dynamic: tuple[int, ...],
             check: torch.Tensor | None = None, depth: int = 0) -> tuple[nn.Module, list[str]]:
    """``model`` with as much of it as exports in onnxruntime, and the names of those parts
    (``""``: all of it)."""
    try:
        return onnx_module(model, example, dynamic, check), [""]
    except _NoExport as whole:
        if depth >= SPLIT_DEPTH:
            raise
        reason = whole
    # Split: each submodule that the forward calls once with one tensor is converted alone (at
    # the shape it saw, and split in turn if need be); containers (ModuleList, ...) that are
    # never called are looked into. The rest of the forward stays in torch.
    seen: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw, n=n: seen.setdefault(n, []).append((args, kw)),
                                         with_kwargs=True)
             for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    candidates = []

    def visit(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            calls = seen.get(full)
            if calls is None:
                visit(full + ".", child)  # a container, or unused
            elif (len(calls) == 1 and not calls[0][1] and len(calls[0][0]) == 1
                  and isinstance(calls[0][0][0], torch.Tensor) and any(True for _ in child.parameters())):
                candidates.append((full, calls[0][0][0].clone()))
    visit("", model)
    seen.clear()
    if not candidates:
        raise reason
    done, parts, errors = {}, [], []
    for name, x in candidates:
        try:
            done[name], sub = _convert(model.get_submodule(name), x, (0,), None, depth + 1)
        except _NoExport as e:
            errors.append(f"{name}: {e}")
            continue
        parts += [f"{name}.{p}" if p else name for p in sub]
    if not parts:
        raise _NoExport(f"{reason}; no part of it could be exported either ({'; '.join(errors)})")
    for e in errors:
        log.warning("keeping %s in torch", e)
    out = _replaced(model, done)
    _check(model, out, example, check)  # the parts together, as the caller will run them
    return out, parts
