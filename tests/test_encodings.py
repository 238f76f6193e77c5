"""Every registered encoding: shapes, out_dim, spec round trip, frequency statistics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nfit.encodings import ENCODINGS, RandomFourierFeatures, build_encoding
from nfit.errors import UsageError

ALL = sorted(ENCODINGS)
RANDOM = sorted(n for n, c in ENCODINGS.items() if issubclass(c, RandomFourierFeatures))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("in_dim", [2, 3])
def test_shape_and_out_dim(name: str, in_dim: int) -> None:
    enc = build_encoding({"type": name, "sigma": 4.0, "features": 16}, in_dim)
    x = torch.rand(37, in_dim)
    y = enc(x)
    assert y.shape == (37, enc.out_dim)
    assert torch.isfinite(y).all()
    # The spec rebuilds the architecture; with the stored state the outputs are identical
    # (a checkpoint's route), and fixed encodings need no state (their buffers are seeded).
    again = build_encoding(enc.spec(), in_dim)
    if not ENCODINGS[name].trainable:
        assert torch.equal(again(x), y)
    again.load_state_dict(enc.state_dict())
    assert torch.equal(again(x), y)


def test_fourier_families_are_cos_sin_of_2pi_Bv() -> None:
    enc = build_encoding({"type": "gauss", "sigma": 3.0, "features": 8, "seed": 1}, 2)
    x = torch.rand(5, 2, dtype=torch.float32)
    proj = 2 * math.pi * x.double() @ enc.B.double().T
    expected = torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)
    torch.testing.assert_close(enc(x).double(), expected, atol=1e-5, rtol=0)
    assert enc.out_dim == 16
    # written in bf16 (a render in the fit's precision): the fp32 features rounded, as the
    # fit's bf16 cache holds them, not features computed from a bf16 phase
    assert enc(x, torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(enc(x, torch.bfloat16), enc(x).to(torch.bfloat16))


def test_basic_and_none() -> None:
    x = torch.tensor([[0.25, 0.5]])
    basic = build_encoding({"type": "basic"}, 2)
    torch.testing.assert_close(basic(x), torch.tensor([[0.0, -1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    assert torch.equal(build_encoding({"type": "none"}, 2)(x), x)


def test_geoposenc_frequencies_are_geometric_on_axis() -> None:
    enc = build_encoding({"type": "geoposenc", "sigma": 10.0, "features": 8}, 2)
    m = 4  # 8 frequencies over 2 axes
    B = enc.B.double()
    assert B.shape == (8, 2)
    # every row is on one axis
    assert ((B != 0).sum(dim=1) == 1).all()
    scales = B.abs().sum(dim=1).reshape(m, 2)[:, 0]
    torch.testing.assert_close(scales, 10.0 ** (torch.arange(m, dtype=torch.float64) / m))


@pytest.mark.parametrize("in_dim, scale", [(2, 6.0), (2, 3.0), (3, 4.0)])
def test_posenc_is_the_papers_closed_form(in_dim: int, scale: float) -> None:
    # the notebooks' 256 frequencies: m = 256 // d per axis, b_j = 2^(scale j / (m-1)) - 1
    enc = build_encoding({"type": "posenc", "sigma": scale, "features": 256}, in_dim)
    m = 256 // in_dim
    assert enc.out_dim == 2 * m * in_dim
    B = enc.B.double()
    # the first axis's m frequencies, then the next axis's, each row on its axis
    for axis in range(in_dim):
        block = B[axis * m:(axis + 1) * m]
        others = [a for a in range(in_dim) if a != axis]
        assert torch.equal(block[:, others], torch.zeros(m, in_dim - 1, dtype=torch.float64))
        expected = torch.tensor([2.0 ** (scale * j / (m - 1)) - 1.0 for j in range(m)], dtype=torch.float64)
        torch.testing.assert_close(block[:, axis], expected.float().double(), rtol=0, atol=0)
    # DC first, 2^scale - 1 cycles per unit last, and below 1 cycle every j < (m - 1) / scale
    assert float(B[0].abs().sum()) == 0.0 and float(B[m - 1, 0]) == 2.0**scale - 1
    assert int((B[:m, 0] < 1).sum()) == math.ceil((m - 1) / scale)
    # gamma(v) = [cos 2 pi B v, sin 2 pi B v]: the DC row gives the constant features 1 and 0
    x = torch.rand(7, in_dim)
    y = enc(x)
    assert torch.equal(y[:, 0], torch.ones(7)) and torch.equal(y[:, B.shape[0]], torch.zeros(7))


def test_posenc_refuses_a_geometric_sigma_and_names_geoposenc() -> None:
    with pytest.raises(UsageError, match="geoposenc"):
        build_encoding({"type": "posenc", "sigma": 64.0, "features": 16}, 2)
    assert build_encoding({"type": "geoposenc", "sigma": 64.0, "features": 16}, 2).B.max() < 64


@pytest.mark.parametrize("name", RANDOM)
@pytest.mark.parametrize("sigma", [2.0, 25.0])
def test_random_frequency_std_matches_closed_form(name: str, sigma: float) -> None:
    cls = ENCODINGS[name]
    enc = build_encoding({"type": name, "sigma": sigma, "features": 20000, "seed": 3}, 2)
    sample_std = float(enc.B.double().std())
    expected = cls.frequency_std(sigma)  # type: ignore[attr-defined]
    # 40000 samples: the standard error of the std is ~0.5% for these families.
    assert sample_std == pytest.approx(expected, rel=0.03)


def test_bad_sigma_and_unknown_name() -> None:
    with pytest.raises(UsageError, match="sigma"):
        build_encoding({"type": "gauss", "sigma": 0.0}, 2)
    with pytest.raises(UsageError, match="sigma"):
        build_encoding({"type": "gauss", "sigma": -1.0}, 2)
    with pytest.raises(UsageError, match="unknown encoding"):
        build_encoding({"type": "wavelet"}, 2)


def test_a_checkpoint_of_the_earlier_posenc_loads_as_geoposenc(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from nfit.checkpoint import load_checkpoint, save_checkpoint
    from nfit.field import build_field

    torch.manual_seed(0)
    fld = build_field({"in_dim": 2, "out_dim": 1, "encoding": {"type": "geoposenc", "sigma": 64.0, "features": 8},
                       "network": {"type": "mlp", "width": 8, "depth": 2}})
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, fld, signal={}, config={"encoding": "geoposenc", "sigma": 64.0})
    # as format 1 wrote it: the same frequencies under the name posenc
    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
    spec = json.loads(meta["field"])
    spec["encoding"]["type"] = "posenc"
    spec["network"].pop("init")
    meta.update(format_version="1", field=json.dumps(spec), config=json.dumps({"encoding": "posenc", "sigma": 64.0}))
    save_file(load_file(str(path)), str(path), metadata=meta)
    again, loaded = load_checkpoint(path)
    assert loaded["field"]["encoding"]["type"] == "geoposenc" and loaded["config"]["encoding"] == "geoposenc"
    x = torch.rand(9, 2)
    assert torch.equal(again(x), fld.eval()(x))


@pytest.mark.parametrize("kind, scale", [("image", 6.0), ("ct", 3.0), ("mri", 4.0)])
def test_paper_protocols_give_posenc_the_notebooks_scale(kind: str, scale: float) -> None:
    from nfit.config import merge_config

    cfg = merge_config({}, {"protocol": "paper", "encoding": "posenc"}, kind=kind)
    assert cfg.sigma == scale
    assert build_encoding(cfg.encoding_spec(), 2).B.max() == 2.0**scale - 1


def test_posenc_maps_a_meshs_bounds_onto_the_notebooks_unit_cube() -> None:
    unit = build_encoding({"type": "posenc", "sigma": 6.0, "features": 256}, 3)
    mesh = build_encoding({"type": "posenc", "sigma": 6.0, "features": 256, "bounds": [-1.0, 1.0]}, 3)
    v = torch.rand(11, 3) * 2 - 1
    torch.testing.assert_close(mesh(v), unit((v + 1) / 2), atol=1e-5, rtol=0)
    assert mesh.spec()["bounds"] == [-1.0, 1.0] and "bounds" not in unit.spec()
    again = build_encoding(mesh.spec(), 3)
    assert torch.equal(again(v), mesh(v))
    from nfit.config import merge_config

    sdf = merge_config({}, {"protocol": "paper", "encoding": "posenc"}, kind="sdf")
    assert (sdf.encoding, sdf.sigma, sdf.features) == ("posenc", 6.0, 256)


def test_posenc_defaults_to_the_notebooks_photograph_scale() -> None:
    from nfit.config import merge_config

    assert merge_config({}, {"encoding": "posenc"}, kind="image").sigma == 6.0
    assert merge_config({}, {"encoding": "posenc", "sigma": 3}, kind="image").sigma == 3.0
    assert merge_config({}, {"encoding": "gauss"}, kind="image").sigma == 10.0
    assert merge_config({}, {"protocol": "paper", "encoding": "posenc"}, kind="volume").sigma == 4.0
