"""Release a trained model: copy it into facebatch/release/NAME.pt and rewrite its model card.

    python tools/release_model.py runs/exports/attributes.pt attributes \
        --eval out/eval-celeba --eval out/eval-genki --data celeba --data genki --data detector \
        --command "facebatch train attributes --config attributes" --notes tools/card_notes/attributes.md

Training never writes into facebatch/release/ (configs export to runs/exports/); shipping a
model is this one explicit step. The file must be a readable facebatch model file that builds
from the registry and loads strictly; it must stay under --max-mb (the repository ships it).
Card options are those of tools/model_card.py.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.modelio import RELEASE_DIR, load_model  # noqa: E402


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model file to release (e.g. runs/exports/attributes.pt)")
    ap.add_argument("name", help="shipped name (facebatch/release/NAME.pt), e.g. attributes")
    ap.add_argument("--max-mb", type=float, default=25.0, help="refuse files larger than this")
    args, card_args = ap.parse_known_args(argv)
    src = Path(args.model)
    size_mb = src.stat().st_size / 1e6
    if size_mb > args.max_mb:
        raise SystemExit(f"{src} is {size_mb:.1f} MB, over --max-mb {args.max_mb}; export it with export_fp16=true")
    load_model(str(src))  # builds from the registry and loads strictly, or fails with the reason
    dst = RELEASE_DIR / f"{args.name}.pt"
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    from model_card import main as write_card  # tools/model_card.py, beside this file
    write_card([str(dst), *card_args])
    print(dst)
    return dst


if __name__ == "__main__":
    main()
