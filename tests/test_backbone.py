import pytest
import torch
import torchvision

from featx.backbones import forward_taps, get_family, parse_tap, tap_dim, tap_features
from featx.backbones.vgg16 import CONV_NAMES, VGG16, from_state_dict
from featx.errors import FeatxError

from conftest import TINY_WIDTHS, tiny_state_dict


def test_matches_torchvision_vgg16_layout():
    """Our named VGG16 equals torchvision's vgg16().features with the same weights."""
    torch.manual_seed(0)
    ref = torchvision.models.vgg16().eval()
    convs = [m for m in ref.features if isinstance(m, torch.nn.Conv2d)]
    sd = {}
    for name, conv in zip(CONV_NAMES, convs):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = conv.weight.detach(), conv.bias.detach()
    sd["fc6.weight"], sd["fc6.bias"] = ref.classifier[0].weight.detach(), ref.classifier[0].bias.detach()
    sd["fc7.weight"], sd["fc7.bias"] = ref.classifier[3].weight.detach(), ref.classifier[3].bias.detach()
    model = from_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        pool5 = ref.features(x)
        assert torch.allclose(tap_features(model, x, "pool5"), pool5, atol=1e-5)
        fc = ref.classifier[:5](torch.flatten(ref.avgpool(pool5), 1))
        assert torch.allclose(tap_features(model, x, "fc7"), fc, atol=1e-5)


def test_tap_shapes_and_values():
    model = from_state_dict(tiny_state_dict(fc=True))
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        maps = forward_taps(model, x, {"pool4", "pool5"})
        p4, p5 = maps["pool4"], maps["pool5"]
        assert p4.shape == (3, 16, 4, 4) and p5.shape == (3, 16, 2, 2)
        assert torch.equal(tap_features(model, x, "pool5-gap"), p5.mean((2, 3)))
        assert torch.equal(tap_features(model, x, "pool5-max"), p5.amax((2, 3)))
        gm = tap_features(model, x, "pool5-gapmax")
        assert gm.shape == (3, 32) and torch.equal(gm[:, 16:], p5.amax((2, 3)))
        assert torch.equal(tap_features(model, x, "pool5-flat"), p5.reshape(3, -1))
        multi = tap_features(model, x, "pool4-gap+pool5-gap")
        assert torch.equal(multi, torch.cat([p4.mean((2, 3)), p5.mean((2, 3))], 1))
        assert tap_features(model, x, "fc6").shape == (3, 32)
    assert tap_dim(model, "pool5-flat", 224) == (16 * 7 * 7,)
    assert tap_dim(model, "pool4", 224) == (16, 14, 14)


def test_resume_from_pool4_equals_full_forward():
    """The fine-tune path runs block 5 on cached pool4 maps; that must equal the full pass."""
    model = from_state_dict(tiny_state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        full = forward_taps(model, x, {"pool3", "pool4", "pool5"})
        assert torch.equal(forward_taps(model, full["pool4"], {"pool5"}, start="pool4")["pool5"], full["pool5"])
        assert torch.equal(tap_features(model, full["pool3"], "pool5", start="pool3"), full["pool5"])


@pytest.mark.parametrize("bad", ["", "pool6-gap", "pool5-mean", "pool4+pool5-gap", "fc6-gap", "embedding"])
def test_bad_taps_are_refused(bad):
    with pytest.raises(FeatxError):
        parse_tap(bad, "vgg16")


def test_taps_come_from_the_registry():
    fam = get_family("vgg16")
    assert [t.name for t in fam.taps] == ["pool1", "pool2", "pool3", "pool4", "pool5", "fc6", "fc7"]
    assert fam.tap("pool4").channels == 512 and fam.tap("pool4").reduction == 16
    names = fam.tap_names(has_fc=False)
    assert "pool4-gapmax" in names and "pool4-flat" in names and "fc6" not in names
    for t in names:  # everything listed parses, and nothing else is listed
        assert parse_tap(t, "vgg16", has_fc=False) == [t]
    with pytest.raises(FeatxError, match="no fc weights"):
        parse_tap("fc7", "vgg16", has_fc=False)


def test_fc_tap_needs_fc_weights():
    model = from_state_dict(tiny_state_dict(fc=False))
    with pytest.raises(FeatxError, match="no stage 'fc6'"):
        tap_features(model, torch.zeros(1, 3, 32, 32), "fc6")
    assert parse_tap("pool4-gap + pool5-gapmax") == ["pool4-gap", "pool5-gapmax"]


def test_wrong_shapes_are_refused():
    sd = tiny_state_dict()
    sd["conv3_1.weight"] = sd["conv3_1.weight"][:, :4]
    with pytest.raises(FeatxError, match="conv3_1.weight"):
        from_state_dict(sd)
