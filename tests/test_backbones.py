import pytest
import timm
import torch

from eossl.errors import ConfigError
from eossl.models.backbones import Backbone, build_backbone, set_stem_stride


@pytest.mark.parametrize("chans", [1, 3, 13, 200])
def test_shapes_any_bands_sizes_and_stem_strides(chans):
    for stem in (1, 2, 4):
        bb = build_backbone("resnet18", in_chans=chans, stem_stride=stem).eval()
        assert isinstance(bb, Backbone) and bb.out_dim == 512 and bb.in_chans == chans
        for size in (16, 32, 64):
            x = torch.randn(1, chans, size, size)  # shapes only: one image is enough
            with torch.no_grad():
                assert bb(x).shape == (1, 512)
                fmap = bb.forward_features(x)
            # ResNet stages divide by 8 after the stem
            side = max(1, size // (stem * 8))
            assert fmap.shape == (1, 512, side, side), (stem, size)


def test_state_dict_loads_into_plain_timm_model():
    bb = build_backbone("resnet18", in_chans=5, stem_stride=2).eval()
    plain = timm.create_model("resnet18", pretrained=False, in_chans=5, num_classes=0)
    plain.load_state_dict(bb.model.state_dict())  # strict: same keys and shapes
    set_stem_stride(plain, 2)
    x = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), bb(x), atol=1e-6)
    with_head = timm.create_model("resnet18", pretrained=False, in_chans=5)
    missing, unexpected = with_head.load_state_dict(bb.model.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_unknown_name_bad_channels_and_non_resnet_stem():
    with pytest.raises(ConfigError, match="resnet18"):
        build_backbone("resnet18x", in_chans=3)
    with pytest.raises(ConfigError, match="in_chans"):
        build_backbone("resnet18", in_chans=0)
    with pytest.raises(ConfigError, match="stem_stride"):
        build_backbone("resnet18", in_chans=3, stem_stride=3)
    with pytest.raises(ConfigError, match="stem_stride=4"):
        build_backbone("convnext_atto", in_chans=4, stem_stride=2)
    bb = build_backbone("convnext_atto", in_chans=4, stem_stride=4)
    assert bb(torch.randn(2, 4, 32, 32)).shape == (2, bb.out_dim)
