"""fastai Learners for the multimodal models, their callbacks, and safe model folders.

``multimodal_learner(dls, name, **kw)`` builds a model from the registry and wraps it in a fastai
:class:`~fastai.learner.Learner` with a splitter (encoders | the rest, for ``freeze``/``fine_tune``), the
loss (binary cross-entropy on the malignancy logit, plus auxiliary per-modality losses where a model has
them), metrics (AUC, accuracy, MCC) and the usual callbacks (progress, CSV log, early stopping, best model).

A trained model is saved as a folder anyone can inspect and load without running code: weights in
``model.safetensors`` and everything needed to rebuild the model in ``model.json`` (one model, or a
:class:`SeedEnsemble`: the same model trained with several seeds, its probabilities averaged). Loading reads only
those two files and refuses a folder that holds a pickle (fastai's ``export``/``load_learner`` pickle
arbitrary code: a model folder from a colleague must not be able to run code on your machine).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback
from torch import nn

from . import __version__
from .batch import PRESENT, with_presence
from .data import SampleSpec, collate

MODEL_WEIGHTS = "model.safetensors"
MODEL_FORMAT = "mmlib-model/1"
#: A seed ensemble (:class:`SeedEnsemble`): read by mmlib from the release that wrote it on; an older one refuses it.
ENSEMBLE_FORMAT = "mmlib-model/2"
MODEL_CONFIG = "model.json"
#: File name endings that can carry pickled code: a model folder holding one is refused.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pth", ".pt", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".dill")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), so a training run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----------------------------------------------------------------------------------------------- metrics
def _safe(func):
    def f(p, t):
        t = np.asarray(t).astype(int).ravel()
        p = np.asarray(p, dtype=float).ravel()
        return float("nan") if len(np.unique(t)) < 2 and func.__name__ == "auc" else float(func(p, t))

    f.__name__ = func.__name__
    return f


def auc(p, t):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(t, p)


def accuracy(p, t):
    return float(((p >= 0.5).astype(int) == t).mean())


def mcc(p, t):
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(t, (p >= 0.5).astype(int))


def binary_metrics():
    """fastai metrics on the malignancy logit: AUC, accuracy and MCC (at probability 0.5)."""
    from fastai.metrics import AccumMetric

    return [AccumMetric(_safe(f), activation="sigmoid", flatten=True, to_np=True, name=f.__name__)
            for f in (auc, accuracy, mcc)]


# ----------------------------------------------------------------------------------------------- callbacks
class ModalityDropout(Callback):
    """Training-only: each present input of a patient is dropped with probability ``p``, never all of them.

    Teaches a model to predict from any subset of inputs (missing modalities as a first-class input).

    Args:
        p: probability of dropping each present input, in [0, 1).
        seed: seed of the draws (the callback owns its generator, so training stays repeatable).
    """

    order = 5

    def __init__(self, p: float = 0.2, seed: int = 0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"modality dropout p must be a number in [0, 1), got {p!r}")
        self.p, self.seed = float(p), int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def drop(self, present: torch.Tensor) -> torch.Tensor:
        """The presence mask ``(B, M)`` after dropout: a subset of ``present``, non-empty where it was."""
        keep = present & (torch.rand(present.shape, generator=self.gen) >= self.p).to(present.device)
        empty = ~keep.any(dim=1) & present.any(dim=1)
        if empty.any():
            # restore one of the originally present inputs, chosen at random
            scores = torch.rand(present.shape, generator=self.gen).to(present.device) * present
            pick = scores.argmax(dim=1)
            keep[empty, pick[empty]] = True
        return keep

    def before_batch(self):
        if not self.training or self.p == 0:
            return
        x = dict(self.learn.xb[0])
        x[PRESENT] = self.drop(x[PRESENT])
        self.learn.xb = (x, *self.learn.xb[1:])


class AuxiliaryLoss(Callback):
    """Training-only: adds the model's auxiliary per-modality losses (:func:`aux_loss`, multi-task) to the loss."""

    order = 50

    def after_loss(self):
        if not self.training:
            return
        aux = aux_loss(self.learn.model, self.learn.yb[0])
        if aux is not None:
            self.learn.loss_grad = self.learn.loss_grad + aux
            self.learn.loss = self.learn.loss_grad.detach().clone()


def aux_loss(model: nn.Module, y: torch.Tensor):
    """``model.aux_weight`` x the mean over modalities of the BCE of the auxiliary logits the model set during its
    last forward, each over the patients who have that modality (``model.aux_mask``); None when there are none."""
    logits = getattr(model, "aux_logits", None)
    weight = float(getattr(model, "aux_weight", 1.0))
    if not logits or weight == 0:
        return None
    mask = getattr(model, "aux_mask", None)
    total, count = 0.0, 0
    for j, name in enumerate(logits):
        lg = logits[name].reshape(-1)
        m = torch.ones_like(lg, dtype=torch.bool) if mask is None else mask[:, j].reshape(-1).bool()
        if m.any():
            total = total + nn.functional.binary_cross_entropy_with_logits(lg[m], y.reshape(-1).float()[m])
            count += 1
    return weight * total / count if count else None


class FrozenEncoders(Callback):
    """Keeps frozen encoders in eval mode (BatchNorm statistics fixed), so features equal the cached ones."""

    order = 1

    def before_train(self):
        for enc in _unique_encoders(self.learn.model):
            if not any(p.requires_grad for p in enc.parameters()):
                enc.eval()


class SaveBest(SaveModelCallback):
    """fastai's SaveModelCallback on ``valid_loss`` (file ``best.pth``) that reloads the best epoch only when one
    was saved (a zero-epoch phase, e.g. ``fine_tune(freeze_epochs=0)``, saves nothing)."""

    def __init__(self, monitor: str = "valid_loss", fname: str = "best"):
        super().__init__(monitor=monitor, fname=fname, with_opt=False)

    def after_fit(self, **kwargs):
        if (Path(self.learn.path) / self.learn.model_dir / f"{self.fname}.pth").exists():
            super().after_fit(**kwargs)


def _unique_encoders(model):
    seen, out = set(), []
    for enc in getattr(model, "encoders", {}).values():
        if id(enc) not in seen:
            seen.add(id(enc))
            out.append(enc)
    return out


# ----------------------------------------------------------------------------------------------- learner
def multimodal_learner(dls, name: str, *, model=None, lr: float = 3e-3, wd: float = 1e-2, path=None,
                       modality_dropout: float = 0.0, early_stopping: int | None = None, save_best: bool = True,
                       csv_log: str | None = "history.csv", frozen: bool = True, seed: int = 0, **model_kwargs):
    """A fastai Learner for the registered model ``name`` on multimodal DataLoaders.

    Args:
        dls: DataLoaders from :func:`mmlib.data.make_dataloaders` (their datasets decide ``input_kind``).
        name: a name from :func:`mmlib.models.list_models`.
        model: an already built model (else built with ``create_model(name, **model_kwargs)``).
        lr, wd: learning rate and weight decay (AdamW).
        path: folder for logs and the best-model checkpoint (a temporary folder by default).
        modality_dropout: probability of dropping each present input during training (0 = off).
        early_stopping: patience in epochs on ``valid_loss`` (None = off).
        save_best: reload the weights of the epoch with the lowest ``valid_loss`` at the end.
        csv_log: name of fastai's CSV log of the epochs (None = off).
        frozen: encoders frozen (their parameters untrained, BatchNorm in eval mode).
        seed: seeds the model's initialisation and the training draws.
    """
    import tempfile

    from fastai.callback.tracker import EarlyStoppingCallback
    import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle and fine_tune onto Learner)
    from fastai.callback.progress import CSVLogger
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat
    from fastai.optimizer import Adam

    from .models import create_model

    set_seed(seed)
    if model is None:
        k = int(dls.train.dataset.clinical.shape[1])
        model_kwargs.setdefault("clinical_features", k)
        model_kwargs.setdefault("input_kind", getattr(dls, "input_kind", "images"))
        model = create_model(name, **model_kwargs)
    if getattr(model, "input_kind", "images") != getattr(dls, "input_kind", "images"):
        raise ValueError(f"model reads {model.input_kind!r} but the DataLoaders serve {dls.input_kind!r}")
    cbs = [AuxiliaryLoss(), FrozenEncoders()]
    if modality_dropout > 0:
        cbs.append(ModalityDropout(modality_dropout, seed=seed))
    if csv_log:
        cbs.append(CSVLogger(fname=csv_log))
    if early_stopping:
        cbs.append(EarlyStoppingCallback(monitor="valid_loss", patience=int(early_stopping)))
    if save_best:
        cbs.append(SaveBest())
    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="mmlib-learner-"))
    learn = Learner(dls, model, loss_func=BCEWithLogitsLossFlat(), opt_func=Adam, lr=lr, wd=wd,
                    splitter=lambda m: [list(m.encoder_parameters()), list(m.head_parameters())],
                    metrics=binary_metrics(), cbs=cbs, path=path, model_dir=".", train_bn=not frozen)
    if frozen:
        learn.freeze()
    learn.model_name = name
    return learn


# ----------------------------------------------------------------------------------------------- predict
@torch.no_grad()
def predict_proba(model: nn.Module, dataset, *, keep=None, bs: int = 64, device=None,
                  progress: bool = False) -> np.ndarray:
    """Probability of malignancy for every sample of ``dataset``; ``keep`` restricts the present inputs;
    ``progress`` shows a bar over the batches."""
    from torch.utils.data import DataLoader

    device = torch.device(device or "cpu")
    model.eval().to(device)
    out = []
    batches = DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=collate)
    if progress:
        from .progress import progress_bar

        batches = progress_bar(batches, f"predicting {len(dataset)} patients")
    for x, _ in batches:
        if keep is not None:
            x = with_presence(x, keep)
        x = {k: v.to(device) for k, v in x.items()}
        out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


# ----------------------------------------------------------------------------------------------- seed ensembles
class SeedEnsemble(nn.Module):
    """One model trained with several seeds, used as one: its probability of malignancy is the mean of its
    members' (as the study averages its seeds' predictions), returned as that mean's logit so that every caller
    that applies a sigmoid reads the mean. ``thresholds`` are the members' decision thresholds (or None).

    Members whose image encoders hold the same weights (the frozen ImageNet encoder of the CPU profile) share one
    encoder module, so a saved ensemble stores it once: ``tie_encoders`` None ties them where the weights are
    equal, True always (loading a saved ensemble that was tied), False never."""

    def __init__(self, members, seeds, thresholds=None, *, tie_encoders: bool | None = None):
        super().__init__()
        members, seeds = list(members), [int(s) for s in seeds]
        if len(members) < 2 or len(members) != len(seeds):
            raise ValueError(f"SeedEnsemble needs two or more members, one per seed; got {len(members)} members "
                             f"for seeds {seeds}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"SeedEnsemble seeds must differ, got {seeds}")
        configs = [m.config() for m in members]
        if any(c != configs[0] for c in configs[1:]):
            raise ValueError("SeedEnsemble members must be the same model with the same settings")
        self.members = nn.ModuleList(members)
        self.seeds = seeds
        self.thresholds = None if thresholds is None else [None if t is None else float(t) for t in thresholds]
        self.tied_encoders = self._same_encoders() if tie_encoders is None else bool(tie_encoders)
        if self.tied_encoders:
            for m in self.members[1:]:
                m.encoders = self.members[0].encoders

    def _same_encoders(self) -> bool:
        first = self.members[0].encoders.state_dict()
        others = (m.encoders.state_dict() for m in self.members[1:])
        return all(o.keys() == first.keys() and all(torch.equal(first[k], o[k]) for k in first) for o in others)

    def config(self) -> dict:
        return self.members[0].config()

    def _tied_key(self, key: str) -> bool:
        """Whether ``key`` of the state dict is a later member's view of the shared encoder."""
        return self.tied_encoders and key.startswith("members.") and not key.startswith("members.0.") and (
            key.split(".", 2)[2].startswith("encoders."))

    def stored_state(self) -> dict:
        """The tensors a saved ensemble holds: its state dict, the shared encoder once (under member 0)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not self._tied_key(k)}

    def load_stored(self, tensors: dict, *, source="") -> None:
        """Load :meth:`stored_state`'s tensors; any other missing or unexpected key is an error naming it."""
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not self._tied_key(k)]
        if missing or unexpected:
            raise RuntimeError(f"{source}: the ensemble's weights do not fit its members: missing {missing[:5]}, "
                               f"unexpected {list(unexpected)[:5]}")

    def forward(self, x):
        p = torch.stack([torch.sigmoid(m(x).float()) for m in self.members]).mean(0)
        return torch.logit(p, eps=1e-7)


def ensemble_threshold(thresholds) -> float | None:
    """An ensemble's decision threshold: the mean of its members' (the study's rule for averaged seeds), or None
    when a member has none."""
    ts = list(thresholds)
    return None if not ts or any(t is None for t in ts) else float(np.mean(ts))


# ----------------------------------------------------------------------------------------------- model folders
def save_model(model: nn.Module, folder, *, name: str, spec: SampleSpec, threshold: float | None = None,
               info: dict | None = None, lesion: dict | None = None) -> Path:
    """Save ``model`` as ``folder/model.safetensors`` + ``folder/model.json`` (no pickle anywhere).

    The JSON holds the registry name and constructor arguments, the encoder, image size and normalisation,
    clinical scaling, view slots, the decision threshold, the mmlib version, ``info`` (e.g. the training
    cohort summary) and ``lesion``: where the lesion of a view comes from (``source``, ``modalities``,
    ``segmenters``; see :mod:`mmlib.deploy`).
    """
    from safetensors.torch import save_model as st_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(model.config())
    config["input_kind"] = "images"  # a saved model reads images; the feature cache is a training detail
    ensemble = isinstance(model, SeedEnsemble)
    if ensemble:
        from safetensors.torch import save_file

        save_file(model.stored_state(), str(folder / MODEL_WEIGHTS))
    else:
        st_save(model, str(folder / MODEL_WEIGHTS))
    meta = {
        "format": ENSEMBLE_FORMAT if ensemble else MODEL_FORMAT,
        "mmlib_version": __version__,
        "model": name,
        "model_kwargs": config,
        "sample_spec": spec.to_dict(),
        "threshold": None if threshold is None else float(threshold),
        "info": _jsonable(info or {}),
    }
    if lesion is not None:
        meta["lesion"] = _jsonable(lesion)
    if ensemble:
        meta["ensemble"] = {"seeds": model.seeds, "thresholds": model.thresholds,
                            "tied_encoders": model.tied_encoders, "combine": "mean probability"}
    (folder / MODEL_CONFIG).write_text(json.dumps(meta, indent=2))
    return folder


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


class UnsafeModelFolder(ValueError):
    """A model folder holding files that could run code when loaded."""


def load_model(folder, *, input_kind: str = "images", device="cpu"):
    """Rebuild a saved model from ``model.json`` and ``model.safetensors`` (never unpickles anything).

    Returns:
        ``(model, meta)`` with the model in eval mode and ``meta`` the JSON record (``meta["spec"]`` is the
        :class:`~mmlib.data.SampleSpec` to build inputs with).
    """
    from safetensors.torch import load_model as st_load

    from .models import create_model

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    risky = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if risky:
        raise UnsafeModelFolder(
            f"{folder} holds {risky}: files that may contain pickled code are refused; a model folder holds only "
            f"{MODEL_WEIGHTS} and {MODEL_CONFIG}"
        )
    for needed in (MODEL_WEIGHTS, MODEL_CONFIG):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder / needed} is missing: not an mmlib model folder")
    meta = json.loads((folder / MODEL_CONFIG).read_text())
    if meta.get("format") not in (MODEL_FORMAT, ENSEMBLE_FORMAT):
        raise ValueError(f"{folder / MODEL_CONFIG}: unknown format {meta.get('format')!r}, expected "
                         f"{MODEL_FORMAT!r} or {ENSEMBLE_FORMAT!r}")
    kwargs = dict(meta["model_kwargs"])
    kwargs["input_kind"] = input_kind
    kwargs["encoder_weights"] = "none"  # the weights come from the safetensors file
    if meta["format"] == ENSEMBLE_FORMAT:
        ens = meta.get("ensemble") or {}
        if not isinstance(ens.get("seeds"), list) or len(ens["seeds"]) < 2:
            raise ValueError(f"{folder / MODEL_CONFIG}: format {ENSEMBLE_FORMAT!r} needs 'ensemble.seeds', a list "
                             f"of two or more seeds; got {ens.get('seeds')!r}")
        from safetensors.torch import load_file

        model = SeedEnsemble([create_model(meta["model"], **kwargs) for _ in ens["seeds"]], ens["seeds"],
                             ens.get("thresholds"), tie_encoders=bool(ens.get("tied_encoders")))
        model.load_stored(load_file(str(folder / MODEL_WEIGHTS), device=str(device)), source=str(folder))
        model.to(device)
    else:
        model = create_model(meta["model"], **kwargs)
        st_load(model, str(folder / MODEL_WEIGHTS), strict=True, device=str(device))
    meta["spec"] = SampleSpec.from_dict(meta["sample_spec"])
    return model.eval(), meta


def predict_manifest(model_dir, manifest, *, bs: int = 32, device="cpu"):
    """Apply a saved model to every patient of a manifest: :func:`mmlib.deploy.predict_manifest`."""
    from .deploy import predict_manifest as predict

    return predict(model_dir, manifest, bs=bs, device=device)
