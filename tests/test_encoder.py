"""The encoder boundary: every method's checkpoint loads through eossl.checkpoint into one
Encoder interface, its random twin differs in weights only, band matching by name, and the
import rules that keep the boundary the only way in."""

import ast
from pathlib import Path

import pytest
import torch

from eossl.checkpoint import load_encoder
from eossl.errors import BandError
from eossl.methods import available_methods
from eossl.models.encoder import BandInput, Encoder
from eossl.normalization import BandStats

SRC = Path(__file__).resolve().parents[1] / "src" / "eossl"


def _structure(module: torch.nn.Module) -> list:
    """Module tree with every stride, kernel and padding: what fixes the function but weights."""
    return [(name, type(m).__name__, getattr(m, "stride", None), getattr(m, "kernel_size", None),
             getattr(m, "padding", None)) for name, m in module.named_modules()]


def _raw(encoder: Encoder, n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, len(encoder.bands), size, size, generator=g) * 3000 + 50


@pytest.mark.parametrize("method", available_methods())
def test_every_method_gives_one_interface_and_a_twin_that_differs_in_weights_only(
        method, tiny_checkpoints):
    enc = load_encoder(tiny_checkpoints[method])
    x = _raw(enc, size=16)
    with torch.no_grad():
        pooled = enc(x)
        stages = enc.stage_features(x)
        pyramid = enc.pyramid(x)
        pixels = enc.pixel_features(x)
        logits = enc.unet(3).eval()(x)
    assert pooled.shape == (2, enc.out_dim)
    assert stages[-1].shape[1] == enc.out_dim and all(f.shape[0] == 2 for f in stages)
    sides = [f.shape[-1] for f in pyramid]
    assert sides == sorted(set(sides), reverse=True)  # distinct resolutions, finest first
    assert pixels.shape[0] == 2 and pixels.shape[-2:] == (16, 16)
    # the pixel probe reads a few pixels per tile; at those points the values must be the
    # full map's (corners and edges included, where the upsampling clamps)
    pts = torch.tensor([[[0, 0], [15, 15], [7, 3], [0, 15]], [[15, 0], [8, 8], [1, 14], [3, 3]]])
    with torch.no_grad():
        at = enc.pixel_features(x, pts)
    want = torch.stack([pixels[i][:, pts[i, :, 0], pts[i, :, 1]] for i in range(2)])
    torch.testing.assert_close(at, want, rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 3, 16, 16)
    assert enc.name == method and enc.describe()

    rng = torch.get_rng_state()
    twin = enc.random_twin(seed=1)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's random state is untouched
    # same kind, architecture, stem, bands and normalisation
    assert type(twin) is type(enc) and twin.architecture() == enc.architecture()
    assert twin.signature() == enc.signature()
    assert _structure(twin) == _structure(enc)
    assert twin.backbone.stem_stride == enc.backbone.stem_stride
    assert twin.bands == enc.bands and twin.wanted_bands == enc.wanted_bands
    assert twin.stats.to_dict() == enc.stats.to_dict()
    for a, b in zip(twin.normalizer.buffers(), enc.normalizer.buffers()):
        assert torch.equal(a, b)
    own, other = enc.state_dict(), twin.state_dict()
    assert {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in other.items()}
    # other weights: every convolution and linear layer is drawn anew
    weights = [k for k, v in own.items() if k.startswith("backbone.") and v.ndim >= 2]
    assert weights and all(not torch.equal(own[k], other[k]) for k in weights)
    with torch.no_grad():
        assert not torch.allclose(pooled, twin.eval()(x))
    # a twin is a reproducible draw, and names what it stands in for
    again, third = enc.random_twin(seed=1), enc.random_twin(seed=2)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in other.items())
    assert not torch.equal(other[weights[0]], third.state_dict()[weights[0]])
    assert twin.is_random_twin and not enc.is_random_twin
    assert twin.metadata["random_twin"] == {"of": method, "seed": 1}
    assert "collapse" not in twin.metadata and "collapse" in enc.metadata


def test_for_bands_by_name_stand_in_or_training_mean(brandenburg):
    stats = brandenburg.stats()
    enc = Encoder.random(stats).eval()
    assert enc.for_bands(brandenburg.bands) is enc
    l2a = [b for b in brandenburg.bands if b != "B10"]
    fed = enc.for_bands(l2a)
    assert isinstance(fed, BandInput) and fed.filled == ["B10"] and fed.bands == l2a
    assert "filled with its training mean: B10" in fed.describe()
    x = torch.rand(2, 12, 16, 16) * 3000
    full = fed.adapt(x)
    i10 = brandenburg.bands.index("B10")
    assert torch.allclose(enc.normalizer(full)[:, i10], torch.zeros(2, 16, 16), atol=1e-4)
    assert torch.equal(full[:, brandenburg.bands.index("B04")], x[:, l2a.index("B04")])
    with torch.no_grad():  # the same encoder underneath: identical on the bands it has
        assert torch.allclose(fed(x), enc(full), atol=1e-5)
    twin = fed.random_twin(3)
    assert isinstance(twin, BandInput) and twin.filled == ["B10"] and twin.is_random_twin
    assert fed.for_bands(brandenburg.bands) is enc
    # another sensor: Landsat bands stand in by role and wavelength
    landsat = Encoder.random(BandStats(["B04", "B08", "B11"], [7.0] * 3, [0.5] * 3, [1.0] * 3,
                                       [2.0] * 3))
    on_tm = landsat.for_bands(["b1", "b2", "b3", "b4", "b5", "b7"])
    assert on_tm.stand_ins == {"B04": "b3", "B08": "b4", "B11": "b5"} and not on_tm.filled
    with pytest.raises(BandError, match="none of the bands"):
        enc.for_bands(["VV", "VH"])


def test_bandwise_encoder_skips_absent_pool_bands(tiny_checkpoints, brandenburg):
    enc = load_encoder(tiny_checkpoints["rsbyol"])
    assert enc.architecture()["type"] == "bandwise" and "VV" in enc.wanted_bands
    on_scene = enc.for_bands(brandenburg.bands)  # no radar in the scene
    assert "VV" not in on_scene.used_bands and type(on_scene) is type(enc)
    assert on_scene.random_twin(0).used_bands == on_scene.used_bands
    x = _raw(on_scene)
    with torch.no_grad():
        assert on_scene(x).shape == (2, enc.out_dim)


# ------------------------------------------------------------------ the boundary holds
def _imports(path: Path) -> set[str]:
    """Absolute module names a source file imports (relative imports resolved)."""
    pkg = ["eossl", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[:len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("folder,forbidden", [("evaluate", "eossl.methods"),
                                              ("models", "eossl.data")])
def test_layers_do_not_reach_back(folder, forbidden):
    bad = [f"{p.relative_to(SRC)}: {m}" for p in sorted((SRC / folder).rglob("*.py"))
           for m in _imports(p) if m == forbidden or m.startswith(forbidden + ".")]
    assert not bad, bad


def test_only_the_boundary_reads_checkpoints():
    readers = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                     if any(isinstance(n, ast.Call) and ast.unparse(n.func) == "torch.load"
                            for n in ast.walk(ast.parse(p.read_text()))))
    assert readers == ["checkpoint.py"]
