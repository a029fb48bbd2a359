"""Start-up of the annotate job: the driver never imports torch (only the analyzer actors need it),
and a small run is cut into shards that split evenly over the actors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facebatch.annotate.config import shard_size_for

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "torchvision", "onnxruntime")


def _heavy_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = code + f"\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return eval(r.stdout.strip().splitlines()[-1])


def test_driver_modules_do_not_import_torch():
    """Everything the annotate driver imports (options, config, listing and state, the Ray Data job,
    the read stage, the report, Ray and Ray Data themselves) is torch-free; so is
    ``facebatch.detection`` for ``DetectorConfig`` and its backend registry, and ``facebatch.inference``
    for ``AnalyzerConfig``."""
    code = """
import facebatch.cli as cli
args = cli.build_parser(only="annotate").parse_args(["annotate", "--input", "in", "--output", "out", "--max-side", "800"])
from facebatch.annotate.cli import config_from_args
cfg = config_from_args(args).validate()
assert cfg.analyzer.detector.max_side == 800 and cfg.analyzer.device == cfg.analyzer.detector.device == "cpu"
import facebatch.annotate.pipeline, facebatch.annotate.read, facebatch.annotate.report, facebatch.annotations
import facebatch.detection, facebatch.detection.options, facebatch.inference, facebatch.provenance, facebatch.raycluster
import ray, ray.data
from facebatch.detection import BACKENDS, DetectorConfig, Face, LANDMARK_NAMES, backend_spec
from facebatch.inference import AnalyzerConfig
AnalyzerConfig.from_dict(cfg.analyzer.to_dict()).validate()
assert backend_spec("resnet50").extra_dirs()
"""
    assert _heavy_after(code) == []


def test_facebatch_annotate_command_builds_only_its_parser():
    """``facebatch annotate ...`` imports only the annotate parser (the preprocess one pulls in
    torch); ``facebatch --help`` still lists every command."""
    code = """
import facebatch.cli as cli
args = cli.build_parser(only="annotate").parse_args(["annotate", "--input", "in", "--output", "out"])
assert args.command == "annotate"
"""
    assert _heavy_after(code) == []
    r = subprocess.run([sys.executable, "-m", "facebatch.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and all(c in r.stdout for c in ("annotate", "preprocess", "train", "serve")), r.stdout


def test_detection_names_still_importable():
    """``facebatch.detection`` keeps its API: the torch parts load on first use."""
    code = """
import facebatch.detection as d
from facebatch.detection.detector import DetectorConfig as C2, Face as F2
assert d.DetectorConfig is C2 and d.Face is F2
assert callable(d.pack_by_size) and callable(d.create_detector) and d.BatchDetector.__name__ == "BatchDetector"
"""
    assert "torch" in _heavy_after(code)


def test_job_entrypoint_runs_without_torch_in_the_driver(ray_session, udacity_root, tmp_path):
    """``jobs/annotate.py`` (the ``ray job submit`` entrypoint) on this session's Ray: the run
    finishes and its driver never imported torch."""
    import ray
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted((udacity_root / "training").glob("*.jpg"))[:3]:
        (inp / p.name).symlink_to(p)
    out, seen = tmp_path / "out", tmp_path / "heavy.txt"
    argv = ["jobs/annotate.py", "--input", str(inp), "--output", str(out), "--keypoints", "none",
            "--attributes", "none", "--address", ray.get_runtime_context().gcs_address]
    code = (f"import atexit, runpy, sys\n"
            f"atexit.register(lambda: open({str(seen)!r}, 'w').write(' '.join(m for m in {HEAVY!r} if m in sys.modules)))\n"
            f"sys.argv = {argv!r}\n"
            f"runpy.run_path('jobs/annotate.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "processed 3" in r.stdout
    assert seen.read_text() == ""


@pytest.mark.parametrize("n, size, actors, want", [
    (100, 32, 2, 25),     # 4 shards of 25: 50 + 50 per actor instead of 64 + 36
    (10, 32, 2, 5),       # both actors get work
    (1, 32, 2, 1),
    (64, 32, 2, 32),      # already even
    (3462, 32, 2, 32),    # a large run keeps the shard size
    (24, 3, 1, 3),
    (33, 32, 4, 9),
])
def test_shard_size_for_small_runs(n, size, actors, want):
    got = shard_size_for(n, size, actors)
    assert got == want and got <= size
    shards = -(-n // got)
    assert shards == 1 or shards % actors == 0 or shards > 4 * actors
