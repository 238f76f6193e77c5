"""Coordinate networks that read an encoding's output.

One registry, ``NETWORKS``, maps names to classes; ``build_network`` is the one
constructor. Each network takes ``(N, in_dim)`` features and returns ``(N, out_dim)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from nfit.catalog import INITS, NETWORK_FACTS
from nfit.errors import UsageError

NETWORKS: dict[str, type[nn.Module]] = {}
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")
#: std of a standard normal truncated to (-2, 2): a truncated draw divided by it has
#: variance 1 (jax.nn.initializers.variance_scaling's constant)
TRUNCATED_NORMAL_STD = 0.87962566103423978
#: std of the paper's biases (stax.Dense's default ``b_init=normal()``)
PAPER_BIAS_STD = 1e-2


def initialise_linear(layer: nn.Linear, init: str) -> None:
    """Start ``layer`` as ``init`` says.

    ``torch``: ``nn.Linear``'s own, W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (W's std 1/sqrt(3 fan_in)). ``paper``: what the paper's notebooks get from
    ``stax.Dense``'s defaults, ``W_init=glorot_normal()`` and ``b_init=normal()``:
    W from a normal truncated to two of its own standard deviations and rescaled so
    that its std is exactly sqrt(2 / (fan_in + fan_out)) (|W| <= 2 sqrt(2 / (fan_in +
    fan_out)) / 0.8796), b ~ N(0, 0.01^2). Draws come from torch's global generator, which
    the fit seeds.
    """
    if init == "torch":
        layer.reset_parameters()
        return
    if init != "paper":
        raise UsageError(f"unknown --init {init!r}; choose from: {', '.join(INITS)}")
    fan_in, fan_out = layer.in_features, layer.out_features
    std = math.sqrt(2.0 / (fan_in + fan_out)) / TRUNCATED_NORMAL_STD
    with torch.no_grad():
        nn.init.trunc_normal_(layer.weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
        if layer.bias is not None:
            layer.bias.normal_(0.0, PAPER_BIAS_STD)


def register(name: str):
    """Adds a network to the registry, with its facts (params, defaults) from ``nfit.catalog``."""

    def wrap(cls):
        facts = NETWORK_FACTS[name]
        cls.name, cls.params, cls.defaults = name, facts.params, facts.defaults
        NETWORKS[name] = cls
        return cls

    return wrap


@register("mlp")
class MLP(nn.Module):
    """The paper's coordinate MLP: ``depth`` linear layers, ReLU between, ``width`` wide.

    depth=4, width=256 is Tancik et al.'s default: three hidden ReLU layers of 256 and
    a linear output layer, followed by a sigmoid for signals with values in [0, 1].
    ``init`` chooses how the layers start (``initialise_linear``: the paper's or torch's);
    a spec without one was written before the choice existed, when every MLP started as
    torch's.

    features: (N, in_dim)  ->  (N, out_dim)
    """

    name: ClassVar[str] = "mlp"
    #: keyword arguments beyond width/depth/output that a spec may carry (``register``
    #: sets them, and the settings the network implies, from ``nfit.catalog``)
    params: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 4,
                 output: str = "sigmoid", init: str = "torch") -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise UsageError(f"--depth and --width must be at least 1 (got {depth}, {width})")
        if output not in OUTPUT_ACTIVATIONS:
            raise UsageError(f"unknown output activation {output!r}")
        if init not in INITS:
            raise UsageError(f"unknown --init {init!r}; choose from: {', '.join(INITS)}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.width, self.depth, self.output, self.init = width, depth, output, init
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        if init != "torch":  # nn.Linear has drawn torch's already
            for layer in self.layers:
                initialise_linear(layer, init)  # type: ignore[arg-type]

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        """The hidden layers' nonlinearity (``nfit.stack.StackedNetwork`` applies it too)."""
        return torch.relu(h)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The output activation: sigmoid for values in [0, 1], else none."""
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.finish(self.layers[-1](h))

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "width": self.width, "depth": self.depth, "output": self.output,
                "init": self.init}


@register("siren")
class Siren(MLP):
    """SIREN (Sitzmann et al. 2020): sine activations with their initialisation.

    Layer k computes h_k = sin(omega0 * (W_k h_{k-1} + b_k)) for the ``depth - 1`` hidden
    layers; the last layer is linear (then the signal's output activation). Weights:
    first layer U(-1/in, 1/in), later layers U(-sqrt(6/in)/omega0, sqrt(6/in)/omega0),
    so every hidden pre-activation omega0 * W h is ~ N(0, 1) and every sine output is
    arcsine-distributed on [-1, 1] at initialisation (the paper's Theorem 1.8). Biases
    keep torch's default U(-1/sqrt(in), 1/sqrt(in)). The paper's inputs lie in [-1, 1];
    on [0, 1) grids the first layer sees half that range (raise ``omega0`` to compensate).

    features: (N, in_dim)  ->  (N, out_dim)
    """

    name: ClassVar[str] = "siren"

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 5,
                 output: str = "sigmoid", omega0: float = 30.0) -> None:
        if depth < 2 or width < 1:
            raise UsageError(f"siren needs --depth >= 2 and --width >= 1 (got {depth}, {width})")
        if output not in OUTPUT_ACTIVATIONS:
            raise UsageError(f"unknown output activation {output!r}")
        if not (math.isfinite(omega0) and omega0 > 0):
            raise UsageError(f"--omega0 must be a positive number, got {omega0}")
        super().__init__(in_dim, out_dim, width=width, depth=depth, output=output)
        self.omega0 = float(omega0)
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                assert isinstance(layer, nn.Linear)
                fan_in = layer.in_features
                bound = 1.0 / fan_in if k == 0 else math.sqrt(6.0 / fan_in) / self.omega0
                layer.weight.uniform_(-bound, bound)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * h)

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "width": self.width, "depth": self.depth,
                "output": self.output, "omega0": self.omega0}


@register("sum")
class SumReadout(nn.Module):
    """The plain interpolated grid: the encoding's features summed into the outputs.

    Output c is the sum of the features j with j mod C = c, f_c(x) = sum_{j = c mod C}
    gamma_j(x), a fixed 0/1 readout R (in_dim, C) stored as a buffer: no parameters, no
    output activation, whatever ``output`` asks (a sigmoid would make f non-linear in the
    grid). After a grid encoding, f is linear in the grid's table, so its tangent kernel
    (the GTK, Zhao et al. 2024) does not change in training (their Theorem 2); ``nfit
    kernel --model sum`` shows it. It needs a learned encoding (it has nothing to train
    otherwise): ``--model sum`` implies ``--encoding densegrid``.

    features: (N, in_dim)  ->  (N, out_dim)
    """

    name: ClassVar[str] = "sum"
    readout: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int, width: int = 0, depth: int = 0,
                 output: str = "identity") -> None:
        super().__init__()
        if in_dim < out_dim:
            raise UsageError(f"model 'sum' needs at least one feature per output: the encoding "
                             f"gives {in_dim} features for {out_dim} outputs")
        self.in_dim, self.out_dim = in_dim, out_dim
        # width/depth/output are accepted so every network takes the same spec; unused
        self.width, self.depth, self.output = width, depth, "identity"
        readout = torch.zeros(in_dim, out_dim)
        readout[torch.arange(in_dim), torch.arange(in_dim) % out_dim] = 1.0
        self.register_buffer("readout", readout, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.readout.to(features.dtype)

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "width": self.width, "depth": self.depth,
                "output": self.output}


def build_network(spec: dict[str, Any], in_dim: int, out_dim: int) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("type", "mlp")
    if name not in NETWORKS:
        raise UsageError(f"unknown model {name!r}; choose from: {', '.join(sorted(NETWORKS))}")
    try:
        return NETWORKS[name](in_dim, out_dim, **spec)
    except TypeError as exc:
        raise UsageError(f"bad parameters for model {name!r}: {exc}") from None
