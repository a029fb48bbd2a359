"""Robustness report: the shipped models on degraded photos, through `facebatch evaluate --degrade`.

    python bench/robustness.py                       # full grid, writes docs/MODELS.md + docs/robustness.png
    python bench/robustness.py --conditions scale=0.5 --attributes runs/exports/attributes.pt --tag candidate

Each condition degrades every source image before detection (`facebatch preprocess --degrade`,
once per dataset and condition; a face the detector now misses counts as wrong), then runs the
same evaluation a user runs (`facebatch evaluate` on that output; `evaluate --degrade` does both
steps for one model):

- keypoints (`--keypoints`, default keypoints68) on the udacity68 val split (hashed persons);
- attributes and identity (`--attributes`, default attributes) on celeba6k: smile and eyeglasses
  on its test photos; identity top-1 with a gallery of its train photos and test photos as
  probes, verification on the unseen val people. Every image is degraded, gallery included.

The grid: none, scale 0.5 / 0.33 / 0.25, jpeg 90 / 30. Detection recall per condition is the
share of images where the (labelled) face was found. The table goes into docs/MODELS.md under
"## robustness" (replaced on each run with the same --tag); the plot of metric against scale
into docs/robustness[-TAG].png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_table import FB, REPO, fmt, replace_section, sh  # noqa: E402

DATA = Path(os.environ.get("FACEBATCH_DATA", REPO.parent / "shared" / "data"))
GRID = ["none", "scale=0.5", "scale=0.33", "scale=0.25", "jpeg=90", "jpeg=30"]


def preprocessed(name: str, fmt: str, cond: str, log: Path, splits: str | None = None) -> Path:
    """The dataset preprocessed once per condition (`facebatch preprocess --degrade`, every face),
    shared by all models and evaluations of that condition; ``splits`` (e.g. ``val``) detects only
    the images an evaluation reads. A full preprocessing of the condition serves any split."""
    base = REPO / "out" / "robustness" / "data" / f"{name}-{cond.replace('=', '')}"
    if (base / "_summary.json").exists() or not splits:
        out = base
    else:
        out = base.with_name(f"{base.name}-{splits.replace(',', '-')}")
    if not (out / "_summary.json").exists():
        sh([FB, "preprocess", "--input", str(DATA / name), "--format", fmt, "--output", str(out), "--all-faces",
            *([] if cond == "none" else ["--degrade", cond]), *(["--splits", splits] if out != base else [])], log)
    return out


def run_condition(cond: str, args, log: Path) -> dict:
    out = REPO / "out" / "robustness" / (args.tag or "release") / cond.replace("=", "")
    res = {}
    jobs = [("keypoints", args.keypoints, "kp", ("udacity68", "udacity68"), ["--split", "val"], "val"),
            ("attributes", args.attributes, "attr", ("celeba6k", "celeba"), ["--split", "test"], "test"),
            ("identity", args.attributes, "id", ("celeba6k", "celeba"), [], None)]
    for kind, model, key, (name, fmt_), extra, splits in jobs:
        if not model or model == "none" or (kind == "identity" and cond not in args.identity_conditions):
            continue
        d = out / key
        if not (d / "metrics.json").exists():
            src = preprocessed(name, fmt_, cond, log, splits)
            sh([FB, "evaluate", kind, "--model", model, "--output", str(d), "--input", str(src), *extra], log)
        res[key] = json.loads((d / "metrics.json").read_text())
    return res


def row_of(cond: str, r: dict) -> dict:
    kp, at, ident = r.get("kp", {}), r.get("attr", {}), r.get("id", {})
    sm, eg = at.get("smile", {}), at.get("eyeglasses", {})
    out = {"condition": cond}
    if kp:
        out.update(kp_nme=kp["nme_interocular"], kp_recall=1 - kp["failed"] / kp["n_images"], kp_n=kp["n_images"])
    if sm:
        out.update(smile_acc=sm["accuracy"], eyeglasses_bal=eg.get("balanced_accuracy"), eyeglasses_auc=eg.get("roc_auc"),
                   attr_recall=1 - sm["failed"] / sm["n"], attr_n=sm["n"])
    if ident:
        out.update(top1=ident.get("top1"), verification=ident.get("verification_accuracy"))
    return out


def table(rows: list[dict]) -> str:
    head = ("| condition | kp NME (udacity68 val) | kp detection recall | smile acc (celeba test) | eyeglasses bal. acc "
            "(AUC) | attr detection recall | identity top-1 | verification |\n|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['condition']} | {fmt(r.get('kp_nme'), 4)} | {fmt(r.get('kp_recall'))} | {fmt(r.get('smile_acc'))} | "
             f"{fmt(r.get('eyeglasses_bal'))} ({fmt(r.get('eyeglasses_auc'))}) | {fmt(r.get('attr_recall'))} | "
             f"{fmt(r.get('top1'))} | {fmt(r.get('verification'))} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [(1.0 if r["condition"] == "none" else float(r["condition"].split("=")[1]), r) for r in rows
           if r["condition"] == "none" or r["condition"].startswith("scale=")]
    pts.sort(key=lambda p: p[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p[0] for p in pts]
    for key, label in (("smile_acc", "smile accuracy"), ("eyeglasses_bal", "eyeglasses balanced acc."),
                       ("top1", "identity top-1"), ("verification", "verification"), ("attr_recall", "detection recall")):
        ys = [p[1].get(key) for p in pts]
        if any(y is not None for y in ys):
            axes[0].plot(xs, ys, marker="o", label=label)
    axes[0].set(xlabel="image scale", ylabel="accuracy", title="celeba6k test", xscale="log", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    ys = [p[1].get("kp_nme") for p in pts]
    if any(y is not None for y in ys):
        axes[1].plot(xs, ys, marker="o", color="C3")
    axes[1].set(xlabel="image scale", ylabel="NME (inter-ocular)", title="keypoints, udacity68 val", xscale="log")
    for ax in axes:
        ax.minorticks_off()
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conditions", nargs="+", default=GRID, help="degradation specs ('none' = original)")
    ap.add_argument("--keypoints", default="keypoints68", help="keypoint model (or none)")
    ap.add_argument("--attributes", default="attributes", help="attribute/identity model (or none)")
    ap.add_argument("--identity-conditions", nargs="+", default=None,
                    help="conditions that also run the identity evaluation, which needs every celeba6k image "
                         "detected (default: all of --conditions)")
    ap.add_argument("--tag", default="", help="name of this model set in the docs (default: the release models)")
    ap.add_argument("--no-docs", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.identity_conditions is None:
        args.identity_conditions = list(args.conditions)
    os.chdir(REPO)
    log = REPO / "logs" / f"robustness{'-' + args.tag if args.tag else ''}.log"
    log.parent.mkdir(exist_ok=True)
    rows = [row_of(c, run_condition(c, args, log)) for c in args.conditions]
    name = args.tag or "release"
    png = REPO / "docs" / f"robustness{'-' + args.tag if args.tag else ''}.png"
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    section = (f"## robustness ({name}), {dt.date.today().isoformat()}, {machine}\n\n"
               f"`python bench/robustness.py{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}` "
               f"(keypoints `{args.keypoints}`, attributes `{args.attributes}`). Each source image is degraded before "
               f"detection; a face the detector misses counts as wrong. Plot: `{png.relative_to(REPO)}`.\n\n"
               f"{table(rows)}\n<details><summary>rows</summary>\n\n```json\n{json.dumps(rows, indent=1)}\n```\n"
               f"</details>\n")
    print(section)
    if args.no_docs:
        return
    plot(rows, png, f"facebatch {name} models on degraded photos")
    replace_section(f"## robustness ({name}), ", section)


if __name__ == "__main__":
    main()
