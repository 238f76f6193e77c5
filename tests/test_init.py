"""How an MLP starts (``--init``): the paper's notebooks' stax.Dense defaults, or torch's."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from nfit.api import run
from nfit.catalog import KINDS
from nfit.checkpoint import load_checkpoint
from nfit.config import merge_config
from nfit.errors import UsageError
from nfit.field import build_field
from nfit.networks import MLP, PAPER_BIAS_STD, TRUNCATED_NORMAL_STD, build_network
from nfit.signals import signal_kind
from nfit.spec import FitSpec


def _layer(init: str, fan_in: int = 1024, fan_out: int = 768, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    net = MLP(fan_in, fan_out, depth=1, init=init)
    layer = net.layers[0]
    assert isinstance(layer, nn.Linear)
    return layer


def test_paper_init_is_glorot_truncated_normal_and_small_normal_bias() -> None:
    fan_in, fan_out = 1024, 768
    layer = _layer("paper", fan_in, fan_out)
    w = layer.weight.detach().double()
    target = math.sqrt(2.0 / (fan_in + fan_out))
    # 786,432 draws: the sample std's standard error is ~0.1%
    assert float(w.std()) == pytest.approx(target, rel=0.01)
    assert abs(float(w.mean())) < 0.01 * target
    # truncated at two of the untruncated normal's stds, std / 0.8796 each
    bound = 2.0 * target / TRUNCATED_NORMAL_STD
    assert float(w.abs().max()) <= bound * (1 + 1e-6)
    # and the draws reach the bound: a uniform of the same std stops at sqrt(3) target,
    # an untruncated normal passes 2.27 target hundreds of times in this many draws
    assert float(w.abs().max()) > 0.99 * bound
    assert float((w.abs() > math.sqrt(3.0) * target).double().mean()) > 0.02
    b = layer.bias.detach().double()
    assert float(b.std()) == pytest.approx(PAPER_BIAS_STD, rel=0.1)
    # unbounded normal biases: a few of 768 beyond 2 std, none beyond torch's uniform bound
    assert float(b.abs().max()) > 2 * PAPER_BIAS_STD


def test_torch_init_is_nn_linear_default() -> None:
    fan_in = 1024
    layer = _layer("torch", fan_in)
    reference = (torch.manual_seed(0), nn.Linear(fan_in, 768))[1]
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    assert float(layer.weight.detach().double().std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.01)


def test_every_layer_of_a_paper_mlp_starts_the_paper_way() -> None:
    torch.manual_seed(1)
    net = build_network({"type": "mlp", "width": 256, "depth": 4, "init": "paper"}, 512, 3)
    for layer in net.layers:
        fan_in, fan_out = layer.in_features, layer.out_features
        bound = 2.0 * math.sqrt(2.0 / (fan_in + fan_out)) / TRUNCATED_NORMAL_STD
        assert float(layer.weight.detach().abs().max()) <= bound * (1 + 1e-6)
        assert float(layer.bias.detach().abs().max()) < 6 * PAPER_BIAS_STD
    assert net.spec()["init"] == "paper"


def test_a_spec_without_init_is_the_torch_mlp_it_was_written_for() -> None:
    torch.manual_seed(2)
    old = build_network({"type": "mlp", "width": 32, "depth": 2}, 8, 1)
    torch.manual_seed(2)
    now = build_network({"type": "mlp", "width": 32, "depth": 2, "init": "torch"}, 8, 1)
    assert old.spec()["init"] == "torch"
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), now.state_dict().values()))


@pytest.mark.parametrize("kind", sorted(k for k, f in KINDS.items() if "paper" in f.protocols))
def test_every_paper_protocol_starts_the_paper_way(kind: str) -> None:
    cfg = merge_config({}, {"protocol": "paper"}, kind=kind)
    assert cfg.init == "paper"
    assert cfg.network_spec()["init"] == "paper"
    # a flag still wins over the protocol
    assert merge_config({}, {"protocol": "paper", "init": "torch"}, kind=kind).init == "torch"


def test_init_applies_to_the_mlp_only() -> None:
    with pytest.raises(UsageError, match="--init applies to --model mlp only"):
        merge_config({}, {"model": "siren", "init": "paper"}, kind="image")
    with pytest.raises(UsageError, match="--init must be one of"):
        merge_config({}, {"init": "xavier"}, kind="image")
    # a protocol's init does not reach SIREN, which keeps its own
    siren = merge_config({}, {"protocol": "paper", "model": "siren"}, kind="image")
    assert "init" not in siren.network_spec()


def test_paper_init_checkpoint_round_trip_rebuilds_the_field(tiny_rgb, tmp_path) -> None:
    cfg = merge_config({}, {"encoding": "gauss", "sigma": 4.0, "features": 32, "width": 32,
                            "init": "paper", "steps": 5, "split": "all", "device": "cpu",
                            "precision": "fp32"}, kind="image")
    run(FitSpec.of("image", tiny_rgb, cfg, out=str(tmp_path / "run")))
    fld, meta = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert meta["field"]["network"]["init"] == "paper" and meta["config"]["init"] == "paper"
    # the recorded spec rebuilds the same architecture and, from the fit's seed, the same start
    spec = fld.spec()
    torch.manual_seed(cfg.seed)
    first = build_field(spec)
    torch.manual_seed(cfg.seed)
    again = build_field(spec)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    signal_kind("image").render(fld, meta["signal"], tmp_path / "again.png")
    assert np.array_equal(iio.imread(tmp_path / "again.png"), iio.imread(tmp_path / "run" / "recon.png"))
