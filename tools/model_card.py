"""Write a model card (Markdown) beside a shipped model from its file and evaluation outputs.

    python tools/model_card.py facebatch/release/keypoints68.pt --eval out/eval-kp68 \
        --command "facebatch train keypoints --config keypoints68" --notes notes.md

Reads the model file's meta (data, config, training time, params, FLOPs, history) and the
evaluation's metrics.json; anything given with --notes (a Markdown file) is appended.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.modelio import read_model_file  # noqa: E402
from facebatch.weights import sha256_file  # noqa: E402

LICENCES = {
    "udacity68": "udacity68: MIT-licensed copy of the Udacity facial-keypoints data; the frames come from "
                 "YouTube Faces (research use). The weights inherit the research-use terms of the frames.",
    "celeba": "CelebA (MMLAB, CUHK): non-commercial research use only. Models trained on it inherit that.",
    "genki": "GENKI-4K (MPLab, UC San Diego): cite \"http://mplab.ucsd.edu, The MPLab GENKI-4K Dataset.\"",
    "300w": "300w_train: 300-W training subsets (LFPW, HELEN, AFW; iBUG, Imperial College London): annotations "
            "for non-commercial research use only; the photos are third-party web and Flickr images. Models "
            "trained on them inherit the non-commercial terms.",
    "detector": "Initialised from RetinaFace-MobileNet-0.25 (Pytorch_Retinaface, MIT), trained on WIDER FACE "
                "(research use).",
}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--eval", action="append", default=[], help="evaluation output folder(s) (metrics.json)")
    ap.add_argument("--command", action="append", default=[], help="exact command(s) that made the model")
    ap.add_argument("--data", action="append", default=[], choices=list(LICENCES), help="data used (for licences)")
    ap.add_argument("--notes", default=None, help="Markdown appended to the card")
    args = ap.parse_args(argv)
    path = Path(args.model)
    obj = read_model_file(path)
    meta = obj["meta"]
    cfg = meta.get("config", {})
    lines = [f"# Model card: `{path.stem}`", "",
             f"- task: **{obj['task']}**, architecture `{obj['model']}` {json.dumps(obj['model_kwargs'])}",
             f"- file: `{path.name}`, {path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256_file(path)}`",
             f"- parameters: {meta.get('params', 'n/a'):,}; forward FLOPs at the input size: {meta.get('flops', 0) / 1e9:.3f} G",
             f"- input: {meta.get('input_size')}x{meta.get('input_size')} {'grey' if meta.get('grey') else 'RGB'} in [0, 1], "
             "a square face crop from `facebatch preprocess` (RetinaFace box grown by 20% of its larger side on each side)",
             f"- output: {meta.get('scheme') or meta.get('attributes')}; flip test-time averaging: {meta.get('flip_test')}",
             f"- trained: {meta.get('n_train')} train / {meta.get('n_val')} validation faces, validation held out by person; "
             f"{len(meta.get('history', []))} epochs, "
             + ("weights of the last epoch (keep=last), " if cfg.get("keep") == "last" else
                f"best epoch {meta.get('best_epoch')}, ") +
             f"{meta.get('train_s', 0) / 60:.1f} min of training on {meta.get('provenance', {}).get('host', '?')} "
             f"({cfg.get('num_workers')} Ray Train worker(s), {'GPU' if cfg.get('use_gpu') else 'CPU'})",
             f"- code: facebatch {meta.get('provenance', {}).get('facebatch_version')} at git "
             f"`{meta.get('provenance', {}).get('git_commit')}`", "", "## How it was made", "", "```"]
    lines += args.command + ["```", "", "## Validation metrics", ""]
    for e in args.eval:
        m = json.loads((Path(e) / "metrics.json").read_text())
        lines += [f"`{e}`:", ""] + (attribute_table(m, meta.get("thresholds") or {}) if "summary" in m else
                                    ["```json", json.dumps(m, indent=2), "```"]) + [""]
    lines += ["## Data and licences", ""] + [f"- {LICENCES[d]}" for d in args.data] + [""]
    if args.notes:
        lines += [Path(args.notes).read_text()]
    card = path.with_suffix(".md")
    card.write_text("\n".join(lines) + "\n")
    print(card)
    return card


def attribute_table(m: dict, thresholds: dict) -> list[str]:
    """Many attributes (an evaluation with a ``summary``): one Markdown row each instead of JSON."""
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    s = m["summary"]
    p50 = f"; deciding at p >= 0.5 instead: mean accuracy {f(s['mean_accuracy_at_p50'])}" if "mean_accuracy_at_p50" in s else ""
    if "folds" in m:  # tools/attribute_crossfit.py: each fold decided at thresholds fitted without it
        thresholds = {}
    rows = [f"{s['n_attributes']} attributes: mean accuracy **{f(s['mean_accuracy'])}**, mean balanced accuracy "
            f"**{f(s['mean_balanced_accuracy'])}** (always answering the majority class: {f(s['mean_majority_accuracy'])}){p50}", "",
            "| attribute | n | positives | accuracy | balanced accuracy | ROC AUC | threshold |", "|---|---|---|---|---|---|---|"]
    for a, v in m.items():
        if isinstance(v, dict) and "balanced_accuracy" in v:
            pos = sum(v["confusion"][1]) if v.get("confusion") else None
            rows.append(f"| {a} | {v['n']} | {pos} | {f(v['accuracy'])} | {f(v['balanced_accuracy'])} | {f(v['roc_auc'])} | "
                        f"{f(thresholds.get(a))} |")
    return rows


if __name__ == "__main__":
    main()
