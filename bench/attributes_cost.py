"""What the 39-attribute model costs in annotate, against a 2-attribute model, in the same run.

    python bench/attributes_cost.py --baseline OLD.pt                # writes docs/BENCHMARKS.md
    python bench/attributes_cost.py --baseline OLD.pt --udacity 600 --repeat 1 --no-write

`facebatch annotate` over udacity68/training (all 3,462 images unless --udacity N) in fresh
processes, alternately with the baseline attribute model (e.g. the release before issue 24,
smile and eyeglasses; `git show e38c807:facebatch/release/attributes.pt > OLD.pt`) and with the
shipped `attributes` (39 CelebA attributes: 37 more linear heads and 74 more columns per row).
Wall time of the whole command and the size of the written Parquet, median of --repeat runs;
load averages beside every figure (only figures of the same run compare on a shared machine).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from facebatch.paths import data_dir  # noqa: E402

START, END = "<!-- attributes-cost:start -->", "<!-- attributes-cost:end -->"


def one_run(src: Path, model: str, work: Path) -> dict:
    dst = work / f"dst-{time.time_ns()}"
    load = [round(v, 1) for v in os.getloadavg()]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "facebatch.cli", "annotate", "--input", str(src), "--output", str(dst),
                    "--attributes", model], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    size = sum(p.stat().st_size for p in dst.rglob("*.parquet"))
    return {"wall_s": round(wall, 1), "parquet_mb": round(size / 1e6, 2), "load": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--baseline", required=True, help="the attribute model to compare against (a file)")
    ap.add_argument("--udacity", type=int, default=None, help="images of udacity68/training (default all)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per model, alternating (the median is reported)")
    ap.add_argument("--no-write", action="store_true", help="print, do not update docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    files = sorted((data_dir() / "udacity68" / "training").glob("*.jpg"))[: args.udacity]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        for f in files:
            (src / f.name).symlink_to(f)
        one_run(src, "attributes", work)  # warm-up: fills the onnxruntime export cache
        runs = {"baseline": [], "attributes": []}
        for _ in range(args.repeat):
            for name, model in (("baseline", args.baseline), ("attributes", "attributes")):
                runs[name].append(one_run(src, model, work))
    med = {k: round(statistics.median(r["wall_s"] for r in v), 1) for k, v in runs.items()}
    res = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "images": len(files), "runs": runs, "median_wall_s": med,
           "ratio": round(med["attributes"] / med["baseline"], 3)}
    print(json.dumps(res, indent=2))
    if not args.no_write:
        block = [f"`python bench/attributes_cost.py --baseline {args.baseline}`, {res['date']}, {res['machine']}; "
                 f"udacity68, {res['images']} images, fresh `facebatch annotate` processes, alternating.", "",
                 "| attribute model | median wall s | Parquet MB | runs (wall s, load) |", "|---|---|---|---|"]
        for name in runs:
            block.append(f"| {name} | {med[name]} | {runs[name][0]['parquet_mb']} | "
                         + "; ".join(f"{r['wall_s']} ({r['load'][0]})" for r in runs[name]) + " |")
        block += ["", f"39 attributes / baseline: **{res['ratio']}x** wall."]
        doc = REPO / "docs" / "BENCHMARKS.md"
        text = doc.read_text()
        if START not in text:
            text += "\n## Attributes: 39 heads in annotate\n\n" + START + "\n" + END + "\n"
        before, rest = text.split(START, 1)
        doc.write_text(before + START + "\n" + "\n".join(block) + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
