"""The attribute task: face crops + attribute/identity labels from preprocess Parquet -> an attribute model.

Pure torch/numpy; the Ray Train loop in :mod:`.loop` calls these methods. One task serves every
model of :mod:`facebatch.attributes.models`; ``cfg.attributes`` says what a model learns:

| ``cfg.model`` | ``cfg.attributes`` | loss | validation (summable, all-reduced) |
|---|---|---|---|
| ``multitask`` | any binary attributes of the labels (``smile``, ``eyeglasses``, CelebA's ``male``, ``wearing_hat``, ...) and ``identity`` | masked BCE per attribute (eyeglasses ``pos_weight`` = negatives / positives of the training rows) + CosFace/ArcFace CE on the model's margin head | TP/FP/TN/FN per attribute; identity top-1 on val rows whose identity is a training identity |
| ``seed002_cnn``, ``seed004_cnn`` | one binary attribute (``["smile"]``, ``["eyeglasses"]``, or any other 0/1 label) | 2-way softmax CE | TP/FP/TN/FN |
| ``seed003_cnn`` | ``["identity"]`` | CE over the training identities | top-1 |
| ``seed002_autoencoder`` | one binary attribute (``["smile"]``) | pixel MSE on the positive (smiling) faces only | reconstruction errors of positives and negatives; the decision threshold is fitted at export (:func:`fit_autoencoder_threshold`) |

Labels: ``attributes`` (JSON of name -> 0/1; a missing name is a missing label, e.g. GENKI-4K has
no eyeglasses) and ``identity``. Identity classes are the sorted identities of the usable training
rows (status ``ok``, split in ``train_splits``, after ``limit``); a row whose identity is not one
of them gets ``-1`` (no identity loss, not counted in top-1). Rows with no label the model learns
are dropped. ``val_score`` (the monitor, higher is better) is the mean of the binary attributes'
balanced accuracies and, where val rows of training identities exist, the identity top-1.
With a by-person validation split (celeba6k's ``val``) no val identity is a training identity,
so the identity is judged by ``facebatch evaluate identity`` instead.

Task options are read from ``model_kwargs`` and not passed to the model: ``eyeglasses_pos_weight``
/ ``smile_pos_weight`` (``null``: eyeglasses from counts, smile unweighted), ``pos_weights``
(further attributes by name; unweighted when absent), ``loss_weights``
(``{"smile": 1, "eyeglasses": 1, "identity": 1}``; ``"*"`` weighs every attribute not named) and ``ae_quantile`` (autoencoder threshold
quantile, 0.95). The driver resolves what workers need from the data (``n_identities`` /
``n_classes``, ``eyeglasses_pos_weight``) into ``cfg.model_kwargs``: Ray Train workers run in
their own working directory and do not read the label columns themselves.

Augmentation (``cfg.augment``; ``null`` = off): ``flip_p`` (horizontal flip, 0.5) and colour
jitter factors ``brightness``, ``contrast``, ``saturation`` (each drawn from ``1 +- value``, 0.2).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import schema as S
from ..inference.inputs import InputSpec, decode_crop, model_input, to_tensor
from ..models import ATTRIBUTE_LOGITS, CLASS_LOGITS, RECONSTRUCTION, create_model, get_spec
from .config import TrainConfig

log = logging.getLogger(__name__)

IDENTITY = "identity"
TASK_OPTIONS = ("eyeglasses_pos_weight", "smile_pos_weight", "pos_weights", "loss_weights", "ae_quantile",
                "threshold_degrade", "label_counts")
NOT_EXPORTED = ("pretrained", "weights_path")


@dataclass
class AttrAugment:
    """Augmentation for attribute/identity crops: horizontal flip, colour jitter, an optional
    random shift (up to ``shift`` of the side in x and y, edges repeated; 0 = off) and, with
    ``degrade_p`` > 0, what real photos do to faces (:func:`facebatch.degrade.random_degrade`,
    each with probability ``degrade_p``): downscale to ``degrade_scale`` of the side and back
    up, Gaussian blur up to ``degrade_blur`` px, JPEG re-encoding at ``degrade_jpeg`` quality."""

    flip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    shift: float = 0.0
    degrade_p: float = 0.0
    degrade_scale: tuple = (0.2, 1.0)
    degrade_jpeg: tuple = (20, 95)
    degrade_blur: float = 1.0


def parse_attributes(text) -> dict:
    if text is None or text == "":
        return {}
    return json.loads(text) if isinstance(text, (str, bytes)) else dict(text)


def _paths(data) -> list[str]:
    return [str(p) for p in (data if isinstance(data, (list, tuple)) else [data])]


def read_columns(data, columns: list[str], limit: int | None = None):
    """The given columns of one or more preprocess outputs (local or s3://) as one Arrow table
    (paths in order, files sorted), cut to ``limit`` rows. ``limit`` is for trials: with several
    sources Ray Data's ``limit`` may keep other rows than these."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ..storage import arrow_filesystem
    tables = []
    for p in _paths(data):
        fs = arrow_filesystem(p)
        src = p.split("://", 1)[1] if fs is not None else p
        if "://" not in p and not Path(p).exists():
            raise FileNotFoundError(f"training data {p!r} not found; run `facebatch preprocess` first "
                                    "or set data=... in the config")
        tables.append(pq.read_table(src, columns=columns, filesystem=fs))
    t = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return t.slice(0, limit) if limit else t


def scan_labels(data, splits: list[str], limit: int | None = None) -> dict:
    """Identities and 0/1 counts per attribute over the usable rows of ``splits`` (no crops read)."""
    t = read_columns(data, [S.STATUS, S.SPLIT, S.ATTRIBUTES, S.IDENTITY], limit)
    cols = {c: t.column(c).to_pylist() for c in (S.STATUS, S.SPLIT, S.ATTRIBUTES, S.IDENTITY)}
    identities, counts, n = set(), {}, 0
    for st, sp, attrs, ident in zip(cols[S.STATUS], cols[S.SPLIT], cols[S.ATTRIBUTES], cols[S.IDENTITY]):
        if st != S.OK or sp not in splits:
            continue
        n += 1
        if ident is not None:
            identities.add(ident)
        for k, v in parse_attributes(attrs).items():
            if v is not None:
                c = counts.setdefault(k, [0, 0])
                c[int(v)] += 1
    return {"identities": sorted(identities), "counts": {k: {"neg": v[0], "pos": v[1]} for k, v in counts.items()},
            "n_rows": n}


def apply_margin(logits: torch.Tensor, labels: torch.Tensor, s: float, m: float, kind: str = "cosface") -> torch.Tensor:
    """The training margin on plain margin-head logits ``s * cos`` (what the model returns without
    labels): the same numbers as :class:`~facebatch.attributes.losses.MarginHead` called with
    ``labels``. Applied in the loss because the training loop calls ``model(x)`` only."""
    cos = logits.float() / s
    labels = labels.long()
    onehot = torch.zeros_like(cos, dtype=torch.bool)
    rows = torch.nonzero(labels >= 0).squeeze(1)
    if rows.numel():
        onehot[rows, labels[rows]] = True
    if kind == "cosface":
        target = cos - m
    elif kind == "arcface":
        c = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        sin = torch.sqrt(1.0 - c * c)
        phi = c * math.cos(m) - sin * math.sin(m)
        th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        target = torch.where(c > th, phi, c - mm)
    else:
        raise ValueError(f"unknown margin kind {kind!r}")
    return s * torch.where(onehot, target, cos)


def _multitask_default(name: str):
    from ..attributes.models import MultiTaskFaceNet
    return inspect.signature(MultiTaskFaceNet.__init__).parameters[name].default


class AttributeTask:
    """Smile / eyeglasses / identity models on preprocess Parquet (see the module docstring)."""

    columns = [S.STATUS, S.SPLIT, S.CROP, S.ATTRIBUTES, S.IDENTITY]

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.spec = get_spec(cfg.model, "attributes")
        if cfg.grey:
            raise ValueError("attribute models take RGB input; set grey=false")
        targets = list(dict.fromkeys(cfg.attributes or []))
        self.multitask = ATTRIBUTE_LOGITS in self.spec.outputs
        if self.multitask:
            if not targets:
                raise ValueError("multitask needs attributes=[...]: binary attribute names of the labels "
                                 "(smile, eyeglasses, male, ...) and/or identity")
            self.binary = [t for t in targets if t != IDENTITY]
        elif CLASS_LOGITS in self.spec.outputs:
            if targets != [IDENTITY]:
                raise ValueError(f"{cfg.model} learns identities: set attributes=[\"identity\"], got {targets}")
            self.binary = []
        else:
            if len(targets) != 1 or targets[0] == IDENTITY:
                raise ValueError(f"{cfg.model} learns one binary attribute: set e.g. attributes=[\"smile\"], got {targets}")
            self.binary = targets
        self.identity = IDENTITY in targets
        self.targets = self.binary + ([IDENTITY] if self.identity else [])
        self.autoencoder = RECONSTRUCTION in self.spec.outputs
        need = self.spec.fixed_input
        if need and cfg.input_size != need:
            raise ValueError(f"{cfg.model} has dense layers sized for {need} px input; set input_size={need}")
        if self.autoencoder and cfg.input_size % 8:
            raise ValueError(f"{cfg.model} needs input_size divisible by 8, got {cfg.input_size}")
        unknown_aug = set(cfg.augment or {}) - set(AttrAugment.__dataclass_fields__)
        if unknown_aug:
            raise ValueError(f"unknown augment option(s) {sorted(unknown_aug)} for attributes; "
                             f"known: {', '.join(AttrAugment.__dataclass_fields__)}")
        self.aug = None if cfg.augment is None else AttrAugment(**{
            k: (tuple(v) if isinstance(v, list) else v) for k, v in (cfg.augment or {}).items()})
        self.monitor, self.mode = ("val_recon_mse", "min") if self.autoencoder else ("val_score", "max")
        self.n_metric_sums = 6 if self.autoencoder else 4 * len(self.binary) + 2 * self.identity
        self._scan: dict | None = None
        self._index: dict | None = None
        self._resolve()

    # -- what the data decides (resolved once on the driver, carried to workers in cfg) ------------
    @property
    def labels_info(self) -> dict:
        if self._scan is None:
            self._scan = scan_labels(self.cfg.data, list(self.cfg.train_splits), self.cfg.limit)
        return self._scan

    @property
    def identities(self) -> list[str]:
        """Identity class names in class-index order (the sorted training identities)."""
        if not self.identity:
            return []
        ids = self.labels_info["identities"]
        if not ids:
            raise ValueError(f"no identities in the training rows of {self.cfg.data} (splits {self.cfg.train_splits}); "
                             "identity training needs an identity column (celeba, classes or csv format)")
        return ids

    @property
    def identity_index(self) -> dict:
        if self._index is None:
            self._index = {name: i for i, name in enumerate(self.identities)}
            want = self.cfg.model_kwargs.get(self._class_key)
            if self.identity and want is not None and want != len(self._index):
                raise ValueError(f"model_kwargs.{self._class_key}={want} but the training rows hold "
                                 f"{len(self._index)} identities")
        return self._index

    @property
    def _class_key(self) -> str:
        return "n_classes" if CLASS_LOGITS in self.spec.outputs else "n_identities"

    def _resolve(self) -> None:
        mk = self.cfg.model_kwargs
        if self.multitask and self.binary and mk.get("label_counts") is None:
            known = self.labels_info["counts"]
            absent = [a for a in self.binary if a not in known]
            if absent:
                raise ValueError(f"attributes {absent} have no label in the training rows of {self.cfg.data} "
                                 f"(splits {self.cfg.train_splits}); labelled: {', '.join(sorted(known)) or 'none'}")
            mk["label_counts"] = {a: known[a] for a in self.binary}  # resolved here, read by the card
        if self.identity and mk.get(self._class_key) is None:
            mk[self._class_key] = len(self.identities)
        if self.multitask and "eyeglasses" in self.binary and mk.get("eyeglasses_pos_weight") is None:
            c = self.labels_info["counts"].get("eyeglasses", {"pos": 0, "neg": 0})
            if c["pos"] == 0:
                log.warning("no positive eyeglasses label in the training rows: eyeglasses pos_weight = 1")
                mk["eyeglasses_pos_weight"] = 1.0
            else:
                from ..attributes.losses import pos_weight_from_counts
                mk["eyeglasses_pos_weight"] = pos_weight_from_counts(c["pos"], c["neg"])

    def model_kwargs(self) -> dict:
        """Keyword arguments of ``create_model`` (task options removed, class counts resolved)."""
        kw = {k: v for k, v in self.cfg.model_kwargs.items() if k not in TASK_OPTIONS}
        if self.multitask:
            kw["input_size"] = self.cfg.input_size
            kw["attributes"] = list(self.binary)
            if not self.identity:
                kw.pop("n_identities", None)
        elif CLASS_LOGITS not in self.spec.outputs:
            kw.pop("n_identities", None)
        return kw

    # -- data -------------------------------------------------------------------------------------
    def decode(self, batch: dict, splits: list[str]) -> dict:
        """Keep usable rows of ``splits`` with a label the model learns; decode crops to
        ``uint8 (N, S, S, 3)``, binary labels to float (NaN = missing), identities to class
        indices (-1 = not a training identity)."""
        size = self.cfg.input_size
        index = self.identity_index if self.identity else {}
        keep, labels, ids = [], {a: [] for a in self.binary}, []
        for i in range(len(batch[S.STATUS])):
            if batch[S.STATUS][i] != S.OK or batch[S.SPLIT][i] not in splits or batch[S.CROP][i] is None:
                continue
            attrs = parse_attributes(batch[S.ATTRIBUTES][i])
            vals = {a: float(attrs[a]) if attrs.get(a) is not None else np.nan for a in self.binary}
            idx = index.get(batch[S.IDENTITY][i], -1) if self.identity else -1
            if all(np.isnan(v) for v in vals.values()) and idx < 0:
                continue
            keep.append(i)
            for a in self.binary:
                labels[a].append(vals[a])
            ids.append(idx)
        out = {"image": (np.stack([decode_crop(batch[S.CROP][i], size) for i in keep]) if keep
                         else np.zeros((0, size, size, 3), np.uint8))}
        for a in self.binary:
            out[f"y_{a}"] = np.asarray(labels[a], np.float32)
        out["y_identity"] = np.asarray(ids, np.int64)
        return out

    def _augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Per image: horizontal flip with ``flip_p``, a random shift of up to ``shift`` of the
        side, then brightness, contrast and saturation factors from ``1 +- value`` (the maths of
        :func:`facebatch.keypoints.augment.color_jitter`, batched)."""
        a, n = self.aug, len(x)
        flip = torch.from_numpy(rng.random(n) < a.flip_p)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        p = int(round(a.shift * x.shape[-1]))
        if p > 0:
            h, w = x.shape[-2:]
            padded = F.pad(x, (p, p, p, p), mode="replicate")
            offs = rng.integers(0, 2 * p + 1, size=(n, 2))
            x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offs)])
        b, c, s = (torch.from_numpy(1.0 + rng.uniform(-v, v, n) if v > 0 else np.ones(n)).float().view(-1, 1, 1, 1)
                   for v in (a.brightness, a.contrast, a.saturation))
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x = x * b
        mean = (x * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = (x - mean) * c + mean
        grey = (x * w).sum(1, keepdim=True)
        return ((x - grey) * s + grey).clamp_(0.0, 1.0)

    def inputs(self, batch: dict, train: bool, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        """``(x (N, 3, S, S) float in [0, 1], targets dict)``; a lone training row is repeated
        (BatchNorm1d cannot train on one row, and skipping it would desync DDP workers)."""
        images = batch["image"]
        if train and self.aug is not None and self.aug.degrade_p > 0 and len(images):
            from ..degrade import random_degrade
            a = self.aug
            images = np.stack([random_degrade(im, rng, a.degrade_scale, a.degrade_jpeg, (0.0, a.degrade_blur),
                                              a.degrade_p) for im in images])
        x = to_tensor(images)
        if train and self.aug is not None and len(x):
            x = self._augment(x, rng)
        y = {a: torch.tensor(batch[f"y_{a}"], dtype=torch.float32) for a in self.binary}
        if self.identity:
            y[IDENTITY] = torch.tensor(batch["y_identity"], dtype=torch.long)
        if train and len(x) == 1:
            x = x.repeat(2, 1, 1, 1)
            y = {k: v.repeat(2) for k, v in y.items()}
        if self.autoencoder:
            y["recon"] = x
        return x, y

    # -- model ------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return create_model(self.cfg.model, task="attributes", **self.model_kwargs())

    def _option(self, name: str, default=None):
        v = self.cfg.model_kwargs.get(name)
        return default if v is None else v

    def loss(self, out, y: dict) -> torch.Tensor:
        if self.multitask:
            return self._multitask_loss(out, y)
        if self.autoencoder:
            a = self.binary[0]
            rec = out.float()
            per = ((rec - y["recon"].float()) ** 2).flatten(1).mean(1)
            pos = y[a] == 1
            if not bool(pos.any()):
                return rec.sum() * 0.0
            return per[pos].mean()
        out = out.float()
        if CLASS_LOGITS in self.spec.outputs:
            from ..attributes.losses import masked_cross_entropy
            return masked_cross_entropy(out, y[IDENTITY])
        t = y[self.binary[0]]
        valid = ~torch.isnan(t)
        if not bool(valid.any()):
            return out.sum() * 0.0
        return F.cross_entropy(out[valid], t[valid].long())

    def _multitask_loss(self, out: dict, y: dict) -> torch.Tensor:
        from ..attributes.losses import MultiTaskLoss
        out = {k: v.float() for k, v in out.items()}
        if self.identity and "identity_logits" in out:
            out["identity_logits"] = apply_margin(
                out["identity_logits"], y[IDENTITY], self._option("s", _multitask_default("s")),
                self._option("m", _multitask_default("m")), self._option("margin", _multitask_default("margin")))
        loss_fn = MultiTaskLoss(eyeglasses_pos_weight=self._option("eyeglasses_pos_weight"),
                                smile_pos_weight=self._option("smile_pos_weight"),
                                weights=self._option("loss_weights"), pos_weights=self._option("pos_weights"))
        total, _ = loss_fn(out, {k: v for k, v in y.items() if k in self.targets})
        # every head in the graph (an untrained head would leave DDP waiting for its gradients)
        return total + sum(v.sum() * 0.0 for v in out.values())

    def predict(self, model: torch.nn.Module, x: torch.Tensor):
        if self.multitask:
            from ..attributes.models import multitask_outputs
            return multitask_outputs(model, x, self.cfg.flip_test)
        out = model(x)
        if not self.cfg.flip_test or self.autoencoder:
            return out
        return (out.float() + model(x.flip(-1)).float()) / 2

    # -- validation ---------------------------------------------------------------------------------
    def positive(self, out, attr: str) -> torch.Tensor:
        """Predicted 0/1 for a binary attribute (sigmoid >= 0.5, or softmax[:, 1] >= 0.5)."""
        if isinstance(out, dict):
            return (out[attr].float() >= 0).long()
        return (out[:, 1].float() >= out[:, 0].float()).long()

    def metric_sums(self, out, y: dict) -> torch.Tensor:
        """Binary attributes: [tp, fp, tn, fn] each; identity: [n known, correct];
        autoencoder: [n_pos, mse_pos, w1_pos, n_neg, mse_neg, w1_neg]."""
        if self.autoencoder:
            from ..attributes.models import pixel_histograms, wasserstein_histograms
            x, rec = y["recon"].float(), out.float()
            mse = ((rec - x) ** 2).flatten(1).mean(1)
            w1 = wasserstein_histograms(pixel_histograms(x), pixel_histograms(rec), 1.0 / 64).float()
            t = y[self.binary[0]]
            sums = []
            for sel in (t == 1, t == 0):
                sums += [sel.sum().float(), mse[sel].sum(), w1[sel].sum()]
            return torch.stack(sums).float()
        sums = []
        for a in self.binary:
            t = y[a]
            valid = ~torch.isnan(t)
            p, t = self.positive(out, a)[valid], t[valid].long()
            sums += [((p == 1) & (t == 1)).sum(), ((p == 1) & (t == 0)).sum(),
                     ((p == 0) & (t == 0)).sum(), ((p == 0) & (t == 1)).sum()]
        if self.identity:
            logits = out["identity_logits"] if isinstance(out, dict) else out
            ids = y[IDENTITY]
            known = ids >= 0
            sums += [known.sum(), (logits.argmax(1)[known] == ids[known]).sum()]
        return torch.stack([s.float() for s in sums])

    def finalize(self, s: torch.Tensor) -> dict:
        s = s.double().tolist()
        if self.autoencoder:
            n_pos, mse_pos, w1_pos, n_neg, mse_neg, w1_neg = s
            d = lambda a, b: a / b if b else float("nan")  # noqa: E731
            # no positive val row: inf (not NaN) keeps best-epoch comparisons well defined
            return {"val_recon_mse": d(mse_pos, n_pos) if n_pos else float("inf"), "val_recon_mse_neg": d(mse_neg, n_neg),
                    "val_w1_pos": d(w1_pos, n_pos), "val_w1_neg": d(w1_neg, n_neg), "n_val_pos": n_pos, "n_val_neg": n_neg}
        m, parts = {}, []
        for k, a in enumerate(self.binary):
            tp, fp, tn, fn = s[4 * k:4 * k + 4]
            n = tp + fp + tn + fn
            rp = tp / (tp + fn) if tp + fn else float("nan")
            rn = tn / (tn + fp) if tn + fp else float("nan")
            defined = [r for r in (rp, rn) if not math.isnan(r)]
            bal = sum(defined) / len(defined) if defined else float("nan")
            m[f"val_{a}_accuracy"] = (tp + tn) / n if n else float("nan")
            m[f"val_{a}_balanced_accuracy"] = bal
            m[f"n_val_{a}"] = n
            parts.append(bal)
        if self.identity:
            n, c = s[-2:]
            m["val_identity_top1"] = c / n if n else float("nan")
            m["n_val_identity"] = n
            parts.append(m["val_identity_top1"])
        defined = [p for p in parts if not math.isnan(p)]
        m["val_score"] = sum(defined) / len(defined) if defined else 0.0
        return m

    # -- export -------------------------------------------------------------------------------------
    def export(self, model: torch.nn.Module) -> tuple[dict, dict]:
        """``(model kwargs for the file, meta entries)`` for :func:`facebatch.training.run.export_model`;
        fits the multitask model's decision thresholds on the validation rows (balanced accuracy)
        and the autoencoder's threshold on the training positives."""
        kwargs = {k: v for k, v in self.model_kwargs().items() if k not in NOT_EXPORTED}
        meta = {"attributes": list(self.binary), "identity": self.identity,
                "identities": self.identities if self.identity else None, "input_size": self.cfg.input_size,
                "outputs": list(self.spec.outputs),
                "task_options": {k: self.cfg.model_kwargs.get(k) for k in TASK_OPTIONS if k in self.cfg.model_kwargs}}
        cfg_of = getattr(model, "config", None)
        if isinstance(cfg_of, dict):
            meta["emb_dim"] = cfg_of.get("emb_dim")
            meta["backbone"] = cfg_of.get("backbone")
            meta["backbone_weights_sha256"] = cfg_of.get("backbone_weights_sha256")
        if self.multitask and self.binary:
            meta["thresholds"], meta["threshold_n"], meta["threshold_fit"] = fit_thresholds(
                model, self.cfg.data, list(self.cfg.val_splits), self.binary, self.cfg.input_size, self.cfg.limit,
                flip=self.cfg.flip_test, degrade=self._option("threshold_degrade", []))
        if self.autoencoder:
            q = float(self._option("ae_quantile", 0.95))
            t, n = fit_autoencoder_threshold(model, self.cfg.data, list(self.cfg.train_splits), self.binary[0],
                                             self.cfg.input_size, q, self.cfg.limit)
            meta.update({"threshold": t, "threshold_quantile": q, "threshold_n": n})
        return kwargs, meta


def labelled_crops(data, splits: list[str], size: int, limit: int | None = None, keep=None, degrade: str | None = None):
    """Yield ``(x, labels)`` batches of up to 128 usable rows of ``splits`` (status ok, with a crop):
    ``x`` float RGB ``[0, 1]`` ``(B, 3, S, S)`` (the one input contract), ``labels`` their attribute
    dicts. ``keep(labels)`` filters rows (e.g. only the positives of one attribute). ``degrade``
    (a :class:`facebatch.degrade.Degradation` spec) degrades each stored crop first and brings it
    back to its size, as a smaller or compressed photo would give it."""
    t = read_columns(data, [S.STATUS, S.SPLIT, S.ATTRIBUTES, S.CROP], limit)
    st, sp, at = (t.column(c).to_pylist() for c in (S.STATUS, S.SPLIT, S.ATTRIBUTES))
    crops = t.column(S.CROP)
    rows = [(i, parse_attributes(at[i])) for i in range(len(st))
            if st[i] == S.OK and sp[i] in splits and crops[i].is_valid]
    rows = [(i, lab) for i, lab in rows if keep is None or keep(lab)]
    spec = InputSpec(size)
    for j in range(0, len(rows), 128):
        part = rows[j:j + 128]
        cr = [crops[i].as_py() for i, _ in part]
        if degrade:
            cr = [_degraded_crop(c, degrade) for c in cr]
        yield model_input(cr, spec), [lab for _, lab in part]


def _degraded_crop(crop: bytes, spec: str) -> np.ndarray:
    from PIL import Image
    from ..degrade import Degradation
    full = decode_crop(crop, InputSpec(1).frame.crop_size)
    small, _ = Degradation.parse(spec).apply(full)
    return np.asarray(Image.fromarray(small).resize(full.shape[1::-1], Image.BILINEAR))


def fit_thresholds(model, data, splits: list[str], attrs: list[str], size: int,
                   limit: int | None = None, flip: bool = False, degrade: list[str] | None = None,
                   n_boot: int = 200) -> tuple[dict, dict, dict]:
    """Per binary attribute of a multitask model, the sigmoid threshold that maximises balanced
    accuracy on the rows of ``splits`` (the by-person validation split, never the test split),
    bagged: the median of that threshold refitted on ``n_boot`` bootstrap resamples of the faces
    (with few positives the single best threshold jumps between score gaps).

    ``flip`` scores each face with its mirror image as evaluation will (the file's ``flip_test``);
    ``degrade`` adds every validation face again under each degradation spec (e.g.
    ``["scale=0.5", "jpeg=30"]``), so the threshold suits full and degraded photos alike.
    Returns ``(thresholds, labelled scores used per attribute, fit report)``; the report gives
    the specs and a bootstrap over validation faces (``n_boot`` resamples): the median and the
    5-95% range of the refitted threshold, and the balanced accuracy at the chosen one."""
    from ..attributes.metrics import balanced_threshold
    from ..attributes.models import multitask_outputs
    specs = [None] + [d for d in (degrade or []) if d]
    scores, labels, group = {a: [] for a in attrs}, [], []
    was = model.training
    model.eval()
    with torch.inference_mode():
        for g, spec in enumerate(specs):
            n = 0
            for x, labs in labelled_crops(data, splits, size, limit, degrade=spec):
                out = multitask_outputs(model, x, flip)
                labels += labs
                group += list(range(n, n + len(labs)))
                n += len(labs)
                for a in attrs:
                    scores[a].append(torch.sigmoid(out[a].float()).numpy())
    model.train(was)
    thresholds, used, report = {}, {}, {"degrade": [s or "none" for s in specs], "bootstrap": {}}
    rng = np.random.default_rng(0)
    face = np.asarray(group)
    for a in attrs:
        sc = np.concatenate(scores[a]) if scores[a] else np.zeros(0)
        sel = np.asarray([k for k, lab in enumerate(labels) if lab.get(a) is not None], np.int64)
        y = np.asarray([labels[k][a] for k in sel], np.int64)
        thresholds[a] = balanced_threshold(y, sc[sel]) if len(sel) else 0.5
        used[a] = int(len(sel))
        if len(sel) and 0 < y.sum() < len(y):
            # resample faces with replacement, each with all its degraded copies
            faces, inverse = np.unique(face[sel], return_inverse=True)
            where = [np.flatnonzero(inverse == f) for f in range(len(faces))]
            boots = []
            for _ in range(n_boot):
                idx = np.concatenate([where[f] for f in rng.integers(0, len(faces), len(faces))])
                if 0 < y[idx].sum() < len(idx):
                    boots.append(balanced_threshold(y[idx], sc[sel][idx]))
            argmax = thresholds[a]
            if boots:  # bagged: the median refit is far steadier than one argmax over few positives
                thresholds[a] = float(np.median(boots))
            pred = sc[sel] >= thresholds[a]
            bal = 0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean())
            report["bootstrap"][a] = {"n_faces": int(len(faces)), "n_pos": int(y.sum()), "balanced_accuracy": float(bal),
                                      "chosen": "bootstrap median" if boots else "argmax",
                                      "argmax": float(argmax),
                                      "median": float(np.median(boots)), "p05": float(np.quantile(boots, 0.05)),
                                      "p95": float(np.quantile(boots, 0.95))}
        log.info("%s threshold %.3f from %d validation scores (%s)", a, thresholds[a], used[a], report["degrade"])
    return thresholds, used, report


def fit_autoencoder_threshold(model, data, splits: list[str], attr: str, size: int, quantile: float = 0.95,
                              limit: int | None = None) -> tuple[float, int]:
    """Set the autoencoder's threshold to a quantile of its errors on the training positives;
    returns ``(threshold, number of faces used)``."""
    was = model.training
    model.eval()
    errs = []
    with torch.inference_mode():
        for x, _ in labelled_crops(data, splits, size, limit, keep=lambda lab: lab.get(attr) == 1):
            errs.append(model.reconstruction_error(x))
    model.train(was)
    if not errs:
        raise ValueError(f"no training rows with {attr}=1 in {data} to fit the autoencoder threshold")
    e = torch.cat(errs)
    return model.fit_threshold(e, quantile), int(len(e))
