"""Group the faces of an annotate output into persons, and name them.

    facebatch people --annotations DST [--min-faces 2] [--threshold T]   update DST/_people/
    facebatch people name DST PERSON_ID "Alice" [--gallery people.npz]  name a person (+ enroll)
    facebatch people show DST [--top 20]                                counts and the biggest persons
    facebatch people forget DST                                          delete DST/_people/

The first form reads the current live view of DST (every run of ``facebatch annotate ...
--embeddings``), puts each new face through the quality gate, adds it to a known person when its
neighbours say so, clusters the rest (Chinese whispers on the kNN graph of the embeddings, edges
above the identity model's verification threshold) and writes ``DST/_people/{faces,people,
history}.parquet`` atomically. Person ids are never reused, names survive every rerun. It prints
the night's counts as JSON. Runs in this process (Ray tasks only when Ray is already up and the
collection is big). ``_people/`` holds embeddings (biometric data): ``forget`` deletes it.
See docs/ANNOTATIONS.md, "People".
"""
from __future__ import annotations

import argparse
import json
import sys

ACTIONS = ("name", "show", "forget")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=ACTIONS, metavar="ACTION",
                   help=f"one of {', '.join(ACTIONS)}; none: update DST/_people/ from --annotations DST")
    p.add_argument("args", nargs="*", metavar="ARG", help="name: DST PERSON_ID NAME; show, forget: DST")
    p.add_argument("--annotations", metavar="DST", default=None,
                   help="the annotate output (folder or s3:// prefix) whose faces to group")
    p.add_argument("--min-faces", type=int, default=2, help="smallest group of faces that becomes a person")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity of an edge (default: the identity model's verification_threshold)")
    p.add_argument("--k", type=int, default=10, help="neighbours per face in the similarity graph")
    p.add_argument("--block", type=int, default=4096,
                   help="rows per block of the similarity graph (memory: block^2 x 4 bytes per tile)")
    p.add_argument("--recluster", action="store_true",
                   help="cluster every face again from scratch (ids and names kept by overlap)")
    p.add_argument("--min-face-size", type=float, default=40.0, help="quality gate: shorter box side, pixels")
    p.add_argument("--min-score", type=float, default=0.9, help="quality gate: detector score")
    p.add_argument("--max-yaw", type=float, default=60.0, help="quality gate: |yaw| in degrees")
    p.add_argument("--max-pitch", type=float, default=40.0, help="quality gate: |pitch| in degrees")
    p.add_argument("--min-sharpness", type=float, default=15.0,
                   help="quality gate: variance of the Laplacian of the crop (runs with --crops)")
    p.add_argument("--gallery", default=None, help="name: also enroll the person's best faces into this .npz")
    p.add_argument("--max-faces", type=int, default=10, help="name --gallery: faces enrolled at most")
    p.add_argument("--top", type=int, default=20, help="show: the biggest N persons")


def _need(args: argparse.Namespace, n: int, usage: str) -> list[str]:
    if len(args.args) != n:
        raise ValueError(f"people {args.action} takes {usage}, got {len(args.args)} argument(s): {args.args}")
    return args.args


def run(args: argparse.Namespace) -> int:
    from ..people import QualityGate, forget_all, name_person, run_people
    if args.action == "name":
        dst, pid, name = _need(args, 3, "DST PERSON_ID NAME")
        try:
            person_id = int(pid)
        except ValueError:
            raise ValueError(f"PERSON_ID must be a whole number (a person_id of _people/people.parquet), got {pid!r}")
        print(json.dumps(name_person(dst, person_id, name, gallery=args.gallery, max_faces=args.max_faces)))
        return 0
    if args.action == "show":
        from ..people.report import people_section
        (dst,) = _need(args, 1, "DST")
        print(json.dumps(people_section(dst, top=args.top), indent=1, default=str))
        return 0
    if args.action == "forget":
        (dst,) = _need(args, 1, "DST")
        print(json.dumps({"deleted": forget_all(dst), "folder": f"{dst.rstrip('/')}/_people"}))
        return 0
    if args.args:
        raise ValueError(f"unexpected arguments {args.args}: use --annotations DST (or an action: {', '.join(ACTIONS)})")
    if not args.annotations:
        raise ValueError("--annotations DST is required (the output folder of `facebatch annotate --embeddings`)")
    for opt in ("k", "block", "min_faces"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be at least 1, got {getattr(args, opt)}")
    gate = QualityGate(min_face_size=args.min_face_size, min_score=args.min_score, max_yaw=args.max_yaw,
                       max_pitch=args.max_pitch, min_sharpness=args.min_sharpness)
    summary = run_people(args.annotations, threshold=args.threshold, min_faces=args.min_faces, block=args.block,
                         k=args.k, quality=gate, recluster=args.recluster,
                         log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(summary, indent=1))
    return 0
