"""Image encoders: offline ImageNet weights for efficientnet_lite0, weight files, feature-map shapes."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mmlib.encoders import (
    WeightMappingError,
    check_encoder_levels,
    create_encoder,
    efficientnet_lite0_weights_path,
    encoder_spec,
    load_efficientnet_lite0_imagenet,
    map_state_dict_in_order,
)

# ImageNet classes of a temple / palace roof (sklearn's china.jpg) and of the daisy (flower.jpg).
BUILDING_CLASSES = {442: "bell cote", 483: "castle", 497: "church", 538: "dome", 663: "monastery", 698: "palace"}
DAISY = 985


@pytest.fixture(scope="module")
def packaged() -> dict:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet_lite0").eval()


def test_every_packaged_tensor_is_loaded_in_order(packaged, lite0):
    source = [(k, v) for k, v in packaged.items() if not k.startswith("_fc.")]
    target = list(lite0.model.state_dict().items())
    assert len(source) == len(target) == 294
    for (skey, sval), (tkey, tval) in zip(source, target):
        assert torch.equal(sval, tval), (skey, tkey)
    # Nothing is left at its initial value: a fresh model differs in every floating tensor.
    torch.manual_seed(0)
    fresh = timm.create_model("efficientnet_lite0", num_classes=0, global_pool="").state_dict()
    same = [k for k, v in fresh.items() if v.is_floating_point() and torch.equal(v, lite0.model.state_dict()[k])]
    assert not same


def test_batchnorm_statistics_are_trained(lite0):
    bns = [m for m in lite0.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 49
    for bn in bns:
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    h, w, _ = image.shape
    s = min(h, w)
    crop = Image.fromarray(image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    x = torch.from_numpy(np.array(crop.resize((224, 224), Image.BICUBIC))).permute(2, 0, 1).float() / 255
    enc_mean, enc_std = encoder_spec("efficientnet_lite0")["mean"], encoder_spec("efficientnet_lite0")["std"]
    return ((x - torch.tensor(enc_mean)[:, None, None]) / torch.tensor(enc_std)[:, None, None])[None]


def test_mapped_classifier_recognises_photographs():
    """The full network with the mapped classifier names sklearn's two sample photographs sensibly."""
    from sklearn.datasets import load_sample_images

    model = load_efficientnet_lite0_imagenet(timm.create_model("efficientnet_lite0", num_classes=1000)).eval()
    china, flower = load_sample_images().images
    with torch.no_grad():
        top_china = model(_imagenet_input(china)).topk(5).indices[0].tolist()
        top_flower = model(_imagenet_input(flower)).topk(5).indices[0].tolist()
    assert top_china[0] in BUILDING_CLASSES and len(set(top_china) & set(BUILDING_CLASSES)) >= 3
    assert DAISY in top_flower


@pytest.mark.parametrize("px,cells", [(224, 7), (128, 4)])
def test_feature_map_shapes(lite0, px, cells):
    with torch.no_grad():
        maps = lite0(torch.randn(2, 3, px, px))
    assert maps.shape == (2, 1280, cells, cells)
    assert (lite0.num_features, lite0.reduction, lite0.name) == (1280, 32, "efficientnet_lite0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "test_efficientnet", "resnet10t"])
def test_encoder_spec_matches_the_built_encoder(name):
    spec = encoder_spec(name)
    enc = create_encoder(name, weights="none")
    assert spec == {"name": name, "num_features": enc.num_features, "mean": enc.mean, "std": enc.std,
                    "reduction": enc.reduction}
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 64, 64)).shape[1] == spec["num_features"]


def test_mismatched_state_dicts_raise_clear_errors(packaged):
    model = timm.create_model("efficientnet_lite0", num_classes=0, global_pool="")
    short = dict(list(packaged.items())[:-5])
    with pytest.raises(WeightMappingError, match="holds 291 tensors but the model expects 294"):
        load_efficientnet_lite0_imagenet(model, source=short, source_name="short.pth")
    swapped = dict(packaged)
    swapped["_blocks.0._depthwise_conv.weight"] = torch.zeros(16, 1, 3, 3)
    with pytest.raises(WeightMappingError, match=r"_blocks.0._depthwise_conv.weight.*blocks.0.0.conv_dw.weight"):
        load_efficientnet_lite0_imagenet(model, source=swapped)
    with pytest.raises(WeightMappingError, match="does not fit"):
        map_state_dict_in_order({"a": torch.zeros(3), "b": torch.zeros((), dtype=torch.int64)},
                                {"x": torch.zeros(3), "y": torch.zeros(())})


def test_weight_files_load_locally(tmp_path, packaged):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = create_encoder("test_efficientnet", weights="none").eval()
    state = source.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "enc.safetensors"))
    torch.save(source.state_dict(), tmp_path / "enc.pth")  # ImageEncoder keys ("model." prefix)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = source(x)
        for path in (tmp_path / "enc.safetensors", tmp_path / "enc.pth"):
            assert torch.equal(create_encoder("test_efficientnet", weights=str(path)).eval()(x), ref)
    # The packaged lukemelas-format file, given as a path, is mapped as for weights="imagenet".
    by_path = create_encoder("efficientnet_lite0", weights=str(efficientnet_lite0_weights_path()))
    assert torch.equal(by_path.model.conv_stem.weight, packaged["_conv_stem.weight"])
    bad = dict(state)
    bad.pop(next(iter(bad)))
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightMappingError, match="bad.pth"):
        create_encoder("test_efficientnet", weights=str(tmp_path / "bad.pth"))


def test_single_channel_stem_sums_the_rgb_filters(packaged):
    gray = create_encoder("efficientnet_lite0", in_chans=1)
    assert torch.allclose(gray.model.conv_stem.weight, packaged["_conv_stem.weight"].sum(1, keepdim=True), atol=1e-6)


def test_bad_encoder_arguments(tmp_path):
    with pytest.raises(ValueError, match="weights"):
        create_encoder("test_efficientnet", weights="imagenet22k")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_encoder("test_efficientnet", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not a timm model"):
        create_encoder("efficientnet_lite99", weights="none")
    with pytest.raises(ValueError, match="in_chans"):
        create_encoder("test_efficientnet", weights="none", in_chans=0)
    vit = create_encoder("test_vit", weights="none")
    with pytest.raises(ValueError, match="convolutional"):
        vit(torch.zeros(1, 3, 32, 32))


def test_mid_level_features_concatenate_the_chosen_blocks(lite0):
    """encoder_levels: block outputs pooled to the deepest chosen block's grid, concatenated along channels."""
    enc = create_encoder("efficientnet_lite0", levels=[5, 3, 4]).eval()
    assert enc.levels == (3, 4, 5) and enc.num_features == 80 + 112 + 192 and enc.reduction == 32
    x = torch.randn(2, 3, 224, 224)
    seen = {}
    hooks = [lite0.model.blocks[i].register_forward_hook(lambda m, i_, o, i=i: seen.__setitem__(i, o)) for i in (3, 4, 5)]
    try:
        with torch.no_grad():
            lite0(x)
            out = enc(x)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 384, 7, 7)
    expected = torch.cat([torch.nn.functional.avg_pool2d(seen[3], 2), torch.nn.functional.avg_pool2d(seen[4], 2), seen[5]], 1)
    torch.testing.assert_close(out, expected)
    # the same weights as the last-map encoder: a state dict moves between them
    enc.load_state_dict(lite0.state_dict())
    assert create_encoder("efficientnet_lite0", levels=2).num_features == 40


@pytest.mark.parametrize("levels,match", [([9], "0..6"), ([3, 3], "distinct"), (["x"], "level indices"), (["3"], "level indices"), ([], "level"), (2.5, "level indices")])
def test_bad_encoder_levels(levels, match):
    with pytest.raises(ValueError, match=match):
        create_encoder("efficientnet_lite0", weights="none", levels=levels)


@pytest.mark.parametrize("name,levels,channels,reduction,grid", [
    # EfficientNet / MobileNet family: every block is a level (not only timm's feature_info stages)
    ("efficientnet_lite0", (3, 4, 5), 80 + 112 + 192, 32, 2),
    ("efficientnet_lite0", (0,), 16, 2, 32),
    ("mobilenetv3_small_050", (2, 4), 24 + 48, 32, 2),
    # other timm CNNs: their feature_info levels, as forward_intermediates numbers them
    ("resnet18", (2, 3), 128 + 256, 16, 4),
    ("resnet18", (4,), 512, 32, 2),
    ("convnext_atto", (1, 3), 80 + 320, 32, 2),
])
def test_mid_level_features_of_any_timm_cnn(name, levels, channels, reduction, grid):
    """Levels of several timm families, built without weights (no download): channels, reduction and grid agree
    with what the encoder returns, and each level's maps are those timm's forward_intermediates gives."""
    torch.manual_seed(0)
    enc = create_encoder(name, weights="none", levels=list(levels)).eval()
    assert enc.levels == levels and enc.num_features == channels and enc.reduction == reduction
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        extra = {"extra_blocks": True} if hasattr(enc.model, "blocks") else {}
        offset = 1 if extra else 0
        maps = enc.model.forward_intermediates(x, indices=[i + offset for i in levels], intermediates_only=True, **extra)
    assert out.shape == (2, channels, grid, grid) == (2, channels, 64 // reduction, 64 // reduction)
    expected = torch.cat([torch.nn.functional.adaptive_avg_pool2d(m, grid) for m in maps], 1)
    # the encoder reads channels-last input (faster oneDNN kernels): the same maps up to float rounding
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert out.is_contiguous()
    assert encoder_spec(name)["num_features"] == create_encoder(name, weights="none").num_features


def test_encoder_levels_of_other_families_are_checked():
    with pytest.raises(ValueError, match=r"resnet10t.*0\.\.4"):
        create_encoder("resnet10t", weights="none", levels=[5])
    assert check_encoder_levels("resnet10t", [1, 4]) == (1, 4)
