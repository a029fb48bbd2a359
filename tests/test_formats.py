"""list_records for every format: real data counts, small synthetic layouts, errors, S3 via moto."""
from __future__ import annotations

import collections
import csv
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import badimages
from facebatch.formats.base import InputRecord, assign_split
from facebatch.formats.kaggle15 import KAGGLE15_COLUMNS, KAGGLE15_NAMES, ibug68_to_kaggle15
from facebatch.formats.sources import FORMATS, list_records
from facebatch.formats.udacity68 import read_udacity68_csv
from facebatch.imaging import STATUS_OK, decode_image
from facebatch.paths import data_dir

DATA = data_dir()


def _need(*parts: str) -> Path:
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: set FACEBATCH_DATA to the shared data folder (see its README.md)")
    return p


def _img(path: Path, size=(40, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(badimages.synthetic_picture(*size)).save(path, format=fmt)
    return path


# --- real data ----------------------------------------------------------------------------------

def test_udacity68_real():
    root = _need("udacity68")
    recs = list_records(str(root), "udacity68")
    assert len(recs) == 3462
    assert [r.path for r in recs] == sorted(r.path for r in recs)
    assert all(r.keypoints.shape == (68, 2) and r.keypoints.dtype == np.float32 for r in recs)
    assert {r.keypoint_scheme for r in recs} == {"ibug68"} and {r.split for r in recs} == {"train"}
    by_name = {os.path.basename(r.path): r for r in recs}
    fonsi = by_name["Luis_Fonsi_21.jpg"]
    assert fonsi.person == fonsi.identity == "Luis_Fonsi" and os.path.isabs(fonsi.path)
    assert by_name["Abdel_Aziz_Al-Hakim_00.jpg"].person == "Abdel_Aziz_Al-Hakim"
    assert tuple(fonsi.keypoints[0]) == (45.0, 98.0)  # first row of the CSV
    table = read_udacity68_csv(root / "training_frames_keypoints.csv")
    assert np.array_equal(table["Luis_Fonsi_21.jpg"], fonsi.keypoints)
    persons = collections.Counter(r.person for r in recs)
    assert len(persons) == 347 and min(persons.values()) >= 9
    assert all(r.image_bytes is None and not r.attributes for r in recs[:50])


def test_udacity68_image_folder_variants():
    root = _need("udacity68")
    beside = list_records(str(root / "training"), "udacity68")
    explicit = list_records(str(root / "training"), "udacity68",
                            labels=str(root / "training_frames_keypoints.csv"))
    assert len(beside) == len(explicit) == 3462
    assert [r.path for r in beside] == [r.path for r in explicit]


def test_genki_real():
    root = _need("genki4k")
    recs = list_records(str(root), "genki")
    assert len(recs) == 4000
    assert sum(r.attributes["smile"] for r in recs) == 2162
    assert recs[0].path.endswith("files/file0001.jpg") and recs[0].attributes == {"smile": 1}
    assert recs[0].person == "file0001" and recs[0].identity is None and recs[0].split is None
    assert len({r.person for r in recs}) == 4000


def test_celeba_real():
    root = _need("celeba6k")
    recs = list_records(str(root), "celeba")
    assert len(recs) == 6000
    assert sum(r.attributes["eyeglasses"] for r in recs) == 287
    assert sum(r.attributes["smile"] for r in recs) == 2711
    assert all(r.attributes["smile"] == r.attributes["smiling"] for r in recs)
    assert len(recs[0].attributes) == 41 and all(k == k.lower() for k in recs[0].attributes)
    ids = collections.Counter(r.identity for r in recs)
    assert len(ids) == 200 and set(ids.values()) == {30}
    assert collections.Counter(r.split for r in recs) == {"train": 4800, "test": 1200}
    assert all(r.person == r.identity for r in recs)
    # The README's byte-identical pair sits in train and test of the same person: a split leak.
    pair = {os.path.basename(r.path): r for r in recs if os.path.basename(r.path) in ("186574.jpg", "197961.jpg")}
    assert len(pair) == 2
    digests = {hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in pair.values()}
    assert len(digests) == 1
    assert {r.split for r in pair.values()} == {"train", "test"} and {r.identity for r in pair.values()} == {"celeb_34"}


def test_folder_and_classes_on_real_celeba():
    root = _need("celeba6k")
    assert len(list_records(str(root), "folder")) == 6000
    recs = list_records(str(root / "test_dataset"), "classes")
    assert len(recs) == 1200 and len({r.identity for r in recs}) == 200


# --- kaggle15 -------------------------------------------------------------------------------------

def _kaggle_rows_from_udacity(n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    """(96x96 grey, (15, 2) points) from udacity68 faces: crop around the keypoints, resize."""
    root = _need("udacity68")
    table = read_udacity68_csv(root / "training_frames_keypoints.csv")
    out = []
    for name in sorted(table)[:: max(1, len(table) // n)][:n]:
        kp = ibug68_to_kaggle15(table[name])
        im = Image.open(root / "training" / name).convert("L")
        x0, y0 = np.floor(table[name].min(axis=0)) - 10
        side = float(max(np.ptp(table[name], axis=0)) + 20)
        crop = im.crop((int(x0), int(y0), int(x0 + side), int(y0 + side))).resize((96, 96), Image.Resampling.BILINEAR)
        pts = ((kp - [int(x0), int(y0)]) * (96.0 / int(side))).astype(np.float32)
        out.append((np.asarray(crop), pts))
    return out


def _write_kaggle_csv(path: Path, rows, blank: dict[int, list[int]]) -> list[np.ndarray]:
    """Write a Kaggle-format CSV; ``blank[row]`` lists point indices left empty. Returns expected
    keypoints with NaN where blank."""
    expected = []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(KAGGLE15_COLUMNS) + ["Image"])
        for i, (grey, pts) in enumerate(rows):
            exp = pts.copy()
            cells = []
            for j in range(15):
                if j in blank.get(i, []):
                    exp[j] = np.nan
                    cells += ["", ""]
                else:
                    cells += [repr(float(pts[j, 0])), repr(float(pts[j, 1]))]
            w.writerow(cells + [" ".join(str(int(v)) for v in grey.ravel())])
            expected.append(exp)
    return expected


def test_kaggle15_from_udacity_faces(tmp_path):
    rows = _kaggle_rows_from_udacity(6)
    csv_path = tmp_path / "training.csv"
    expected = _write_kaggle_csv(csv_path, rows, blank={1: [2, 3, 4, 5, 6, 7, 8, 9], 4: [14]})
    for source in (csv_path, tmp_path):  # the CSV itself, or a folder holding training.csv
        recs = list_records(str(source), "kaggle15")
        assert len(recs) == 6
        assert [r.path for r in recs] == [f"{csv_path}#row={i}" for i in range(6)]
        for r, (grey, _), exp in zip(recs, rows, expected):
            assert r.keypoint_scheme == "kaggle15" and r.keypoints.shape == (15, 2)
            np.testing.assert_array_equal(np.isnan(r.keypoints), np.isnan(exp))
            np.testing.assert_allclose(r.keypoints[~np.isnan(exp)], exp[~np.isnan(exp)], rtol=0, atol=1e-5)
            d = decode_image(r.image_bytes)
            assert d.status == STATUS_OK and d.image.shape == (96, 96, 3)
            assert np.array_equal(d.image[..., 0], grey)
    assert np.isnan(recs[1].keypoints[2:10]).all() and not np.isnan(recs[1].keypoints[:2]).any()
    # on a frontal face the subject's left eye lies on the image's right
    assert recs[0].keypoints[0, 0] > recs[0].keypoints[1, 0]
    assert len(KAGGLE15_NAMES) == 15 and KAGGLE15_NAMES[10] == "nose_tip"


def test_kaggle15_sort_is_numeric_and_test_csv_has_no_points(tmp_path):
    grey = " ".join(["7"] * 9216)
    p = tmp_path / "test.csv"
    p.write_text("ImageId,Image\n" + "".join(f"{i + 1},{grey}\n" for i in range(12)))
    recs = list_records(str(p), "kaggle15")
    assert [r.path.rsplit("=", 1)[1] for r in recs] == [str(i) for i in range(12)]
    assert all(r.keypoints is None and r.keypoint_scheme is None for r in recs)
    assert decode_image(recs[0].image_bytes).image.max() == 7
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,Image\n1,1 2 3\n")
    with pytest.raises(ValueError, match="9216"):
        list_records(str(bad), "kaggle15")


# --- synthetic layouts ----------------------------------------------------------------------------

def test_folder_listing_rules(tmp_path):
    keep = ["a.JPG", "b.jpeg", "c.Png", "sub/d.bmp", "sub/deeper/e.webp", "f.tif", "g.TIFF"]
    for name in keep:
        _img(tmp_path / name, fmt={"JPG": "JPEG", "JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP",
                                   "WEBP": "WEBP", "TIF": "TIFF", "TIFF": "TIFF"}[name.rsplit(".", 1)[1].upper()])
    for junk in ["notes.txt", ".hidden.jpg", "._a.jpg", ".git/x.jpg", "__MACOSX/y.jpg", "noext"]:
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_bytes(b"x")
    recs = list_records(str(tmp_path), "folder")
    assert [r.path for r in recs] == sorted(str(tmp_path / n) for n in keep)
    assert all(r.keypoints is None and r.person is None and not r.attributes for r in recs)
    assert list_records(str(tmp_path) + "/", "FOLDER")[0].path == recs[0].path


def test_classes(tmp_path, caplog):
    for name in ["alice/1.jpg", "alice/sub/2.jpg", "bob/3.png", "loose.jpg"]:
        _img(tmp_path / name)
    recs = list_records(str(tmp_path), "classes")
    assert [(os.path.relpath(r.path, tmp_path), r.identity, r.person) for r in recs] == [
        ("alice/1.jpg", "alice", "alice"), ("alice/sub/2.jpg", "alice", "alice"), ("bob/3.png", "bob", "bob")]
    assert "no class folder" in caplog.text


def test_genki_layout_and_errors(tmp_path):
    for n in (1, 2, 3):
        _img(tmp_path / "files" / f"file{n:04d}.jpg")
    (tmp_path / "labels.txt").write_text("1 0.1 0.2 0.3\n0 0 0 0\n1 0 0 0\n\n")
    recs = list_records(str(tmp_path), "genki")
    assert [r.attributes["smile"] for r in recs] == [1, 0, 1]
    (tmp_path / "labels.txt").write_text("1 0 0 0\n\n1 0 0 0\n")
    with pytest.raises(ValueError, match="blank line"):
        list_records(str(tmp_path), "genki")
    (tmp_path / "labels.txt").write_text("2 0 0 0\n")
    with pytest.raises(ValueError, match="0 or 1"):
        list_records(str(tmp_path), "genki")
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        list_records(str(tmp_path), "genki")


def test_celeba_flat_layout_with_side_files(tmp_path):
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        _img(tmp_path / "img_align_celeba" / name)
    names = "5_o_Clock_Shadow Eyeglasses Smiling"
    (tmp_path / "list_attr_celeba.txt").write_text(
        f"4\n{names}\n000001.jpg -1  1  1\n000002.jpg  1 -1 -1\n000003.jpg -1 -1  1\n000004.jpg 1 1 1\n")
    recs = list_records(str(tmp_path), "celeba")
    assert [r.attributes for r in recs][0] == {"5_o_clock_shadow": 0, "eyeglasses": 1, "smiling": 1, "smile": 1}
    assert recs[0].identity is None and recs[0].person == "000001" and recs[0].split is None
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n000003.jpg 2880\n")
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    recs = list_records(str(tmp_path), "celeba")
    assert [(r.identity, r.split) for r in recs] == [("2880", "train"), ("2937", "val"), ("2880", "test")]
    (tmp_path / "list_attr_celeba.txt").write_text(f"{names}\n000001.jpg -1 1\n")
    with pytest.raises(ValueError, match="line 2"):
        list_records(str(tmp_path), "celeba")


def test_csv_format(tmp_path):
    _img(tmp_path / "imgs" / "a.jpg")
    _img(tmp_path / "imgs" / "b.jpg")
    absolute = _img(tmp_path / "elsewhere" / "c.png")
    table = tmp_path / "labels.csv"
    table.write_text("path,Smiling,Eyeglasses,identity,split\n"
                     f"imgs/a.jpg,1,0,ann,Train\nimgs/b.jpg,0,,bob,val\n{absolute},1.0,1,,\nimgs/a.jpg,0,0,x,\n")
    recs = list_records(str(table), "csv")
    assert [r.path for r in recs] == sorted([str(tmp_path / "imgs/a.jpg"), str(tmp_path / "imgs/b.jpg"), str(absolute)])
    by = {os.path.basename(r.path): r for r in recs}
    assert by["a.jpg"].attributes == {"smiling": 1, "eyeglasses": 0}  # the repeated row is dropped
    assert (by["a.jpg"].identity, by["a.jpg"].person, by["a.jpg"].split) == ("ann", "ann", "train")
    assert by["b.jpg"].attributes == {"smiling": 0} and by["c.png"].identity is None
    # folder as --input, table as --labels: paths relative to the folder
    rel = tmp_path / "rel.csv"
    rel.write_text("path,smile\na.jpg,1\n")
    recs = list_records(str(tmp_path / "imgs"), "csv", labels=str(rel))
    assert [r.path for r in recs] == [str(tmp_path / "imgs/a.jpg")]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,age\nimgs/a.jpg,37\n")
    with pytest.raises(ValueError, match="'age'.*0/1"):
        list_records(str(bad), "csv")
    nopath = tmp_path / "nopath.csv"
    nopath.write_text("file,smile\nimgs/a.jpg,1\n")
    with pytest.raises(ValueError, match="'path' column"):
        list_records(str(nopath), "csv")
    with pytest.raises(ValueError, match="is a folder"):
        list_records(str(tmp_path), "csv")


def test_manifest_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = ["b/2.jpg", "a/1.jpg", "s3://bucket/x/3.jpg", "a/1.jpg", str(tmp_path / "abs.jpg")]
    pq.write_table(pa.table({"path": paths, "other": list(range(5))}), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text("Path\n" + "\n".join(paths) + "\n")
    expected = sorted({str(tmp_path / "b/2.jpg"), str(tmp_path / "a/1.jpg"), "s3://bucket/x/3.jpg",
                       str(tmp_path / "abs.jpg")})
    for name in ("m.parquet", "m.csv"):
        recs = list_records(str(tmp_path / name), "manifest")
        assert [r.path for r in recs] == expected, name


def test_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*--input"):
        list_records(str(missing), "folder")
    with pytest.raises(ValueError, match="unknown format 'jpegs'.*folder"):
        list_records(str(tmp_path), "jpegs")
    with pytest.raises(FileNotFoundError, match="labels file not found.*missing.csv"):
        list_records(str(tmp_path), "csv", labels=str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="not used by format 'folder'"):
        list_records(str(tmp_path), "folder", labels=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="frames_keypoints.csv"):
        list_records(str(tmp_path), "udacity68")
    with pytest.raises(FileNotFoundError, match="training.csv"):
        list_records(str(tmp_path), "kaggle15")
    f = _img(tmp_path / "one.jpg")
    with pytest.raises(ValueError, match="manifest"):
        list_records(str(f), "folder")
    assert FORMATS == ("folder", "classes", "manifest", "csv", "udacity68", "kaggle15", "genki", "celeba")


def test_record_defaults():
    r = InputRecord(path="/x.jpg")
    assert r.attributes == {} and r.keypoints is None and r.image_bytes is None
    assert InputRecord(path="/y.jpg").attributes is not r.attributes


# --- person split ---------------------------------------------------------------------------------

def test_assign_split_is_deterministic_by_person():
    people = [f"person_{i}" for i in range(5000)]
    first = [assign_split(p) for p in people]
    assert first == [assign_split(p, 0.1, 0) for p in people]
    frac = first.count("val") / len(people)
    assert 0.08 < frac < 0.12 and set(first) == {"train", "val"}
    assert first != [assign_split(p, seed=1) for p in people]
    assert all(assign_split(p, 0.0) == "train" for p in people[:100])
    assert all(assign_split(p, 1.0) == "val" for p in people[:100])
    assert assign_split("Luis_Fonsi") == "train"  # pinned: must not change across versions
    with pytest.raises(ValueError):
        assign_split("x", 1.5)


# --- S3 (moto server on loopback) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fs = s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                           use_listings_cache=False,
                           client_kwargs={"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"})
    fs.call_s3("create_bucket", Bucket="facebatch-test")
    yield fs
    server.stop()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(badimages.synthetic_picture(32, 24)).save(buf, format="PNG")
    return buf.getvalue()


def test_s3_folder_genki_celeba_udacity(s3):
    img = _png_bytes()
    b = "facebatch-test"
    for key in ["set/a.jpg", "set/sub/b.PNG", "set/readme.txt", "genki/files/file0001.jpg",
                "genki/files/file0002.jpg", "celeba/train_dataset/celeb_7/000009.jpg",
                "udacity/training/Some_One_03.jpg"]:
        s3.pipe(f"{b}/{key}", img)
    s3.pipe(f"{b}/genki/labels.txt", b"0 0 0 0\n1 0 0 0\n")
    s3.pipe(f"{b}/celeba/list_attr_celeba.txt", b"1\nEyeglasses Smiling\n000009.jpg 1 -1\n")
    header = "," + ",".join(str(i) for i in range(136)) + "\n"
    s3.pipe(f"{b}/udacity/training_frames_keypoints.csv",
            (header + "Some_One_03.jpg," + ",".join(["1.5"] * 136) + "\n").encode())

    recs = list_records(f"s3://{b}/set", "folder", filesystem=s3)
    assert [r.path for r in recs] == [f"s3://{b}/set/a.jpg", f"s3://{b}/set/sub/b.PNG"]
    genki = list_records(f"s3://{b}/genki/", "genki", filesystem=s3)
    assert [(r.path, r.attributes["smile"]) for r in genki] == [
        (f"s3://{b}/genki/files/file0001.jpg", 0), (f"s3://{b}/genki/files/file0002.jpg", 1)]
    celeba = list_records(f"s3://{b}/celeba", "celeba", filesystem=s3)
    assert [(r.identity, r.split, r.attributes["smile"]) for r in celeba] == [("celeb_7", "train", 0)]
    uda = list_records(f"s3://{b}/udacity", "udacity68", filesystem=s3)
    assert uda[0].person == "Some_One" and float(uda[0].keypoints[67, 1]) == 1.5
    assert s3.cat(uda[0].path) == img
    with pytest.raises(FileNotFoundError, match=f"s3://{b}/missing"):
        list_records(f"s3://{b}/missing", "folder", filesystem=s3)


def test_s3_images_with_local_labels(s3, tmp_path):
    b = "facebatch-test"
    s3.pipe(f"{b}/imgs/x.jpg", _png_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("path,smile\nx.jpg,1\n")
    recs = list_records(f"s3://{b}/imgs", "csv", labels=str(labels), filesystem=s3)
    assert [(r.path, r.attributes) for r in recs] == [(f"s3://{b}/imgs/x.jpg", {"smile": 1})]


def test_person_of_300w_names_groups_faces_of_one_photo():
    from facebatch.formats.udacity68 import person_of
    assert person_of("Emmy_Rossum_20.jpg") == "Emmy_Rossum"
    assert person_of("lfpw_image_0001.jpg") != person_of("lfpw_image_0002.jpg")
    assert person_of("afw_111076519_1.jpg") == person_of("afw_111076519_2.jpg") == "afw_111076519"
    assert person_of("helen_100040721_1.jpg") == person_of("helen_100040721_2.jpg")
    assert person_of("helen_100040721_1.jpg") != person_of("helen_100032540_1.jpg")
