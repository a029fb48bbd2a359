"""Train (optionally) and evaluate models through the CLI, and write one comparison table.

    python bench/model_table.py --group keypoints --train      # seeds + release, writes docs/MODELS.md
    python bench/model_table.py --group attributes --train
    python bench/model_table.py --group attributes              # evaluate what runs/exports already holds

Every model goes through the same commands a user runs (`facebatch train ... --config NAME`,
`facebatch evaluate ...`) on the preprocess outputs in `out/` (`facebatch preprocess` of
udacity68, celeba6k and genki4k with default options). Validation is by person: udacity68's
hashed `val` persons; celeba6k's own `test` folder (people seen in training, other photos) and,
for verification, its hashed `val` persons (never trained on); genki4k's hashed `val` images
(each image its own person: GENKI-4K has no person ids). Training time is the model file's
own `train_s`; parameters and FLOPs come from its meta.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FB = str(REPO / ".venv" / "bin" / "facebatch")

# name -> (config, exported model file)
KEYPOINTS = {
    "seed000_resnet18": ("seed000_resnet18", "runs/exports/seed000_resnet18.pt"),
    "seed001_cnn": ("seed001_cnn", "runs/exports/seed001_cnn.pt"),
    "seed001_se_cnn": ("seed001_se_cnn", "runs/exports/seed001_se_cnn.pt"),
    "keypoints68 (release)": (None, "facebatch/release/keypoints68.pt"),
    "keypoints15 (release)": (None, "facebatch/release/keypoints15.pt"),
}
ATTRIBUTES = {
    "seed002_cnn": ("seed002_cnn", "runs/exports/seed002_cnn.pt"),
    "seed002_autoencoder": ("seed002_autoencoder", "runs/exports/seed002_autoencoder.pt"),
    "seed004_cnn": ("seed004_cnn", "runs/exports/seed004_cnn.pt"),
    "seed003_cnn": ("seed003_cnn", "runs/exports/seed003_cnn.pt"),
    "attributes (release)": (None, "facebatch/release/attributes.pt"),
}


def sh(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"command failed ({rc}), see {log}: {' '.join(cmd)}")


def model_meta(path: str) -> dict:
    sys.path.insert(0, str(REPO))
    from facebatch.modelio import read_model_file
    obj = read_model_file(REPO / path)
    return {"model": obj["model"], **{k: obj["meta"].get(k) for k in ("params", "flops", "train_s", "input_size",
                                                                      "attributes", "scheme", "best_epoch")},
            "epochs": len(obj["meta"].get("history", []))}


def evaluate(kind: str, model: str, out: Path, log: Path, *args: str) -> dict:
    if not (out / "metrics.json").exists():
        sh([FB, "evaluate", kind, "--model", model, "--output", str(out), *args], log)
    return json.loads((out / "metrics.json").read_text())


def ready(task: str, name: str, config: str | None, path: str, train: bool, log: Path) -> bool:
    """Train a seed model first when asked (release models are never retrained); is its file there?"""
    if train and config:
        sh([FB, "train", task, "--config", config, f"name={config}"], log)
    if not (REPO / path).exists():
        print(f"skip {name}: {path} missing (train it with --train)")
        return False
    return True


def keypoint_rows(args, log: Path) -> list[dict]:
    rows = []
    for name, (config, path) in KEYPOINTS.items():
        if not ready("keypoints", name, config, path, args.train, log):
            continue
        m = evaluate("keypoints", path, REPO / "out" / "models" / name.split()[0], log,
                     "--input", "out/udacity68", "--split", "val")
        rows.append({"name": name, **model_meta(path), **m})
    return rows


def attribute_rows(args, log: Path) -> list[dict]:
    rows = []
    for name, (config, path) in ATTRIBUTES.items():
        if not ready("attributes", name, config, path, args.train, log):
            continue
        meta = model_meta(path)
        key = name.split()[0]
        row = {"name": name, **meta}
        attrs = meta.get("attributes") or []
        if any(a in attrs for a in ("smile", "eyeglasses")):
            row["celeba_test"] = evaluate("attributes", path, REPO / "out" / "models" / f"{key}-celeba", log,
                                          "--input", "out/celeba6k", "--split", "test")
        if "smile" in attrs:
            row["genki_val"] = evaluate("attributes", path, REPO / "out" / "models" / f"{key}-genki", log,
                                        "--input", "out/genki4k", "--split", "val")
        if meta["model"] in ("multitask", "seed003_cnn"):  # both have an identity embedding
            row["identity"] = evaluate("identity", path, REPO / "out" / "models" / f"{key}-identity", log,
                                       "--input", "out/celeba6k")
        rows.append(row)
    return rows


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def keypoint_table(rows: list[dict]) -> str:
    head = ("| model | params | GFLOPs | input | epochs | train min | n | failed | NME (inter-ocular) | RMSE norm | "
            "MAE px (96) | PCK 5 / 10 / 15 px |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['name']} ({r['model']}, {r['scheme']}) | {r['params']:,} | {r['flops'] / 1e9:.2f} | {r['input_size']} | "
             f"{r['epochs']} | {r['train_s'] / 60:.1f} | {r['n_images']} | {r['failed']} | {fmt(r['nme_interocular'], 4)} | "
             f"{fmt(r['rmse_norm'], 4)} | {fmt(r['mae_px'], 2)} | {fmt(r['pck_5px'])} / {fmt(r['pck_10px'])} / "
             f"{fmt(r['pck_15px'])} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def attribute_table(rows: list[dict]) -> str:
    head = ("| model | params | GFLOPs | input | epochs | train min | smile acc celeba test | smile acc genki val | "
            "eyeglasses bal. acc celeba test (acc) | identity top-1 celeba test | verification acc (unseen people) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        c, g, i = r.get("celeba_test", {}), r.get("genki_val", {}), r.get("identity", {})
        eg = c.get("eyeglasses")
        lines.append(f"| {r['name']} ({r['model']}) | {r['params']:,} | {r['flops'] / 1e9:.2f} | {r['input_size']} | "
                     f"{r['epochs']} | {r['train_s'] / 60:.1f} | {fmt(c.get('smile', {}).get('accuracy'))} | "
                     f"{fmt(g.get('smile', {}).get('accuracy'))} | "
                     f"{fmt(eg['balanced_accuracy']) + ' (' + fmt(eg['accuracy']) + ')' if eg else '–'} | "
                     f"{fmt(i.get('top1'))} | {fmt(i.get('verification_accuracy'))} |")
    return head + "\n".join(lines) + "\n"


def replace_section(marker: str, section: str, path: Path = REPO / "docs" / "MODELS.md") -> None:
    """Put ``section`` at the end of docs/MODELS.md, replacing the previous section that starts with ``marker``."""
    text = path.read_text() if path.exists() else (
        "# Model comparison\n\nWritten by `bench/model_table.py`: every model trained and evaluated through "
        "the CLI on by-person held-out splits. Seed baselines use the seed projects' architectures; where "
        "the schedule is shorter than the seed's, the config says so.\n\n")
    if marker in text:
        start = text.index(marker)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + text[nxt + 1:] if nxt != -1 else text[:start]
    path.write_text(text.rstrip() + "\n\n" + section)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=["keypoints", "attributes"], required=True)
    ap.add_argument("--train", action="store_true", help="train the seed baselines first (the release models are not retrained)")
    ap.add_argument("--no-docs", action="store_true", help="print only; do not write docs/MODELS.md")
    args = ap.parse_args(argv)
    os.chdir(REPO)
    log = REPO / "logs" / f"model_table_{args.group}.log"
    log.parent.mkdir(exist_ok=True)
    rows = keypoint_rows(args, log) if args.group == "keypoints" else attribute_rows(args, log)
    table = keypoint_table(rows) if args.group == "keypoints" else attribute_table(rows)
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    section = (f"## {args.group}, {dt.date.today().isoformat()}, {machine}\n\n"
               f"`python bench/model_table.py --group {args.group}{' --train' if args.train else ''}`\n\n{table}\n"
               f"<details><summary>all metrics</summary>\n\n```json\n{json.dumps(rows, indent=1, default=str)}\n```\n</details>\n")
    print(section)
    if not args.no_docs:
        replace_section(f"## {args.group}, ", section)


if __name__ == "__main__":
    main()
