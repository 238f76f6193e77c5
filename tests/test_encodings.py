"""Every registered encoding: shapes, out_dim, spec round trip, frequency statistics."""

from __future__ import annotations

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


def test_posenc_frequencies_are_log_linear_on_axis() -> None:
    enc = build_encoding({"type": "posenc", "sigma": 10.0, "features": 8}, 2)
    m = 4  # 8 frequencies over 2 axes
    B = enc.B.double()
    assert B.shape == (8, 2)
    # every row is on one axis
    assert ((B != 0).sum(dim=1) == 1).all()
    scales = B.abs().sum(dim=1).reshape(m, 2)[:, 0]
    torch.testing.assert_close(scales, 10.0 ** (torch.arange(m, dtype=torch.float64) / m))


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
