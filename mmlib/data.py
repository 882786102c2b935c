"""Multimodal samples and fastai DataLoaders, with a frozen-encoder feature cache for CPUs.

A sample follows :mod:`mmlib.batch`: the images of each modality (several views allowed, padded to a fixed
number of view slots), the clinical vector with missing-value indicators and a presence mask per modality.

Two ways to feed a model:

- **images** (end to end, the GPU profile): :class:`MultimodalDataset` decodes, crops, resizes and augments
  the images (per modality, training side only); the model runs its encoders.
- **features** (the CPU fast path): with frozen encoders, :class:`FeatureCache` runs the encoder once per image
  and view, and once per augmented copy of training images, and :class:`FeatureDataset` serves those maps.
  The same model class reads them (``input_kind="features"``) and gives the same logits as on images.

Modality dropout (training only) is a fastai callback, :class:`mmlib.learner.ModalityDropout`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .batch import CLINICAL, PRESENT, outline_key, views_key
from .imaging import crop_roi, read_image, read_mask, resize_square
from .schema import IMAGE_MODALITIES, MODALITIES, bbox_column, mask_column

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- clinical
@dataclass
class ClinicalScaler:
    """Standardises clinical columns with training statistics and adds a missing-value indicator per column.

    The vector of a patient is ``[z(col_1), missing(col_1), z(col_2), missing(col_2), ...]``; a missing value
    becomes 0 (the training mean) with its indicator 1, so the model knows it was never measured.
    """

    columns: list[str]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, patients: pd.DataFrame, columns: list[str]) -> "ClinicalScaler":
        missing = [c for c in columns if c not in patients.columns]
        if missing:
            raise ValueError(f"clinical columns {missing} not in the cohort (columns: {list(patients.columns)})")
        mean, std = [], []
        for c in columns:
            v = pd.to_numeric(patients[c], errors="coerce").to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            mean.append(float(v.mean()) if len(v) else 0.0)
            s = float(v.std(ddof=1)) if len(v) > 1 else 1.0
            std.append(s if s > 0 else 1.0)
        return cls(list(columns), mean, std)

    @property
    def n_features(self) -> int:
        return 2 * len(self.columns)

    def transform(self, patients: pd.DataFrame) -> np.ndarray:
        """``(N, 2 * n_columns)`` float32 array."""
        out = np.zeros((len(patients), self.n_features), dtype=np.float32)
        for j, c in enumerate(self.columns):
            v = pd.to_numeric(patients[c], errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(v)
            out[ok, 2 * j] = (v[ok] - self.mean[j]) / self.std[j]
            out[~ok, 2 * j + 1] = 1.0
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClinicalScaler":
        return cls(list(d["columns"]), [float(x) for x in d["mean"]], [float(x) for x in d["std"]])


def clinical_presence(patients: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A patient has the clinical modality when any clinical value is recorded."""
    if not columns:
        return np.zeros(len(patients), dtype=bool)
    vals = np.stack([pd.to_numeric(patients[c], errors="coerce").to_numpy(dtype=float) for c in columns], axis=1)
    return np.isfinite(vals).any(axis=1)


# ----------------------------------------------------------------------------------------------- images
@dataclass
class ImageSettings:
    """How an image becomes a model input.

    Args:
        size: side of the square input in pixels (letterboxed, aspect kept).
        roi: crop around the lesion (mask or box from the manifest) before resizing.
        roi_margin: margin around the lesion, as a fraction of the lesion's size.
        mean, std: normalisation of the encoder (ImageNet by default); the gray image is repeated on 3 channels.
    """

    size: int = 224
    roi: bool = False
    roi_margin: float = 0.15
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if int(self.size) < 16:
            raise ValueError(f"image size must be >= 16 px, got {self.size}")
        if self.roi_margin < 0:
            raise ValueError(f"roi_margin must be >= 0, got {self.roi_margin}")
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


@dataclass
class Augmentation:
    """Per-modality training augmentation (never applied to validation or test images).

    Ultrasound is never flipped vertically: posterior acoustic shadowing lies *below* a lesion and is a cue.
    """

    hflip: bool = True
    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.1

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``img``: (1, H, W) in [0, 1]. Deterministic given ``gen``."""
        import torchvision.transforms.v2.functional as F

        def u(a, b):
            return float(a + (b - a) * torch.rand((), generator=gen))

        if self.hflip and torch.rand((), generator=gen) < 0.5:
            img = torch.flip(img, dims=[-1])
        h, w = img.shape[-2:]
        angle = u(-self.degrees, self.degrees)
        tx, ty = u(-self.translate, self.translate) * w, u(-self.translate, self.translate) * h
        sc = u(*self.scale)
        img = F.affine(img, angle=angle, translate=[tx, ty], scale=sc, shear=[0.0, 0.0])
        img = (img - 0.5) * u(1 - self.contrast, 1 + self.contrast) + 0.5 + u(-self.brightness, self.brightness)
        return img.clamp(0, 1)


DEFAULT_AUGMENTATION = {
    "mammography": Augmentation(degrees=10.0),
    "ultrasound": Augmentation(degrees=5.0),
}


class ImageLoader:
    """Decodes, crops and resizes images once, keeping the result in memory (float16) for later epochs."""

    def __init__(self, settings: ImageSettings):
        self.settings = settings
        self._cache: dict[tuple, np.ndarray] = {}

    def __call__(self, path: Path, mask: Path | None = None, bbox=None) -> np.ndarray:
        key = (str(path), str(mask), tuple(bbox) if bbox is not None else None)
        if key not in self._cache:
            img = read_image(path)
            if self.settings.roi and (mask is not None or bbox is not None):
                m = read_mask(mask) if mask is not None else None
                img = crop_roi(img, mask=m, bbox=bbox, margin=self.settings.roi_margin)
            self._cache[key] = resize_square(img, int(self.settings.size)).astype(np.float16)
        return self._cache[key].astype(np.float32)

    def normalise(self, img: torch.Tensor) -> torch.Tensor:
        """(1, H, W) in [0, 1] -> (3, H, W) normalised."""
        mean = torch.tensor(self.settings.mean, dtype=img.dtype).view(3, 1, 1)
        std = torch.tensor(self.settings.std, dtype=img.dtype).view(3, 1, 1)
        return (img.expand(3, -1, -1) - mean) / std


def _item(values, i):
    if values is None or (isinstance(values, float) and np.isnan(values)):
        return None
    return values[i] if i < len(values) else None


def patient_views(row: pd.Series, modality: str) -> list[tuple[Path, Path | None, tuple | None]]:
    """(image, mask, bbox) of each view of ``modality`` for one cohort row."""
    paths = row[modality] if isinstance(row[modality], list) else []
    masks = row.get(mask_column(modality))
    boxes = row.get(bbox_column(modality))
    masks = masks if isinstance(masks, list) else None
    boxes = boxes if isinstance(boxes, list) else None
    return [(Path(p), _item(masks, i), _item(boxes, i)) for i, p in enumerate(paths)]


def max_views(patients: pd.DataFrame) -> dict[str, int]:
    """Number of view slots per modality: the most views any patient has (at least 1)."""
    out = {}
    for m in IMAGE_MODALITIES:
        n = patients[m].map(lambda v: len(v) if isinstance(v, list) else 0)
        out[m] = max(1, int(n.max()) if len(n) else 1)
    return out


def _stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") & 0x7FFFFFFF


#: How augmented draws are seeded; part of the feature cache's key, so caches drawn another way are not reused.
AUGMENTATION_SEEDING = "file-and-two-folders"


def _image_key(path) -> str:
    """A view's identity for seeding its augmentation: the file name and its two parent folders. The absolute path
    would tie every augmented draw, and so every result, to where the cohort happens to be checked out."""
    return "/".join(Path(path).parts[-3:])


# ----------------------------------------------------------------------------------------------- datasets
@dataclass
class SampleSpec:
    """Everything needed to turn cohort rows into samples; saved with a model so predictions match training."""

    clinical: ClinicalScaler
    images: ImageSettings = field(default_factory=ImageSettings)
    views: dict = field(default_factory=lambda: {m: 1 for m in IMAGE_MODALITIES})
    use_clinical: bool = True
    #: lesion-outline morphometry per view (see :mod:`mmlib.morphometry`), standardised; None: not an input.
    outline: "OutlineScaler | None" = None

    def to_dict(self) -> dict:
        return {"clinical": self.clinical.to_dict(), "images": self.images.to_dict(), "views": dict(self.views),
                "use_clinical": self.use_clinical, "outline": None if self.outline is None else self.outline.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "SampleSpec":
        outline = d.get("outline")
        return cls(ClinicalScaler.from_dict(d["clinical"]), ImageSettings(**d["images"]), dict(d["views"]),
                   bool(d.get("use_clinical", True)), None if outline is None else OutlineScaler.from_dict(outline))


def view_outlines(row: pd.Series, modality: str, n_views: int | None = None) -> np.ndarray:
    """Raw outline descriptors ``(n_views, K)`` of one cohort row's views of ``modality`` (zeros: no outline;
    ``n_views`` None: one row per view the patient has)."""
    from .morphometry import OUTLINE_FEATURES, outline_of

    views = patient_views(row, modality)
    n_views = len(views) if n_views is None else n_views
    out = np.zeros((n_views, len(OUTLINE_FEATURES)), dtype=np.float32)
    for j, (_, mask, _) in enumerate(views[:n_views]):
        out[j] = outline_of(mask)
    return out


@dataclass
class OutlineScaler:
    """Standardises outline descriptors per imaging modality with the mean and spread of the training views that
    have an outline (``has_outline``, the last descriptor, stays 0/1; views without an outline stay all zero)."""

    mean: dict
    std: dict

    @classmethod
    def fit(cls, patients: pd.DataFrame) -> "OutlineScaler":
        from .morphometry import OUTLINE_FEATURES

        k = len(OUTLINE_FEATURES) - 1
        mean, std, counts = {}, {}, {}
        for m in IMAGE_MODALITIES:
            rows = [view_outlines(patients.iloc[i], m) for i in range(len(patients))]
            feats = np.concatenate(rows) if rows else np.zeros((0, k + 1), dtype=np.float32)
            feats = feats[feats[:, -1] > 0, :-1]
            counts[m] = len(feats)
            sd = feats.std(0) if len(feats) >= 2 else np.ones(k)
            mean[m] = (feats.mean(0) if len(feats) >= 2 else np.zeros(k)).astype(float).tolist()
            std[m] = np.where(sd > 1e-6, sd, 1.0).astype(float).tolist()
        if max(counts.values()) < 2:
            raise ValueError(f"lesion-outline features need lesion masks: of these {len(patients)} patients, "
                             f"{counts} view(s) per modality have a non-empty one (cohort columns '<modality>_mask')")
        return cls(mean, std)

    def transform(self, raw: np.ndarray, modality: str) -> np.ndarray:
        """``(..., K)`` raw descriptors of ``modality``'s views -> standardised, same shape."""
        raw = np.asarray(raw, dtype=np.float32)
        has = raw[..., -1:] > 0
        scaled = (raw[..., :-1] - np.asarray(self.mean[modality], np.float32)) / np.asarray(self.std[modality], np.float32)
        return np.concatenate([np.where(has, scaled, 0.0), has], -1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "OutlineScaler":
        return cls(dict(d["mean"]), dict(d["std"]))


class _BaseDataset(Dataset):
    input_kind = "images"

    def __init__(self, cohort, rows, spec: SampleSpec, *, train: bool = False, seed: int = 0):
        self.cohort, self.spec, self.train, self.seed = cohort, spec, bool(train), int(seed)
        self.rows = np.asarray(rows, dtype=int)
        self.table = cohort.patients.iloc[self.rows].reset_index(drop=True)
        self.clinical = torch.from_numpy(spec.clinical.transform(self.table))
        clin = clinical_presence(self.table, spec.clinical.columns) & spec.use_clinical
        pres = [self.table[m].map(lambda v: isinstance(v, list) and len(v) > 0).to_numpy() for m in IMAGE_MODALITIES]
        self.present = torch.from_numpy(np.stack([*pres, clin], axis=1))
        self.labels = torch.tensor(self.table["label"].to_numpy(), dtype=torch.float32)
        self.outlines = {}
        if spec.outline is not None:
            for m in IMAGE_MODALITIES:
                raw = np.stack([view_outlines(self.table.iloc[i], m, spec.views[m]) for i in range(len(self.table))]) \
                    if len(self.table) else np.zeros((0, spec.views[m], len(spec.outline.mean[m]) + 1), np.float32)
                self.outlines[m] = torch.from_numpy(spec.outline.transform(raw, m))
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def patient_ids(self) -> list[str]:
        return self.table["patient_id"].astype(str).tolist()

    def _modality(self, i: int, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int):
        x = {}
        for m in IMAGE_MODALITIES:
            x[m], x[views_key(m)] = self._modality(i, m)
            if m in self.outlines:
                x[outline_key(m)] = self.outlines[m][i]
        x[CLINICAL] = self.clinical[i]
        x[PRESENT] = self.present[i].clone()
        return x, self.labels[i]


class MultimodalDataset(_BaseDataset):
    """Image samples (``input_kind="images"``) of the cohort rows ``rows``.

    Args:
        cohort: a :class:`mmlib.cohort.Cohort`.
        rows: row positions in ``cohort.patients``.
        spec: clinical scaling, image settings and view slots.
        train: augment (per modality) when True.
        augment: modality -> :class:`Augmentation` (default :data:`DEFAULT_AUGMENTATION`); ``{}`` disables it.
        loader: a shared :class:`ImageLoader` (decoded images are cached there).
    """

    def __init__(self, cohort, rows, spec: SampleSpec, *, train=False, augment=None, loader=None, seed=0):
        super().__init__(cohort, rows, spec, train=train, seed=seed)
        self.augment = DEFAULT_AUGMENTATION if augment is None else augment
        self.loader = loader or ImageLoader(spec.images)
        self._draws = 0

    def _modality(self, i, m):
        v, s = self.spec.views[m], int(self.spec.images.size)
        imgs, flags = torch.zeros(v, 3, s, s), torch.zeros(v, dtype=torch.bool)
        for j, (path, mask, bbox) in enumerate(patient_views(self.table.iloc[i], m)[:v]):
            img = torch.from_numpy(self.loader(path, mask, bbox))[None]
            if self.train and m in self.augment:
                self._draws += 1
                gen = torch.Generator().manual_seed(_stable_seed(self.seed, _image_key(path), self._draws))
                img = self.augment[m](img, gen)
            imgs[j], flags[j] = self.loader.normalise(img), True
        return imgs, flags


class FeatureCache:
    """Encoder feature maps computed once per image view (copy 0) and per augmented copy (1..n_augment).

    Augmented copies exist for training only; copy ``k`` of an image is the same whichever fold uses it (seeded
    by its file name and folders, not by where the cohort lies), so caching across folds never lets a validation
    image be augmented into training. Maps are kept as float16 ``(C, h, w)``.

    Args:
        encoder: an :class:`mmlib.encoders.ImageEncoder` (frozen: it is run in eval mode without gradients).
        settings: image settings (size, ROI crop, normalisation).
        n_augment: augmented copies per training image.
        augment: modality -> :class:`Augmentation`.
        batch_size: images per encoder call.
    """

    def __init__(self, encoder, settings: ImageSettings, *, n_augment: int = 0, augment=None, batch_size: int = 32,
                 seed: int = 0, device: str | torch.device = "cpu", progress: bool = True):
        if n_augment < 0:
            raise ValueError(f"n_augment must be >= 0, got {n_augment}")
        self.encoder, self.settings, self.n_augment = encoder, settings, int(n_augment)
        self.augment = DEFAULT_AUGMENTATION if augment is None else augment
        self.batch_size, self.seed, self.device, self.progress = int(batch_size), int(seed), torch.device(device), progress
        self.loader = ImageLoader(settings)
        self.maps: dict[tuple[str, str, int], torch.Tensor] = {}

    @staticmethod
    def key(modality: str, view: tuple, copy: int) -> tuple[str, str, int]:
        path, mask, bbox = view
        return (modality, f"{path}|{mask}|{bbox}", int(copy))

    def build(self, cohort, rows, *, augment_rows=None) -> "FeatureCache":
        """Encode every view of ``rows`` (copy 0) and ``n_augment`` copies of the views of ``augment_rows``."""
        augment_rows = set(np.asarray(augment_rows if augment_rows is not None else [], dtype=int).tolist())
        jobs = []
        for r in np.asarray(rows, dtype=int):
            row = cohort.patients.iloc[r]
            for m in IMAGE_MODALITIES:
                for view in patient_views(row, m):
                    copies = range(1 + self.n_augment) if r in augment_rows else range(1)
                    for c in copies:
                        k = self.key(m, view, c)
                        if k in self.maps:
                            continue
                        stored = getattr(self, "_stored", {}).get(self._hkey(k))
                        if stored is not None:
                            self.maps[k] = stored
                        else:
                            jobs.append((m, view, c))
        if not jobs:
            return self
        from .progress import progress_bar

        self.encoder.eval().to(self.device)
        starts = range(0, len(jobs), self.batch_size)
        it = progress_bar(starts, f"encoding {len(jobs)} images") if self.progress else starts
        with torch.no_grad():
            for s in it:
                chunk = jobs[s:s + self.batch_size]
                batch = torch.stack([self._input(*job) for job in chunk]).to(self.device)
                feats = self.encoder(batch).to("cpu", torch.float16)
                for job, f in zip(chunk, feats):
                    self.maps[self.key(*job)] = f.clone()
        return self

    def _input(self, m, view, copy):
        img = torch.from_numpy(self.loader(*view))[None]
        if copy > 0 and m in self.augment:
            img = self.augment[m](img, torch.Generator().manual_seed(_stable_seed(self.seed, _image_key(view[0]), copy)))
        return self.loader.normalise(img)

    def get(self, modality, view, copy=0) -> torch.Tensor:
        k = self.key(modality, view, copy)
        if k not in self.maps:
            raise KeyError(f"no cached features for {modality} image {view[0]} (copy {copy}); call build() with its row")
        return self.maps[k]

    def pooled(self, grid: int | None) -> dict:
        """The maps average-pooled to ``grid x grid`` cells (float32), computed once per grid; None = as cached."""
        if grid is None:
            return self.maps
        self._pooled = getattr(self, "_pooled", {})
        if grid not in self._pooled or len(self._pooled[grid]) != len(self.maps):
            import torch.nn.functional as F

            keys = list(self.maps)
            out = {}
            for s in range(0, len(keys), 512):
                chunk = keys[s:s + 512]
                pooled = F.adaptive_avg_pool2d(torch.stack([self.maps[k] for k in chunk]).float(), grid)
                out.update(zip(chunk, pooled))
            self._pooled[grid] = out
        return self._pooled[grid]

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        if not self.maps:
            raise ValueError("the feature cache is empty; call build() first")
        return tuple(next(iter(self.maps.values())).shape)

    def save(self, path) -> Path:
        """Write the maps to one safetensors file (keys are hashes of modality, view and copy)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {self._hkey(k): v.contiguous() for k, v in self.maps.items()}
        save_file(tensors, str(path), metadata={"n_augment": str(self.n_augment)})
        return path

    def load(self, path) -> "FeatureCache":
        """Read maps written by :meth:`save`; views not in the file are encoded by the next :meth:`build`."""
        from safetensors.torch import load_file

        self._stored = load_file(str(path))
        return self

    @staticmethod
    def _hkey(k) -> str:
        return hashlib.sha256(repr(k).encode()).hexdigest()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.maps.values())


class FeatureDataset(_BaseDataset):
    """Cached encoder feature maps (``input_kind="features"``) of the cohort rows ``rows``.

    On the training side each view draws one of its cached copies (0 = unaugmented) per epoch.
    """

    input_kind = "features"

    def __init__(self, cohort, rows, spec: SampleSpec, cache: FeatureCache, *, train=False, seed=0,
                 grid: int | None = None):
        super().__init__(cohort, rows, spec, train=train, seed=seed)
        self.cache, self.grid = cache, grid
        self._rng = np.random.default_rng(seed)
        # Gather every map once into one tensor per modality, (N, copies, V, C, h, w): a sample is then an index,
        # not a dictionary walk per view (that walk dominated training time on cached features). With `grid`
        # the maps come average-pooled to the model's `spatial_grid`, exactly as the model would pool them.
        self.copies = 1 + cache.n_augment if self.train else 1
        store = cache.pooled(grid)
        shape = next(iter(store.values())).shape
        self._maps, self._flags = {}, {}
        for m in IMAGE_MODALITIES:
            v = spec.views[m]
            zero = torch.zeros(shape, dtype=next(iter(store.values())).dtype)
            items, flags = [], torch.zeros(len(self.rows), v, dtype=torch.bool)
            for i, paths in enumerate(self.table[m].tolist()):
                views = patient_views(self.table.iloc[i], m)[:v] if isinstance(paths, list) and paths else []
                for c in range(self.copies):
                    for j in range(v):
                        if j < len(views):
                            k = cache.key(m, views[j], c)
                            items.append(store[k] if k in store else store[cache.key(m, views[j], 0)])
                        else:
                            items.append(zero)
                flags[i, : len(views)] = True
            maps = torch.stack(items) if items else torch.zeros(0, *shape)
            self._maps[m], self._flags[m] = maps.reshape(len(self.rows), self.copies, v, *shape), flags

    def _modality(self, i, m):
        maps = self._maps[m][i]
        if self.copies > 1:
            pick = torch.from_numpy(self._rng.integers(0, self.copies, size=maps.shape[1]))
            maps = maps[pick, torch.arange(maps.shape[1])]
        else:
            maps = maps[0]
        return maps.float(), self._flags[m][i].clone()


def make_dataloaders(train_ds, valid_ds, *, bs: int = 32, seed: int = 0, device=None):
    """fastai :class:`~fastai.data.core.DataLoaders` over two datasets (training shuffled, last partial batch dropped
    only when it would hold a single sample)."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    bs = max(1, min(int(bs), len(train_ds)))
    drop_last = len(train_ds) % bs == 1
    import random

    random.seed(seed)  # fastai DataLoaders draw their shuffling seed from the global `random`
    train = DataLoader(train_ds, bs=bs, shuffle=True, drop_last=drop_last, num_workers=0)
    valid = DataLoader(valid_ds, bs=bs, shuffle=False, drop_last=False, num_workers=0)
    dls = DataLoaders(train, valid, device=device or torch.device("cpu"))
    dls.input_kind = train_ds.input_kind
    return dls


def collate(samples: list) -> tuple[dict, torch.Tensor]:
    """Stack ``(x, y)`` samples into a batch (for plain PyTorch use)."""
    xs, ys = zip(*samples)
    return {k: torch.stack([x[k] for x in xs]) for k in xs[0]}, torch.stack(list(ys))


def modality_availability(patients: pd.DataFrame, clinical_columns: list[str]) -> pd.DataFrame:
    """Boolean presence table (mammography, ultrasound, clinical) of the cohort rows."""
    pres = {m: patients[m].map(lambda v: isinstance(v, list) and len(v) > 0).to_numpy() for m in IMAGE_MODALITIES}
    pres["clinical"] = clinical_presence(patients, clinical_columns)
    return pd.DataFrame(pres, index=patients["patient_id"].astype(str))[list(MODALITIES)]
