"""Coordinate networks that read an encoding's output.

One registry, ``NETWORKS``, maps names to classes; ``build_network`` is the one
constructor. Each network takes ``(N, in_dim)`` features and returns ``(N, out_dim)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from nfit.errors import UsageError

NETWORKS: dict[str, type[nn.Module]] = {}
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")


def register(name: str):
    def wrap(cls):
        cls.name = name
        NETWORKS[name] = cls
        return cls

    return wrap


@register("mlp")
class MLP(nn.Module):
    """The paper's coordinate MLP: ``depth`` linear layers, ReLU between, ``width`` wide.

    depth=4, width=256 is Tancik et al.'s default: three hidden ReLU layers of 256 and
    a linear output layer, followed by a sigmoid for signals with values in [0, 1].

    features: (N, in_dim)  ->  (N, out_dim)
    """

    name: ClassVar[str] = "mlp"

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, depth: int = 4,
                 output: str = "sigmoid") -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise UsageError(f"--depth and --width must be at least 1 (got {depth}, {width})")
        if output not in OUTPUT_ACTIVATIONS:
            raise UsageError(f"unknown output activation {output!r}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.width, self.depth, self.output = width, depth, output
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        out = self.layers[-1](h)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "width": self.width, "depth": self.depth, "output": self.output}


def build_network(spec: dict[str, Any], in_dim: int, out_dim: int) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("type", "mlp")
    if name not in NETWORKS:
        raise UsageError(f"unknown model {name!r}; choose from: {', '.join(sorted(NETWORKS))}")
    try:
        return NETWORKS[name](in_dim, out_dim, **spec)
    except TypeError as exc:
        raise UsageError(f"bad parameters for model {name!r}: {exc}") from None
