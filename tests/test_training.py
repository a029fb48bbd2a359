"""Ray Train keypoint training end to end on a tiny real subset: train, resume, export, evaluate."""
from __future__ import annotations

import json
import signal

import pytest

from facebatch.preprocess.config import PreprocessConfig
from facebatch.preprocess.pipeline import run_preprocess
from facebatch.preprocess.rows import CropConfig
from facebatch.training.config import load_config


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config("keypoints68", ["epochs=3", "model_kwargs.head=\"regression\"", "augment=null"])
    assert cfg.epochs == 3 and cfg.model_kwargs == {"pretrained": True, "head": "regression"} and cfg.augment is None
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        load_config("keypoints68", ["epoch=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ValueError, match="keep must be best or last"):
        load_config("keypoints68", ["keep=\"final\""])
    with pytest.raises(FileNotFoundError, match="keypoints68"):
        load_config(str(tmp_path / "missing.json"))


def test_training_rows_are_reshuffled_every_epoch(ray_session):
    import ray
    from facebatch.training.run import shuffled_each_epoch
    ds = shuffled_each_epoch(ray.data.range(640, override_num_blocks=2), rows_per_block=64)
    first, second = ([r["id"] for r in ds.iter_rows()] for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(640))  # every row, once
    assert first != list(range(640)) and first != second  # a new block order each pass
    blocks = [len(b["id"]) for b in ds.iter_batches(batch_size=None)]  # one batch per block
    assert sum(blocks) == 640 and max(blocks) <= 64


@pytest.fixture(scope="module")
def kp_parquet(ray_session, udacity_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("kp") / "pre"
    run_preprocess(PreprocessConfig(input=str(udacity_subset), output=str(out), format="udacity68",
                                    val_fraction=0.3, progress="none", crop=CropConfig(crop_size=96)))
    return out


def test_train_resume_export_evaluate(ray_session, kp_parquet, tmp_path):
    from facebatch.evaluation.keypoints import METRIC_KEYS, evaluate_keypoints
    from facebatch.training.run import train
    base = ["data=" + json.dumps(str(kp_parquet)), "input_size=64", "batch_size=8", "lr=0.003",
            "model_kwargs={\"pretrained\": true}", "num_workers=2", "cpus_per_worker=0.5",
            "storage_path=" + json.dumps(str(tmp_path / "runs")), "name=\"t1\"", "ema=0.9"]  # EMA through resume
    handler = signal.getsignal(signal.SIGINT)
    first = train(load_config("keypoints68", base + ["epochs=2", "export=null"]))
    assert first["epochs_run"] == 2 and first["n_train"] + first["n_val"] == 24
    # Ray Train's Ctrl-C handler (it holds the finished run's controller actor alive) is taken down again
    assert signal.getsignal(signal.SIGINT) is handler
    # continue the same run: the first two epochs are restored, not retrained
    export = tmp_path / "kp.pt"
    second = train(load_config("keypoints68", base + ["epochs=3", "export=" + json.dumps(str(export))]), resume="t1")
    hist = json.loads((tmp_path / "runs" / "t1" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2] and second["epochs_run"] == 3
    assert hist[2]["train_loss"] < hist[0]["train_loss"]
    assert (tmp_path / "runs" / "t1" / "curves.png").stat().st_size > 1000
    out = tmp_path / "eval"
    metrics = evaluate_keypoints(str(export), str(kp_parquet), None, str(out))
    assert tuple(metrics) == METRIC_KEYS and metrics["n_images"] == 24 and metrics["failed"] == 0
    assert 0 < metrics["nme_interocular"] < 1.0
    for f in ("metrics.json", "predictions.csv", "evaluation.csv", "samples.png", "curves.png"):
        assert (out / f).exists(), f


def test_init_partial_keeps_a_resized_head_fresh():
    """Fine-tuning onto another identity set: the backbone comes from the file, the class head whose
    shape differs stays as built; another architecture is refused."""
    import torch
    from facebatch.training.loop import init_partial
    src, dst = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 5)), \
        torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 7))
    head = dst[1].weight.detach().clone()
    assert init_partial(dst, src.state_dict(), "src.pt") == ["1.weight", "1.bias"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, head)
    with pytest.raises(ValueError, match="another architecture"):
        init_partial(torch.nn.Sequential(torch.nn.Linear(4, 3)), src.state_dict(), "src.pt")
