"""`facebatch annotate --people` end to end on a real local Ray: the run clusters the collection's
faces into persons (identity model embeddings), the next night's photos join the persons they
belong to with ids kept, and `--report` gets a people section."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from facebatch.annotate.config import AnnotateConfig
from facebatch.annotate.pipeline import run_annotate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PEOPLE = ["celeb_31", "celeb_32", "celeb_33"]


def test_annotate_people_two_nights(ray_session, celeba_root, tmp_path):
    from facebatch.people import load_state
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    photos = {p: sorted((celeba_root / "train_dataset" / p).glob("*.jpg"))[:5] for p in PEOPLE}
    for p, fs in photos.items():
        for f in fs[:4]:
            (inp / f"{p}__{f.name}").symlink_to(f)
    cfg = dict(input=str(inp), output=str(out), people=True, report=True, shard_size=6)
    s1 = run_annotate(AnnotateConfig(**cfg))
    assert s1["people"]["persons"] == 3, s1["people"]
    state = load_state(str(out))
    first = {r["path"]: r["person_id"] for r in state.faces.to_pylist()}
    by_person = {}
    for path, pid in first.items():
        by_person.setdefault(Path(path).name.split("__")[0], set()).add(pid)
    assert all(len(ids) == 1 and None not in ids for ids in by_person.values()), by_person
    assert len({next(iter(v)) for v in by_person.values()}) == 3  # three persons, one each
    report = (Path(s1["run_folder"]) / "report.html").read_text()
    assert "<h2>People</h2>" in report and "3 persons" in report
    assert json.loads((Path(s1["run_folder"]) / "_summary.json").read_text())["people"]["persons"] == 3

    for p, fs in photos.items():  # night 2: one more photo of each
        (inp / f"{p}__{fs[4].name}").symlink_to(fs[4])
    s2 = run_annotate(AnnotateConfig(**cfg))
    assert s2["processed"] == 3 and s2["people"]["new_persons"] == 0, s2["people"]
    state = load_state(str(out))
    now = {r["path"]: r["person_id"] for r in state.faces.to_pylist()}
    assert all(now[k] == v for k, v in first.items())  # night-1 faces keep their ids
    for p, fs in photos.items():
        assert now[str(inp / f"{p}__{fs[4].name}")] == next(iter(by_person[p]))  # and the new photo joins
