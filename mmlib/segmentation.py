"""Lesion segmentation: a U-Net with an ImageNet encoder that outlines the tumour on a grayscale image.

The network is segmentation-models-pytorch's ``Unet`` on a timm encoder (``tu-efficientnet_lite0`` by default,
its ImageNet weights read offline through :mod:`mmlib.encoders`), trained with MONAI's ``DiceCELoss``. On the CPU
the first ``frozen_blocks`` encoder blocks stay frozen: their outputs (the high-resolution skips) are computed
once per image and augmented copy, and only the deeper blocks and the decoder train. ``train_mode="finetune"``
(the GPU profile) trains everything on augmented images.

A :class:`Segmenter` is the fitted whole: network, image settings and the probability threshold. Its
:meth:`~Segmenter.predict` returns one :class:`PredictedMask` per image, at the image's own size, keeping the
largest connected component (the lesion). With ``refine_size`` it works coarse to fine: a second network of the
same kind (the refiner), trained on jittered square crops around the expert's lesion, redraws the outline in a crop
around the lesion the whole-image network found. :func:`fit_segmenter` trains one; it lives here as a function over
fastai's ``Learner``, not in the network.

Shapes: the network takes ``(N, 3, S, S)`` normalised letterboxed images and returns ``(N, 1, S, S)`` logits.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "PredictedMask",
    "SegmenterSettings",
    "LesionUNet",
    "Segmenter",
    "UnsafeSegmenterFolder",
    "fit_segmenter",
    "dice_iou",
    "largest_component",
    "SEGMENTER_WEIGHTS",
    "SEGMENTER_CONFIG",
    "REFINER_WEIGHTS",
    "INFERENCE",
    "POST_PROCESSING",
    "set_post_processing",
    "ensemble_segmenters",
]

SEGMENTER_WEIGHTS = "segmenter.safetensors"
SEGMENTER_CONFIG = "segmenter.json"
REFINER_WEIGHTS = "segmenter-refiner.safetensors"
SEGMENTER_FORMAT = "mmlib-segmenter/1"
#: The format of a saved ensemble of segmenters (:func:`ensemble_segmenters`); a single segmenter keeps /1.
ENSEMBLE_FORMAT = "mmlib-segmenter/2"
TRAIN_MODES = ("frozen", "finetune")
PRECISIONS = ("float32", "bfloat16")
#: Settings that change no mask, only what is said about it: outside reuse keys, settable on a saved segmenter.
POST_PROCESSING = ("uncertain_below",)
#: Settings that change the masks but not the network (how it is read at prediction): a cached segmenter is not
#: refitted for them, only run again (:meth:`SegmenterSettings.network_settings`).
INFERENCE = ("tta", "tta_scales", "refine_margins", "threshold", "min_area")
#: Settings the refiner may set apart from the whole-image network's (``SegmenterSettings.refiner_overrides``).
REFINER_OVERRIDABLE = ("epochs", "n_augment", "lr", "wd", "bs", "output_stride", "decoder_channels", "precision",
                       "augment")
#: Values of ``SegmenterSettings.augment``.
AUGMENTATIONS = ("standard", "strong")


@dataclass
class SegmenterSettings:
    """How a segmenter is built and trained.

    Args:
        encoder: timm EfficientNet/MobileNet-family name (``tu-<name>`` in segmentation-models-pytorch).
        encoder_weights: ``imagenet`` (efficientnet_lite0: offline) or ``none``.
        image_size: side of the letterboxed square the network reads.
        decoder_channels: channels of the U-Net decoder stages, deepest first.
        train_mode: ``frozen`` (the first ``frozen_blocks`` cached, the rest trained) or ``finetune`` (all trained).
        frozen_blocks: encoder blocks (after the stem) kept frozen and cached in ``frozen`` mode.
        n_augment: augmented copies per training image (``frozen``: cached beside the plain copy).
        augment: ``standard`` (mirror, a small affine, brightness and contrast) or ``strong``, for images from
            other scanners: a wider affine (scale 0.75-1.3), stronger brightness and contrast, a gamma curve, and
            now and then blur, sharpening or Gaussian noise (:data:`AUGMENTATIONS`).
        epochs, lr, wd, bs: one-cycle training schedule.
        threshold: lesion probability above which a pixel is lesion.
        min_area: smallest lesion kept, as a fraction of the image's area; below it the lesion is not found.
        tta: average the probabilities of the image and its horizontal mirror.
        tta_scales: sides (multiples of 32) at which the whole-image network also reads each image; the lesion
            probabilities are averaged over them (and the mirror) in the ``image_size`` letterbox. Empty: only
            ``image_size``. It changes the masks but not the network: a cached segmenter is not refitted for it
            (:data:`INFERENCE`).
        refine_margins: margins of the refiner's crops around the found lesion, averaged where they overlap (each
            as ``refine_margin``). Empty: ``refine_margin`` alone. Like ``tta_scales``, prediction only.
        output_stride: 1 runs the decoder's last stage at the input's resolution; 2 runs it at half resolution
            and upsamples the logits bilinearly (on BrEaST development folds a CPU fit about a quarter faster,
            Dice 0.012 lower: params/breast-lesions-usg.yaml).
        precision: ``float32``, or ``bfloat16``: training's forward pass under bfloat16 autocast (the weights and
            the optimiser stay float32; prediction always runs in float32). Meant for GPUs: on this project's
            2-core CPU a BrEaST fit was 2% faster and 0.004 lower in Dice (params/breast-lesions-usg.yaml).
        refine_size: 0 segments the whole image once. Above 0, a second network of the same kind (the refiner)
            is trained on square crops around the expert's lesion, ``refine_size`` pixels a side, and at prediction
            re-segments a crop around the lesion the first network found (coarse to fine: the lesion fills the
            refiner's input, so its outline is drawn at a higher resolution than the whole image allows).
        refine_margin: the crop around the lesion's box, as a fraction of its height and width added on each side;
            training crops draw it from half to one and a half times this, their centre shifted by up to 15% of
            the crop's side (the coarse lesion's box is never exact).
        refiner_overrides: settings of the refiner that differ from the whole-image network's, among
            :data:`REFINER_OVERRIDABLE` (e.g. ``{"epochs": 4}``); the frozen stem is always shared.
        uncertain_below: a found lesion whose score (mean lesion probability inside its mask) is below this is
            reported as an uncertain outline (:mod:`mmlib.deploy` says so in the row's note); 0 never. It changes no
            mask, so it is outside the reuse key (:data:`POST_PROCESSING`), and a saved segmenter's value can be set
            again (:func:`set_post_processing`).
    """

    encoder: str = "efficientnet_lite0"
    encoder_weights: str = "imagenet"
    image_size: int = 160
    decoder_channels: tuple = (128, 64, 32, 16, 16)  # a last stage of 4 channels died in 1 of 3 folds at lr 1e-3
    train_mode: str = "frozen"
    frozen_blocks: int = 3
    n_augment: int = 2
    augment: str = "standard"
    epochs: int = 6
    lr: float = 1e-3
    wd: float = 1e-4
    bs: int = 16
    threshold: float = 0.5
    min_area: float = 0.001
    tta: bool = True
    tta_scales: tuple = ()
    refine_margins: tuple = ()
    output_stride: int = 1
    precision: str = "float32"
    refine_size: int = 0
    refine_margin: float = 0.3
    refiner_overrides: dict = field(default_factory=dict)
    uncertain_below: float = 0.0

    def __post_init__(self):
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        self.tta_scales = _int_tuple("tta_scales", self.tta_scales)
        self.refine_margins = tuple(float(m) for m in _listed("refine_margins", self.refine_margins))
        if not isinstance(self.refiner_overrides, dict):
            raise ValueError(f"segmenter refiner_overrides must be a mapping of settings, got "
                             f"{self.refiner_overrides!r}")
        self.refiner_overrides = dict(self.refiner_overrides)
        bad = sorted(set(self.refiner_overrides) - set(REFINER_OVERRIDABLE))
        if bad:
            raise ValueError(f"segmenter refiner_overrides: {bad} cannot differ for the refiner; it may override "
                             f"{list(REFINER_OVERRIDABLE)}")
        if self.refiner_overrides and not int(self.refine_size):
            raise ValueError("segmenter refiner_overrides needs a refiner (refine_size > 0)")
        if "decoder_channels" in self.refiner_overrides:
            self.refiner_overrides["decoder_channels"] = [int(c) for c in self.refiner_overrides["decoder_channels"]]
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"segmenter train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.encoder_weights not in ("imagenet", "none"):
            raise ValueError(f"segmenter encoder_weights must be 'imagenet' or 'none', got {self.encoder_weights!r}")
        if int(self.image_size) < 32 or int(self.image_size) % 32:
            raise ValueError(f"segmenter image_size must be a multiple of 32 and >= 32, got {self.image_size!r}")
        if len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1:
            raise ValueError(f"segmenter decoder_channels must be 5 positive ints, got {self.decoder_channels!r}")
        for name in ("epochs", "bs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"segmenter {name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.n_augment) < 0 or int(self.frozen_blocks) < 0:
            raise ValueError("segmenter n_augment and frozen_blocks must be >= 0, got "
                             f"{self.n_augment!r} and {self.frozen_blocks!r}")
        if not 0 < float(self.threshold) < 1:
            raise ValueError(f"segmenter threshold must be in (0, 1), got {self.threshold!r}")
        if int(self.output_stride) not in (1, 2):
            raise ValueError(f"segmenter output_stride must be 1 or 2, got {self.output_stride!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"segmenter augment must be one of {list(AUGMENTATIONS)}, got {self.augment!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"segmenter precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= float(self.min_area) < 1:
            raise ValueError(f"segmenter min_area must be in [0, 1), got {self.min_area!r}")
        if int(self.refine_size) and (int(self.refine_size) < 32 or int(self.refine_size) % 32):
            raise ValueError(f"segmenter refine_size must be 0 (no refiner) or a multiple of 32, got "
                             f"{self.refine_size!r}")
        if not 0 <= float(self.refine_margin) <= 2:
            raise ValueError(f"segmenter refine_margin must be in [0, 2], got {self.refine_margin!r}")
        bad = [v for v in self.tta_scales if v < 32 or v % 32]
        if bad:
            raise ValueError(f"segmenter tta_scales must be multiples of 32 and >= 32, got {list(self.tta_scales)}")
        if any(not 0 <= m <= 2 for m in self.refine_margins):
            raise ValueError(f"segmenter refine_margins must each be in [0, 2], got {list(self.refine_margins)}")
        if self.refine_margins and not int(self.refine_size):
            raise ValueError("segmenter refine_margins needs a refiner (refine_size > 0)")
        if not 0 <= float(self.uncertain_below) < 1:
            raise ValueError(f"segmenter uncertain_below must be in [0, 1) (0: never), got {self.uncertain_below!r}")
        if self.refiner_overrides:
            self.refiner_settings()  # the refiner's own settings are checked too

    @property
    def scales(self) -> tuple:
        """The sides the whole-image network reads each image at in prediction (``image_size`` first)."""
        size = int(self.image_size)
        return (size, *dict.fromkeys(v for v in self.tta_scales if v != size))

    @property
    def margins(self) -> tuple:
        """The margins of the refiner's crops in prediction."""
        return self.refine_margins or (float(self.refine_margin),)

    def network_settings(self) -> "SegmenterSettings":
        """These settings with those of :data:`INFERENCE` at their defaults: what decides the fitted network."""
        defaults = {k: SegmenterSettings.__dataclass_fields__[k].default for k in INFERENCE}
        return replace(self, **defaults)

    def refiner_settings(self) -> "SegmenterSettings":
        """The refiner's settings: these, with :attr:`refiner_overrides` applied."""
        return replace(self, refiner_overrides={}, **self.refiner_overrides)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SegmenterSettings":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown segmenter settings {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        d["tta_scales"], d["refine_margins"] = list(self.tta_scales), list(self.refine_margins)
        return d

    #: Settings added after segmenters were first cached, with the value that behaves as before they existed.
    ADDED_LATER = {"output_stride": 1, "precision": "float32", "refine_size": 0, "refine_margin": 0.3,
                   "refiner_overrides": {}, "augment": "standard", "tta_scales": [], "refine_margins": []}

    def key_dict(self) -> dict:
        """:meth:`to_dict` for reuse keys: a setting added later enters only when it differs from the behaviour
        before it existed, so masks fitted before it was added stay reusable."""
        return {k: v for k, v in self.to_dict().items()
                if k not in POST_PROCESSING and not (k in self.ADDED_LATER and v == self.ADDED_LATER[k])}


@dataclass
class PredictedMask:
    """The segmenter's answer for one image.

    Attributes:
        mask: bool ``(H, W)`` at the original image's size: the largest lesion component (all False if none).
        found: whether a component passed the threshold and the minimum area.
        score: mean lesion probability inside the mask (the highest probability anywhere when nothing is found).
        refined: None without a refiner or where the whole-image network found no lesion; True where the refiner
            redrew the outline; False where the refiner found no lesion in its crop and the whole-image network's
            outline was kept (the row says so: :data:`mmlib.deploy.NOT_REFINED_NOTE`).
        whole_image: with a refiner, when asked (``Segmenter.predict(whole_image=True)``), the whole-image
            network's own answer for the same image (for comparisons); None otherwise.
    """

    mask: np.ndarray
    found: bool
    score: float
    refined: bool | None = None
    whole_image: "PredictedMask | None" = None


# ----------------------------------------------------------------------------------------------- network
class LesionUNet(nn.Module):
    """segmentation-models-pytorch ``Unet`` on a timm encoder, split where the encoder stops being frozen.

    :meth:`stem` runs the stem and the first ``frozen_blocks`` blocks and returns what the rest needs (the skips
    so far and the running map); :meth:`head` runs the remaining blocks, the decoder and the segmentation head.
    ``forward(x) == head(stem(x))``.

    Args:
        encoder: timm name (EfficientNet / MobileNet family: ``conv_stem``, ``bn1``, ``blocks``).
        decoder_channels: the U-Net decoder's channels, deepest first.
        frozen_blocks: number of encoder blocks in :meth:`stem`.
        output_stride: 2 runs the decoder's last stage at half the input's resolution and upsamples the logits.
    """

    def __init__(self, *, encoder: str = "efficientnet_lite0", decoder_channels=(64, 32, 16, 8, 4),
                 frozen_blocks: int = 3, output_stride: int = 1):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(f"tu-{encoder}", encoder_weights=None, decoder_channels=tuple(decoder_channels),
                            classes=1, in_channels=3)
        body = self.net.encoder.model
        for needed in ("conv_stem", "bn1", "blocks", "_stage_out_idx"):
            if not hasattr(body, needed):
                raise ValueError(f"segmenter encoder {encoder!r} is not a timm EfficientNet/MobileNet-family model "
                                 f"(it has no {needed!r}); choose e.g. efficientnet_lite0 or mobilenetv3_large_100")
        if not 0 <= frozen_blocks <= len(body.blocks):
            raise ValueError(f"frozen_blocks must be in 0..{len(body.blocks)} for {encoder!r}, got {frozen_blocks!r}")
        self.frozen_blocks = int(frozen_blocks)
        if int(output_stride) not in (1, 2):
            raise ValueError(f"output_stride must be 1 or 2, got {output_stride!r}")
        self.output_stride = int(output_stride)

    @property
    def body(self) -> nn.Module:
        return self.net.encoder.model

    def frozen_parameters(self):
        b = self.body
        yield from b.conv_stem.parameters()
        yield from b.bn1.parameters()
        for block in b.blocks[: self.frozen_blocks]:
            yield from block.parameters()

    def stem_state(self) -> dict[str, torch.Tensor]:
        """Weights and statistics of what :meth:`stem` runs (the stem and the first ``frozen_blocks`` blocks)."""
        b = self.body
        modules = {"conv_stem": b.conv_stem, "bn1": b.bn1,
                   **{f"blocks.{i}": blk for i, blk in enumerate(b.blocks[: self.frozen_blocks])}}
        return {f"{name}.{k}": v for name, mod in modules.items() for k, v in mod.state_dict().items()}

    def stem(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (N, 3, S, S) -> ``[*skips, running map]`` after the frozen blocks."""
        b = self.body
        y = b.bn1(b.conv_stem(x.contiguous(memory_format=torch.channels_last)))  # channels-last: 1.5x (bench_encoder.py)
        skips = []
        for i, block in enumerate(b.blocks[: self.frozen_blocks]):
            y = block(y)
            if i + 1 in b._stage_out_idx:
                skips.append(y)
        return [*skips, y]

    def head(self, cached: Sequence[torch.Tensor]) -> torch.Tensor:
        """The output of :meth:`stem` -> logits ``(N, 1, S, S)``."""
        b = self.body
        *skips, y = cached
        skips = list(skips)
        for i in range(self.frozen_blocks, len(b.blocks)):
            y = b.blocks[i](y)
            if i + 1 in b._stage_out_idx:
                skips.append(y)
        n, _, h, w = (skips[0] if skips else y).shape
        # The decoder reads only the size of its first feature (the input image): an empty tensor carries it. At
        # output stride 2 it says half the input's size, so the last stage refines at half resolution.
        s = 2 // self.output_stride
        logits = self.net.segmentation_head(self.net.decoder([y.new_empty(n, 0, h * s, w * s), *skips]))
        if self.output_stride > 1:
            logits = nn.functional.interpolate(logits, size=(h * 2, w * 2), mode="bilinear", align_corners=False)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"LesionUNet expects (N, 3, S, S) images with S a multiple of 32, got {tuple(x.shape)}")
        return self.head(self.stem(x))


class _CachedHead(nn.Module):
    """Trains :meth:`LesionUNet.head` on cached :meth:`LesionUNet.stem` outputs (fastai passes them as inputs)."""

    def __init__(self, net: LesionUNet):
        super().__init__()
        self.net = net

    def forward(self, *cached):
        return self.net.head([c.float().contiguous(memory_format=torch.channels_last) for c in cached])


class MeanProbability(nn.Module):
    """Several networks of one architecture read as one: :meth:`probability` is the mean of their lesion
    probabilities, ``forward`` its logit. Members whose frozen stems are equal (frozen-mode fits share the
    encoder's ImageNet blocks) run the stem once per batch."""

    def __init__(self, members: Sequence[LesionUNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 networks, got {len(members)}")
        self.members = nn.ModuleList(members)

    @property
    def shared_stem(self) -> bool:
        """Whether every member's stem has the first's weights (checked on each use: weights load after init)."""
        first, frozen = self.members[0].stem_state(), self.members[0].frozen_blocks
        return all(m.frozen_blocks == frozen and all(torch.equal(first[k], v) for k, v in m.stem_state().items())
                   for m in self.members[1:])

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_stem:
            cached = self.members[0].stem(x)
            return torch.stack([torch.sigmoid(m.head(cached)) for m in self.members]).mean(0)
        return torch.stack([torch.sigmoid(m(x)) for m in self.members]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.probability(x), eps=1e-6)


def _probability(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.probability(x) if isinstance(net, MeanProbability) else torch.sigmoid(net(x))


def _network_of(settings: SegmenterSettings) -> LesionUNet:
    return LesionUNet(encoder=settings.encoder, decoder_channels=settings.decoder_channels,
                      frozen_blocks=int(settings.frozen_blocks) if settings.train_mode == "frozen" else 0,
                      output_stride=int(settings.output_stride))


def build_network(settings: SegmenterSettings, seed: int = 0) -> LesionUNet:
    """The segmenter's network with the encoder's ImageNet weights (offline for efficientnet_lite0). Its random
    initial weights (the decoder's; with ``encoder_weights: none`` the encoder's too) are drawn from ``seed``, apart
    from the global random stream: the same network whatever ran before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = _network_of(settings)
    if settings.encoder_weights == "imagenet":
        from .encoders import create_encoder

        source = create_encoder(settings.encoder, weights="imagenet").model.state_dict()
        target = net.body.state_dict()
        # The features-only body shares the classifier model's names; its head (conv_head, bn2) is unused.
        missing = sorted(set(target) - set(source))
        if missing:
            raise ValueError(f"ImageNet weights of {settings.encoder!r} lack {missing[:5]} for the segmenter encoder")
        net.body.load_state_dict({k: source[k] for k in target}, strict=True)
    return net


# ----------------------------------------------------------------------------------------------- images
def _letterbox(shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    """(top, left, new_h, new_w) of an image of ``shape`` letterboxed into ``size`` (as :func:`resize_square`)."""
    h, w = shape
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def _normalise(img: torch.Tensor) -> torch.Tensor:
    """(..., 1, S, S) in [0, 1] -> (..., 3, S, S) with the ImageNet normalisation of the encoder."""
    from .data import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype).view(3, 1, 1)
    return (img.expand(*img.shape[:-3], 3, *img.shape[-2:]) - mean) / std


def _listed(name: str, value) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"segmenter {name} must be a list, got {value!r}")
    return list(value)


def _int_tuple(name: str, value) -> tuple:
    values = _listed(name, value)
    if any(isinstance(v, bool) or int(v) != v for v in values):
        raise ValueError(f"segmenter {name} must be a list of whole numbers, got {values!r}")
    return tuple(int(v) for v in values)


def _read_full(image: Path, mask: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """An image and its expert mask (bool, at the image's size; None without a mask)."""
    from .imaging import read_image, read_mask, resize_mask

    img = read_image(image)
    m = None
    if mask is not None:
        m = read_mask(mask)
        if m.shape != img.shape:
            m = resize_mask(m, img.shape)  # refuses another aspect, naming the sizes
        if not m.any():
            raise ValueError(f"lesion mask {mask} (of image {image}) is empty: an expert mask must outline the lesion")
    return img, m


def _read_pair(image: Path, mask: Path | None, size: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """An image and its mask letterboxed into ``size``, with the image's original shape."""
    from .imaging import resize_square

    img, m = _read_full(image, mask)
    return resize_square(img, size), None if m is None else resize_square(m.astype(np.float32), size) > 0.5, img.shape


def _crop_box(mask: np.ndarray, margin: float, seed: int | None = None) -> tuple[int, int, int, int]:
    """The refiner's square crop ``(y0, y1, x0, x1)`` around the lesion of a bool ``mask`` at the image's size.

    With a ``seed`` (training copies) the margin is drawn from half to one and a half times ``margin`` and the
    centre shifted by up to 15% of the side, as a coarse lesion's box would miss the true one."""
    from .imaging import roi_box

    if seed is None:
        return roi_box(mask, margin=float(margin), shape=mask.shape, square=True)
    rng = np.random.default_rng(seed)
    y0, y1, x0, x1 = roi_box(mask, margin=float(margin) * rng.uniform(0.5, 1.5), shape=mask.shape, square=True)
    dy, dx = (rng.uniform(-0.15, 0.15, size=2) * [y1 - y0, x1 - x0]).round().astype(int)
    dy, dx = int(np.clip(dy, -y0, mask.shape[0] - y1)), int(np.clip(dx, -x0, mask.shape[1] - x1))
    return y0 + dy, y1 + dy, x0 + dx, x1 + dx


def _crop(img: np.ndarray, mask: np.ndarray | None, box, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``img`` (and ``mask``) cut to ``box`` and letterboxed into ``size``."""
    from .imaging import resize_square

    y0, y1, x0, x1 = box
    x = resize_square(img[y0:y1, x0:x1], size)
    return x, None if mask is None else resize_square(mask[y0:y1, x0:x1].astype(np.float32), size) > 0.5


def _sample(decoded, image: Path, copy: int, seed: int, settings: "SegmenterSettings", crops: bool):
    """One training item ``(x (1, S, S), y (1, S, S))``: copy 0 as it is, the others a seeded augmented draw. With
    ``crops`` (the refiner) ``decoded`` is the full-size pair and the item a crop around the expert's lesion."""
    if crops:
        full, fm = decoded
        box = _crop_box(fm, float(settings.refine_margin), None if copy == 0 else _seed_of(image, copy, seed + 7919))
        img, m = _crop(full, fm, box, int(settings.refine_size))
    else:
        img, m = decoded[:2]
    if copy == 0:
        return torch.from_numpy(img)[None], torch.from_numpy(m)[None]
    return _augment(img, m, _seed_of(image, copy, seed), settings.augment)


def _unletterbox(prob: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """A letterboxed ``(size, size)`` probability map back at ``shape`` (bilinear)."""
    import torch.nn.functional as F

    top, left, nh, nw = _letterbox(shape, size)
    inner = torch.from_numpy(np.ascontiguousarray(prob[top:top + nh, left:left + nw]))[None, None]
    return F.interpolate(inner, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def _rebox(prob: np.ndarray, shape: tuple[int, int], side: int, size: int) -> np.ndarray:
    """A ``(side, side)`` letterboxed probability map of an image of ``shape`` brought into its ``(size, size)``
    letterbox (bilinear; zero outside the image)."""
    import torch.nn.functional as F

    top, left, nh, nw = _letterbox(shape, side)
    inner = torch.from_numpy(np.ascontiguousarray(prob[top:top + nh, left:left + nw]))[None, None]
    top, left, nh, nw = _letterbox(shape, size)
    out = np.zeros((size, size), dtype=np.float32)
    out[top:top + nh, left:left + nw] = F.interpolate(inner, size=(nh, nw), mode="bilinear",
                                                      align_corners=False)[0, 0].numpy()
    return out


def _seed_of(path: Path, copy: int, seed: int) -> int:
    from .data import _image_key

    text = f"{seed}|{_image_key(path)}|{copy}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFFFFFF


def _augment(img: np.ndarray, mask: np.ndarray, seed: int, kind: str = "standard") -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded joint draw: the same flip and affine on image and mask; brightness, contrast (and, ``strong``,
    gamma, blur, sharpening and noise) on the image only. Ultrasound is never flipped vertically (shadows lie below
    a lesion)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if kind == "strong":
        steps = [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.75, 1.3)),
                 v2.ColorJitter(brightness=0.3, contrast=0.3),
                 v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.3, 1.5))], p=0.25),
                 v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.25)]
    else:
        steps = [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.85, 1.15)),
                 v2.ColorJitter(brightness=0.15, contrast=0.15)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a, b = v2.Compose(steps)(tv_tensors.Image(torch.from_numpy(img)[None]),
                                 tv_tensors.Mask(torch.from_numpy(mask)[None]))
        a = a.as_subclass(torch.Tensor).clamp(0, 1)
        if kind == "strong":
            a = a ** float(torch.empty(1).uniform_(-0.4, 0.4).exp())  # gamma from 0.67 to 1.49
            if float(torch.rand(1)) < 0.25:
                a = a + float(torch.empty(1).uniform_(0.01, 0.05)) * torch.randn_like(a)
    return a.clamp(0, 1), b.as_subclass(torch.Tensor)


# ----------------------------------------------------------------------------------------------- post-processing
def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask, holes filled (all False if the mask is empty)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks of one shape (both 1.0 when both are empty)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks of different shapes: predicted {pred.shape}, expert {truth.shape}")
    inter, a, b = float((pred & truth).sum()), float(pred.sum()), float(truth.sum())
    if a + b == 0:
        return 1.0, 1.0
    return 2 * inter / (a + b), inter / (a + b - inter)


# ----------------------------------------------------------------------------------------------- segmenter
class UnsafeSegmenterFolder(ValueError):
    """A segmenter folder holding files that could run code when loaded."""


@dataclass
class Segmenter:
    """A fitted lesion segmenter: network, settings (image size, threshold) and what it was trained on; with
    ``settings.refine_size`` also the refiner, which re-segments a crop around the lesion the network found."""

    network: LesionUNet
    settings: SegmenterSettings = field(default_factory=SegmenterSettings)
    info: dict = field(default_factory=dict)
    refiner: LesionUNet | None = None

    def __post_init__(self):
        if bool(int(self.settings.refine_size)) != (self.refiner is not None):
            raise ValueError(f"segmenter refine_size {self.settings.refine_size} "
                             f"{'needs' if self.refiner is None else 'takes no'} refiner network")

    def _sigmoid(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Lesion probabilities of a batch, averaged with its horizontal mirror's when ``tta``."""
        p = _probability(net, x)
        if self.settings.tta:
            p = (p + _probability(net, torch.flip(x, dims=[-1])).flip(dims=[-1])) / 2
        return p

    @property
    def n_members(self) -> int:
        """How many fitted segmenters this one averages (:func:`ensemble_segmenters`); 1 for a single fit."""
        return len(self.network.members) if isinstance(self.network, MeanProbability) else 1

    def probabilities(self, images: Sequence[Path | str], *, bs: int = 16, progress: bool = False):
        """Lesion probability maps ``(S, S)`` of letterboxed images, with the original shapes: the mean over the
        settings' :attr:`~SegmenterSettings.scales` (each map brought into the ``image_size`` letterbox)."""
        from .imaging import read_image, resize_square

        size, scales = int(self.settings.image_size), self.settings.scales
        net = self.network.eval()
        probs, shapes = [], []
        paths = [Path(p) for p in images]
        starts = range(0, len(paths), bs)
        if progress:
            from .progress import progress_bar

            starts = progress_bar(starts, f"segmenting {len(paths)} images")
        with torch.no_grad():
            for s in starts:
                full = [read_image(p) for p in paths[s:s + bs]]
                batch_shapes = [img.shape for img in full]
                shapes.extend(batch_shapes)
                total = None
                for side in scales:
                    x = torch.stack([torch.from_numpy(resize_square(img, side))[None] for img in full])
                    p = self._sigmoid(net, _normalise(x))[:, 0].numpy()
                    if side != size:
                        p = np.stack([_rebox(q, shape, side, size) for q, shape in zip(p, batch_shapes)])
                    total = p if total is None else total + p
                probs.extend(total / len(scales))
        return probs, shapes

    def predict(self, images: Sequence[Path | str], *, progress: bool = False, refine: bool = True,
                whole_image: bool = False) -> list[PredictedMask]:
        """One :class:`PredictedMask` per image, at the image's size. With a refiner and ``whole_image``, each answer
        also carries the whole-image network's own (``PredictedMask.whole_image``: a comparison from one pass of
        each network; off by default, as it doubles the masks held); ``refine=False`` returns the whole-image
        network's outlines alone."""
        probs, shapes = self.probabilities(images, progress=progress)
        masks = [self._mask(p, shape) for p, shape in zip(probs, shapes)]
        if self.refiner is None or not refine:
            return masks
        return self._refine([Path(p) for p in images], masks, keep_whole_image=whole_image)

    def _refine(self, paths: list[Path], coarse: list[PredictedMask], bs: int = 16, *,
                keep_whole_image: bool = False) -> list[PredictedMask]:
        """The refiner's outline in a crop around each lesion found; the coarse one where the refiner finds none."""
        from .imaging import read_image

        size, net = int(self.settings.refine_size), self.refiner.eval()
        margins = self.settings.margins
        out = [replace(pm, whole_image=pm if keep_whole_image else None) for pm in coarse]  # none found: kept
        found = [i for i, pm in enumerate(coarse) if pm.found]
        with torch.no_grad():
            for s in range(0, len(found), bs):
                chunk, crops, boxes = found[s:s + bs], [], []
                for i in chunk:
                    img = read_image(paths[i])
                    for margin in margins:
                        box = _crop_box(coarse[i].mask, margin)
                        crops.append(torch.from_numpy(_crop(img, None, box, size)[0])[None])
                        boxes.append(box)
                probs = self._sigmoid(net, _normalise(torch.stack(crops)))[:, 0].numpy()
                for n, i in enumerate(chunk):
                    shape = coarse[i].mask.shape
                    full, seen = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
                    for (y0, y1, x0, x1), prob in zip(boxes[n * len(margins):(n + 1) * len(margins)],
                                                      probs[n * len(margins):(n + 1) * len(margins)]):
                        full[y0:y1, x0:x1] += _unletterbox(prob, (y1 - y0, x1 - x0), size)
                        seen[y0:y1, x0:x1] += 1
                    refined = self._outline(np.divide(full, seen, out=full, where=seen > 0))
                    out[i] = replace(refined if refined.found else coarse[i], refined=refined.found,
                                     whole_image=coarse[i] if keep_whole_image else None)
        return out

    def full_probability(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A letterboxed probability map of :meth:`probabilities` back at the original image's ``shape``."""
        return _unletterbox(prob, shape, int(self.settings.image_size))

    def _mask(self, prob: np.ndarray, shape: tuple[int, int]) -> PredictedMask:
        return self._outline(self.full_probability(prob, shape))

    def _outline(self, full: np.ndarray) -> PredictedMask:
        """The largest component above the threshold of a probability map at the image's size."""
        shape = full.shape
        mask = largest_component(full > float(self.settings.threshold))
        found = bool(mask.sum() >= max(1.0, float(self.settings.min_area) * mask.size))
        if not found:
            return PredictedMask(np.zeros(shape, dtype=bool), False, float(full.max()))
        return PredictedMask(mask, True, float(full[mask].mean()))

    def save(self, folder) -> Path:
        """Write ``segmenter.safetensors`` and ``segmenter.json`` into ``folder`` (no pickle)."""
        from safetensors.torch import save_model

        from . import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(self.network, str(folder / SEGMENTER_WEIGHTS))
        if self.refiner is not None:
            save_model(self.refiner, str(folder / REFINER_WEIGHTS))
        meta = {"format": SEGMENTER_FORMAT if self.n_members == 1 else ENSEMBLE_FORMAT,
                "mmlib_version": __version__, "settings": self.settings.to_dict(),
                "info": json.loads(json.dumps(self.info, default=str))}
        if self.n_members > 1:
            meta["members"] = self.n_members
        (folder / SEGMENTER_CONFIG).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder) -> "Segmenter":
        """Rebuild a segmenter written by :meth:`save` (never unpickles anything)."""
        from safetensors.torch import load_model

        from .learner import PICKLE_SUFFIXES

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"segmenter folder {folder} does not exist")
        risky = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        if risky:
            raise UnsafeSegmenterFolder(f"{folder} holds {risky}: files that may contain pickled code are refused; "
                                        f"a segmenter folder holds only {SEGMENTER_WEIGHTS} and {SEGMENTER_CONFIG}")
        missing = [n for n in (SEGMENTER_WEIGHTS, SEGMENTER_CONFIG) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a segmenter folder: {missing} missing")
        meta = json.loads((folder / SEGMENTER_CONFIG).read_text())
        if meta.get("format") not in (SEGMENTER_FORMAT, ENSEMBLE_FORMAT):
            raise ValueError(f"{folder / SEGMENTER_CONFIG}: unknown format {meta.get('format')!r}, "
                             f"expected {SEGMENTER_FORMAT!r} or {ENSEMBLE_FORMAT!r}")
        n = int(meta.get("members", 1)) if meta["format"] == ENSEMBLE_FORMAT else 1
        if meta["format"] == ENSEMBLE_FORMAT and n < 2:
            raise ValueError(f"{folder / SEGMENTER_CONFIG}: an ensemble needs 'members' >= 2, got {meta.get('members')!r}")
        settings = SegmenterSettings.from_dict(meta["settings"])
        nets = []
        for name in (SEGMENTER_WEIGHTS, REFINER_WEIGHTS) if int(settings.refine_size) else (SEGMENTER_WEIGHTS,):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} lacks {name}: {SEGMENTER_CONFIG} says the segmenter has a refiner "
                                        f"(refine_size {settings.refine_size})")
            own = settings if name == SEGMENTER_WEIGHTS else settings.refiner_settings()
            net = _network_of(own) if n == 1 else MeanProbability([_network_of(own) for _ in range(n)])
            load_model(net, str(folder / name), strict=True)
            nets.append(net.eval())
        return cls(nets[0], settings, meta.get("info", {}), nets[1] if len(nets) > 1 else None)


def ensemble_segmenters(segmenters: Sequence[Segmenter], info: dict | None = None) -> Segmenter:
    """One segmenter that averages the lesion probabilities of several fitted with the same settings (e.g. the
    cross-validation folds' segmenters, as nnU-Net deploys its five fold models), in the whole-image network and in
    the refiner; thresholding, the largest component and the score then read the mean map.

    Args:
        segmenters: at least two, with equal settings (post-processing aside: the first one's is kept).
        info: recorded in the ensemble's ``info`` beside each member's (``members``).
    """
    segmenters = list(segmenters)
    if len(segmenters) < 2:
        raise ValueError(f"ensemble_segmenters needs at least 2 segmenters, got {len(segmenters)}")
    if any(s.n_members > 1 for s in segmenters):
        raise ValueError("ensemble_segmenters: a member is itself an ensemble; pass its fitted segmenters instead")
    first = segmenters[0].settings.key_dict()
    for i, s in enumerate(segmenters[1:], start=1):
        if s.settings.key_dict() != first:
            diff = sorted(k for k in set(first) | set(s.settings.key_dict())
                          if first.get(k) != s.settings.key_dict().get(k))
            raise ValueError(f"ensemble_segmenters: segmenter {i} was fitted with other settings than segmenter 0 "
                             f"({diff}); an ensemble averages networks of one kind")
    refiner = None if segmenters[0].refiner is None else MeanProbability([s.refiner for s in segmenters])
    record = {**(info or {}), "members": [dict(s.info) for s in segmenters], "combine": "mean probability"}
    return Segmenter(MeanProbability([s.network for s in segmenters]).eval(), segmenters[0].settings, record,
                     None if refiner is None else refiner.eval())


def set_post_processing(folder, **values) -> dict:
    """Set settings of :data:`POST_PROCESSING` in a saved segmenter's JSON (its weights and masks unchanged), e.g.
    a run's ``uncertain_below`` on a segmenter reused from a cache. Returns the settings written."""
    folder = Path(folder)
    bad = sorted(set(values) - set(POST_PROCESSING))
    if bad:
        raise ValueError(f"set_post_processing: {bad} would change the masks; only {list(POST_PROCESSING)} may be set "
                         f"on a saved segmenter")
    path = folder / SEGMENTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a segmenter folder: {SEGMENTER_CONFIG} missing")
    meta = json.loads(path.read_text())
    settings = SegmenterSettings.from_dict({**meta["settings"], **values}).to_dict()  # validated
    meta["settings"] = settings
    path.write_text(json.dumps(meta, indent=2))
    return settings


# ----------------------------------------------------------------------------------------------- fitting
class StemCache:
    """Frozen stem outputs (float16) per image and augmented copy, computed once and shared by every fit that
    uses the same network settings (in the study, the cross-fitted segmenters). With ``crops`` the items are the
    refiner's crops around the expert's lesion (:meth:`crop_cache` holds them beside the whole images')."""

    def __init__(self, settings: SegmenterSettings, *, seed: int = 0, crops: bool = False, network=None):
        self.settings, self.seed, self.crops = settings, int(seed), bool(crops)
        self.network = build_network(settings, seed).eval() if network is None else network
        self.items: dict[tuple[str, str, int], tuple[list[torch.Tensor], torch.Tensor]] = {}
        self._crop_cache: StemCache | None = None

    def crop_cache(self) -> "StemCache":
        """The cache of the refiner's crops, sharing this cache's frozen network."""
        if self._crop_cache is None:
            self._crop_cache = StemCache(self.settings.refiner_settings(), seed=self.seed, crops=True,
                                         network=self.network)
        return self._crop_cache

    def build(self, images: Sequence[Path], masks: Sequence[Path], *, progress: bool = True, bs: int = 32):
        size = int(self.settings.image_size)
        jobs = [(Path(i), Path(m), c) for i, m in zip(images, masks) for c in range(1 + int(self.settings.n_augment))
                if (str(i), str(m), c) not in self.items]
        if not jobs:
            return self
        starts = range(0, len(jobs), bs)
        if progress:
            from .progress import progress_bar

            starts = progress_bar(starts, f"segmenter: encoding {len(jobs)} {'crops' if self.crops else 'images'}")
        decoded: dict[tuple[str, str], tuple] = {}
        with torch.no_grad():
            for s in starts:
                xs, ys = [], []
                for image, mask, copy in jobs[s:s + bs]:
                    key = (str(image), str(mask))
                    if key not in decoded:  # one image's decode, reused by its copies
                        decoded = {key: _read_full(image, mask) if self.crops else _read_pair(image, mask, size)}
                    x, y = _sample(decoded[key], image, copy, self.seed, self.settings, self.crops)
                    xs.append(x)
                    ys.append(y)
                feats = self.network.stem(_normalise(torch.stack(xs)))
                for j, (image, mask, copy) in enumerate(jobs[s:s + bs]):
                    self.items[(str(image), str(mask), copy)] = ([f[j].half().clone() for f in feats],
                                                                  ys[j].bool().clone())
        return self

    def save(self, path) -> Path:
        """Write the cache (its crop cache and its network's body too) to one safetensors file, for worker processes
        (:meth:`load`)."""
        from safetensors.torch import save_file

        tensors, meta = {}, {}
        for prefix, cache in (("w", self), ("c", self._crop_cache)):
            if cache is None:
                continue
            keys = list(cache.items)
            levels = len(cache.items[keys[0]][0]) if keys else 0
            meta[prefix] = json.dumps({"keys": keys, "levels": levels, "settings": cache.settings.to_dict()})
            for i, key in enumerate(keys):
                feats, mask = cache.items[key]
                tensors.update({f"{prefix}{i}.{level}": f.contiguous() for level, f in enumerate(feats)})
                tensors[f"{prefix}{i}.mask"] = mask.contiguous()
        meta["seed"] = str(self.seed)
        # the frozen network itself: the fits start from its body (for encoder_weights none, a random draw)
        tensors.update({f"body.{k}": v.contiguous() for k, v in self.network.body.state_dict().items()})
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path, settings: SegmenterSettings) -> "StemCache":
        """The cache :meth:`save` wrote, for ``settings`` (refused if it was built with others)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            # the network's body comes from the file: no ImageNet weights to read first
            out = cls(settings, seed=int(meta["seed"]), network=_network_of(settings).eval())
            out.network.body.load_state_dict({k[len("body."):]: f.get_tensor(k) for k in f.keys()
                                              if k.startswith("body.")})
            for prefix, cache in (("w", out), ("c", None)):
                if prefix not in meta:
                    continue
                cache = cache or out.crop_cache()
                head = json.loads(meta[prefix])
                if head["settings"] != json.loads(json.dumps(cache.settings.to_dict())):
                    raise ValueError(f"{path}: a stem cache built with other segmenter settings")
                for i, key in enumerate(head["keys"]):
                    feats = [f.get_tensor(f"{prefix}{i}.{level}") for level in range(head["levels"])]
                    cache.items[tuple(key)] = (feats, f.get_tensor(f"{prefix}{i}.mask"))
        return out


class _StemDataset(torch.utils.data.Dataset):
    def __init__(self, cache: StemCache, keys: list):
        self.cache, self.keys = cache, keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        feats, mask = self.cache.items[self.keys[i]]
        return (*feats, mask.float())


class _ImageDataset(torch.utils.data.Dataset):
    """Images decoded once; a fresh seeded augmentation per epoch (end-to-end training). With ``crops`` (the
    refiner) full-size pairs, cut around the expert's lesion per draw."""

    def __init__(self, images, masks, settings: SegmenterSettings, seed: int, crops: bool = False):
        size = int(settings.image_size)
        self.pairs = [_read_full(Path(i), Path(m)) if crops else _read_pair(Path(i), Path(m), size)[:2]
                      for i, m in zip(images, masks)]
        self.paths, self.seed, self.draws, self.settings, self.crops = [Path(i) for i in images], seed, 0, settings, crops
        self.augment = int(settings.n_augment) > 0

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        if self.augment:
            self.draws += 1
        x, y = _sample(self.pairs[i], self.paths[i], self.draws, self.seed, self.settings, self.crops)
        return _normalise(x), y.float()


def fit_segmenter(images: Sequence[Path], masks: Sequence[Path], *, settings: dict | SegmenterSettings | None = None,
                  seed: int = 0, progress: bool = True, stem_cache: StemCache | None = None,
                  device: str = "cpu") -> Segmenter:
    """Train a lesion segmenter on images and their expert masks (one mask per image).

    Args:
        images, masks: paths, paired in order; every mask must be non-empty and have its image's aspect.
        settings: :class:`SegmenterSettings` or a dict of its fields (defaults otherwise).
        seed: seeds the initialisation, the augmentation draws and the batch order.
        progress: fastai progress bars.
        stem_cache: a :class:`StemCache` built with the same settings, shared between fits (``frozen`` mode).
        device: where to train (``cuda`` for ``finetune`` on a GPU).

    Returns:
        the fitted :class:`Segmenter` (on the CPU, in eval mode).
    """
    settings = settings if isinstance(settings, SegmenterSettings) else SegmenterSettings.from_dict(settings)
    images, masks = [Path(p) for p in images], [Path(p) for p in masks]
    if len(images) != len(masks):
        raise ValueError(f"fit_segmenter: {len(images)} images but {len(masks)} masks; pass one mask per image")
    if len(images) < 2:
        raise ValueError(f"fit_segmenter needs at least 2 images with expert masks, got {len(images)}")
    t0 = time.perf_counter()
    if settings.train_mode == "frozen" and stem_cache is not None and (
            stem_cache.settings.to_dict() != settings.to_dict() or stem_cache.crops):
        raise ValueError("fit_segmenter: stem_cache was built with other settings")
    net, dice, retried = _fit_network(images, masks, settings, seed, progress, stem_cache, device, crops=False)
    info = {"trained_on_images": len(images), "seed": int(seed), "training_dice": round(float(dice), 3)}
    if retried:
        info["refit"] = retried
    refiner = None
    if int(settings.refine_size):
        refiner, rdice, rretried = _fit_network(images, masks, settings.refiner_settings(), seed, progress,
                                                stem_cache.crop_cache() if stem_cache is not None else None, device,
                                                crops=True)
        info["refiner_training_dice"] = round(float(rdice), 3)
        if rretried:
            info["refiner_refit"] = rretried
    info["fit_seconds"] = round(time.perf_counter() - t0, 1)
    return Segmenter(net, settings, info, refiner)


def _fit_network(images: list[Path], masks: list[Path], settings: SegmenterSettings, seed: int, progress: bool,
                 stem_cache: StemCache | None, device: str, *, crops: bool) -> tuple[LesionUNet, float, dict | None]:
    """One network of a segmenter (the whole-image one, or with ``crops`` the refiner), with the collapse guard.
    Returns ``(network on the CPU in eval mode, its training Dice, the refit record or None)``."""
    from .learner import set_seed

    set_seed(seed)
    frozen = settings.train_mode == "frozen"
    if frozen:
        if stem_cache is None:
            stem_cache = StemCache(settings, seed=seed, crops=crops)
        stem_cache.build(images, masks, progress=progress)
        net = build_network(settings, seed)
        net.body.load_state_dict(stem_cache.network.body.state_dict())  # same frozen weights as the cache
        for prm in net.frozen_parameters():
            prm.requires_grad_(False)
        keys = [(str(i), str(m), c) for i, m in zip(images, masks) for c in range(1 + int(settings.n_augment))]
        train_ds, model = _StemDataset(stem_cache, keys), _CachedHead(net)
    else:
        net = build_network(settings, seed)
        train_ds, model = _ImageDataset(images, masks, settings, seed, crops=crops), net
    start = {k: v.clone() for k, v in net.state_dict().items()}
    dice = _fit_once(model, train_ds, settings, seed=seed, lr=float(settings.lr), progress=progress, device=device)
    retried = None
    if dice < COLLAPSED_TRAINING_DICE:
        # A one-cycle fit at this size occasionally dies (every logit near zero, nothing found anywhere): refit once
        # from the same start at a third of the learning rate and another draw; keep the better fit, and say so.
        first = {k: v.clone() for k, v in model.state_dict().items()}
        net.load_state_dict(start)
        if frozen:
            for prm in net.frozen_parameters():
                prm.requires_grad_(False)
        again = _fit_once(model, train_ds, settings, seed=seed + 1, lr=float(settings.lr) / 3, progress=progress,
                          device=device)
        retried = {"first_training_dice": round(dice, 3), "refit_training_dice": round(again, 3)}
        if again < dice:
            model.load_state_dict(first)
        dice = max(dice, again)
        warnings.warn(f"fit_segmenter: the {'refiner' if crops else 'segmenter'} fit on {len(images)} images "
                      f"reached training Dice "
                      f"{retried['first_training_dice']}; refitted at lr {float(settings.lr) / 3:g}: "
                      f"{retried['refit_training_dice']}" + ("" if dice >= COLLAPSED_TRAINING_DICE else
                                                             " (still collapsed: it will find few lesions)"))
    return net.cpu().eval(), dice, retried


#: Below this Dice on its own training images a fit has collapsed (a working fit is far above it).
COLLAPSED_TRAINING_DICE = 0.2


def _fit_once(model: nn.Module, train_ds, settings: SegmenterSettings, *, seed: int, lr: float, progress: bool,
              device: str) -> float:
    """One one-cycle fit of ``model`` on ``train_ds``; returns its mean Dice on (up to 64 of) its training items."""
    import contextlib
    import io
    import random

    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401 (adds Learner.fit_one_cycle)
    from fastai.learner import Learner
    from monai.losses import DiceCELoss

    from .learner import set_seed

    set_seed(seed)
    random.seed(seed)
    bs = max(1, min(int(settings.bs), len(train_ds)))
    train = DataLoader(train_ds, bs=bs, shuffle=True, drop_last=len(train_ds) % bs == 1, num_workers=0)
    dls = DataLoaders(train, DataLoader(_Empty(), bs=bs), device=torch.device(device))
    # channels-last convolutions train about a fifth faster on the CPU (oneDNN); the weights are stored contiguous
    model.to(memory_format=torch.channels_last)
    if settings.precision == "bfloat16":
        model = _Autocast(model, device)
    learn = Learner(dls, model, loss_func=DiceCELoss(sigmoid=True), wd=float(settings.wd), train_bn=True)
    if not progress:
        learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    try:
        with contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext():
            learn.fit_one_cycle(int(settings.epochs), lr)
    finally:
        model.to(memory_format=torch.contiguous_format)
    return _training_dice(model, train_ds, device)


def _training_dice(model: nn.Module, ds, device: str, n: int = 64) -> float:
    if isinstance(ds, _StemDataset):
        idx = [i for i, key in enumerate(ds.keys) if key[2] == 0][:n]
    else:
        idx = list(range(min(len(ds), n)))
    model.eval()
    scores = []
    with torch.no_grad():
        for i in idx:
            *x, y = ds[i]
            logits = model(*[t[None].to(device) for t in x])
            pred = (logits[0, 0] > 0).cpu().numpy()
            scores.append(dice_iou(pred, y.reshape(pred.shape).numpy() > 0.5)[0])
    return float(np.mean(scores)) if scores else 0.0


class _Autocast(nn.Module):
    """Runs the wrapped model's forward pass under bfloat16 autocast and returns float32 logits (for the loss)."""

    def __init__(self, model: nn.Module, device: str):
        super().__init__()
        self.model, self.device_type = model, torch.device(device).type

    def forward(self, *x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(*x).float()


class _Empty(torch.utils.data.Dataset):
    def __len__(self):
        return 0

    def __getitem__(self, i):  # pragma: no cover - never indexed
        raise IndexError(i)
