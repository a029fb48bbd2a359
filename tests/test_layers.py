"""The import direction of the package, checked on the source (no imports executed).

core (geometry, imaging, formats, detection, keypoints, attributes, models, ...) -> inference ->
jobs and services (preprocess, annotate, serve, evaluation, training, commands) -> cli.
A module may import its own layer and the layers below it, never one above; no two modules
import each other. Job packages do not import each other either: what two jobs share goes down
into core or inference, and only the top layer (``facebatch/cli.py`` and any ``.cli`` module)
wires one job to another. Function-level imports count too: they are only there to delay loading
torch or Ray, not to hide an upward dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "facebatch"
LAYERS = {
    0: {"geometry", "imaging", "degrade", "formats", "detection", "keypoints", "attributes", "models", "modelio", "runtime", "schema",
        "storage", "weights", "paths", "provenance", "raycluster", "release", "configs", "plots", "jsonsafe",
        "identity", "batch", "__init__"},
    1: {"inference"},
    2: {"preprocess", "annotate", "annotations", "people", "serve", "evaluation", "training", "commands"},
    3: {"cli", "__main__"},
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}
JOB_PACKAGES = {"annotate", "preprocess", "serve", "evaluation", "training", "commands"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """facebatch modules imported anywhere in the file (absolute names)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "facebatch"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "facebatch":
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # "from . import x" may name a module
    known = {_module_name(p) for p in PKG.rglob("*.py")}
    return {m for m in out if m in known and m != mod}


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(mod: str) -> int:
    return LAYER_OF["cli"] if mod.endswith(".cli") else LAYER_OF.get(_top(mod), 0)


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _graph()}
    assert tops <= set(LAYER_OF), f"modules without a layer in tests/test_layers.py: {sorted(tops - set(LAYER_OF))}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, deps in _graph().items():
        for d in deps:
            if _layer(d) > _layer(mod):
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_two_modules_import_each_other():
    g = _graph()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in g.items() for b in deps if a in g.get(b, ())})
    assert not pairs, f"modules that import each other: {pairs}"


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    """The checker must be able to fail: a synthetic upward import is found."""
    f = PKG / "geometry.py"
    deps = _imports(f)
    assert "facebatch.cli" not in deps
    src = ast.parse("def f():\n    from .inference import FaceAnalyzer\n")
    assert any(isinstance(n, ast.ImportFrom) and n.level == 1 for n in ast.walk(src))
    assert "facebatch.inference.analyzer" in _imports(PKG / "inference" / "__init__.py")


def _job(mod: str) -> str | None:
    """The job package ``mod`` belongs to; None outside them and for ``.cli`` modules (the top layer)."""
    return None if mod.endswith(".cli") or _top(mod) not in JOB_PACKAGES else _top(mod)


def _sideways(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{mod} -> {d}" for mod, deps in graph.items() for d in deps
                  if _job(mod) and _job(d) and _job(d) != _job(mod))


def test_job_packages_do_not_import_each_other():
    bad = _sideways(_graph())
    assert not bad, ("imports between job packages (move what they share into core or inference, or wire "
                     "it in a .cli module):\n" + "\n".join(bad))


def test_the_checker_sees_imports_between_job_packages():
    """The job rule must be able to fail, and must leave the top layer and in-package imports alone."""
    assert JOB_PACKAGES <= set(LAYERS[2])
    graph = {"facebatch.evaluation.common": {"facebatch.preprocess.pipeline", "facebatch.evaluation.keypoints",
                                             "facebatch.inference", "facebatch.geometry"},
             "facebatch.annotate.pipeline": {"facebatch.commands.detect"},
             "facebatch.evaluation.cli": {"facebatch.preprocess.pipeline"},
             "facebatch.cli": {"facebatch.training.cli", "facebatch.serve.app"}}
    assert _sideways(graph) == ["facebatch.annotate.pipeline -> facebatch.commands.detect",
                                "facebatch.evaluation.common -> facebatch.preprocess.pipeline"]
    assert "facebatch.plots" in _imports(PKG / "training" / "run.py")  # a function-level import, seen
