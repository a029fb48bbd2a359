"""Check the detector on real labelled faces and time it (single process).

    python bench/check_detection.py                      # all 3,462 udacity68 images + all genki4k
    python bench/check_detection.py --every 10           # a tenth of them, quicker
    python bench/check_detection.py --backend resnet50 --random-weights --every 50   # speed only

Prints the udacity68 detection rate (a detection is the labelled face when its box holds
the centre of the labelled points), the median landmark error over the inter-ocular
distance, the genki4k face-found rate, and images/s. ``--write-docs`` appends the
figures, with the machine and date, to docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.detection import create_detector  # noqa: E402
from facebatch.detection.quality import landmark_errors, match_labelled_face  # noqa: E402
from facebatch.formats.udacity68 import read_udacity68_csv  # noqa: E402
from facebatch.paths import data_dir  # noqa: E402


def _load(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"))


def run_detector(det, paths: list[Path], batch: int) -> tuple[list, float, float]:
    """Returns (results, decode seconds, detect seconds)."""
    results, t_dec, t_det = [], 0.0, 0.0
    for i in range(0, len(paths), batch):
        t0 = time.perf_counter()
        imgs = [_load(p) for p in paths[i:i + batch]]
        t1 = time.perf_counter()
        results += det.detect(imgs)
        t_det += time.perf_counter() - t1
        t_dec += t1 - t0
        if (i // batch) % 20 == 0:
            print(f"  {min(i + batch, len(paths))}/{len(paths)} images", flush=True)
    return results, t_dec, t_det


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(data_dir()), help="shared data folder (default: $FACEBATCH_DATA or ../shared/data)")
    ap.add_argument("--backend", default="mobilenet", choices=["mobilenet", "resnet50"])
    ap.add_argument("--random-weights", action="store_true", help="resnet50 only: random weights, for timing")
    ap.add_argument("--every", type=int, default=1, help="use every N-th image (default 1: all)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-genki", action="store_true")
    ap.add_argument("--write-docs", action="store_true", help="append the figures to docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    det = create_detector(args.backend, max_side=args.max_side, batch_size=args.batch,
                          **({"random_weights": True} if args.random_weights else {}))
    labels = read_udacity68_csv(root / "udacity68" / "training_frames_keypoints.csv")
    names = sorted(labels)[:: args.every]
    paths = [root / "udacity68" / "training" / n for n in names]
    print(f"udacity68: {len(paths)} images, backend {args.backend}, {args.threads} threads")
    res, t_dec, t_det = run_detector(det, paths, args.batch)
    found, errs, misses = 0, [], []
    for n, faces in zip(names, res):
        f = match_labelled_face(faces, labels[n])
        if f is None:
            misses.append(n)
        else:
            found += 1
            errs.append(landmark_errors(f, labels[n]))
    errs = np.array(errs) if errs else np.zeros((0, 5))
    out = {
        "date": dt.date.today().isoformat(), "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "backend": args.backend, "random_weights": args.random_weights, "threads": args.threads,
        "udacity68_images": len(paths), "udacity68_found": found / max(1, len(paths)),
        "landmark_median_err_iod": float(np.median(errs)) if len(errs) else None,
        "landmark_median_err_iod_per_point": np.median(errs, 0).round(4).tolist() if len(errs) else None,
        "detect_images_per_s": len(paths) / t_det, "decode_images_per_s": len(paths) / t_dec,
        "misses": misses[:20],
    }
    if not args.skip_genki:
        gpaths = sorted((root / "genki4k" / "files").glob("*.jpg"))[:: args.every]
        print(f"genki4k: {len(gpaths)} images")
        gres, _, g_det = run_detector(det, gpaths, args.batch)
        out["genki4k_images"] = len(gpaths)
        out["genki4k_found"] = float(np.mean([len(r) > 0 for r in gres]))
        out["genki4k_detect_images_per_s"] = len(gpaths) / g_det
    print(json.dumps(out, indent=2))
    if args.write_docs:
        doc = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
        with open(doc, "a") as f:
            f.write(f"\n### Detection check, {out['backend']}{' (random weights)' if args.random_weights else ''}, "
                    f"{out['date']}, {out['machine']}\n\n```json\n{json.dumps(out, indent=2)}\n```\n")
    return out


if __name__ == "__main__":
    main()
