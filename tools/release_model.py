"""Release a trained model: copy it into facebatch/release/NAME.pt and rewrite its model card.

    python tools/release_model.py runs/exports/attributes.pt attributes \
        --eval out/eval-celeba --eval out/eval-genki --data celeba --data genki --data detector \
        --command "facebatch train attributes --config attributes" --notes tools/card_notes/attributes.md \
        --identity-eval out/eval-identity

Training never writes into facebatch/release/ (configs export to runs/exports/); shipping a
model is this one explicit step. The file must be a readable facebatch model file that builds
from the registry and loads strictly; it must stay under --max-mb (the repository ships it).
Card options are those of tools/model_card.py.

A model with an identity embedding takes --identity-eval DIR, a `facebatch evaluate identity`
output folder of this file: its threshold at the stated false-accept rate (`--far`, 1% by
default) is stored in the released file's meta as `verification_threshold` (with
`verification_far`, `verification_tar`; tools/set_identity_threshold.py), which FaceAnalyzer,
enroll, annotate and serve use as the identity `unknown` threshold; DIR/roc.png is copied to
docs/roc-NAME.png and the card gets a section stating the threshold, FAR and TAR with the figure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.modelio import RELEASE_DIR, load_model  # noqa: E402

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model file to release (e.g. runs/exports/attributes.pt)")
    ap.add_argument("name", help="shipped name (facebatch/release/NAME.pt), e.g. attributes")
    ap.add_argument("--max-mb", type=float, default=25.0, help="refuse files larger than this")
    ap.add_argument("--identity-eval", default=None, metavar="DIR",
                    help="`facebatch evaluate identity` output of this file: its threshold at the stated FAR "
                         "becomes the model's identity unknown threshold, its ROC goes into the card")
    args, card_args = ap.parse_known_args(argv)
    src = Path(args.model)
    size_mb = src.stat().st_size / 1e6
    if size_mb > args.max_mb:
        raise SystemExit(f"{src} is {size_mb:.1f} MB, over --max-mb {args.max_mb}; export it with export_fp16=true")
    _, info = load_model(str(src))  # builds from the registry and loads strictly, or fails with the reason
    has_identity = bool(info["meta"].get("identity") or info["meta"].get("emb_dim"))
    if args.identity_eval:
        from set_identity_threshold import check_eval_of  # tools/, beside this file
        check_eval_of(src, args.identity_eval)  # an evaluation of this very file, checked before anything is copied
    elif has_identity:
        print(f"warning: {src} has an identity embedding but no --identity-eval; its unknown threshold stays "
              f"{info['meta'].get('verification_threshold', 'the 0.5 default')}", file=sys.stderr)
    dst = RELEASE_DIR / f"{args.name}.pt"
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    identity_lines = []
    if args.identity_eval:
        from set_identity_threshold import card_lines, set_identity_threshold
        entries = set_identity_threshold(dst, args.identity_eval)
        figure = None
        roc = Path(args.identity_eval) / "roc.png"
        if roc.is_file():
            fig = DOCS_DIR / f"roc-{args.name}.png"
            shutil.copyfile(roc, fig)
            figure = os.path.relpath(fig, dst.parent)
        identity_lines = card_lines(entries, figure)
    from model_card import main as write_card  # tools/model_card.py, beside this file
    card = write_card([str(dst), *card_args])
    if identity_lines:
        with open(card, "a") as f:
            f.write("\n" + "\n".join(identity_lines))
    print(dst)
    return dst


if __name__ == "__main__":
    main()
