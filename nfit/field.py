"""A neural field: an encoding composed with a network, f(v) = network(gamma(v))."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nfit.encodings import Encoding, build_encoding
from nfit.errors import UsageError
from nfit.networks import build_network


class Field(nn.Module):
    """coords: (N, in_dim) in the signal's domain  ->  (N, out_dim)."""

    def __init__(self, encoding: Encoding, network: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.encoding = encoding
        self.network = network
        self._spec = spec

    @property
    def in_dim(self) -> int:
        return self.encoding.in_dim

    @property
    def out_dim(self) -> int:
        return int(self.network.out_dim)  # type: ignore[arg-type]

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.network(self.encoding(coords))

    def spec(self) -> dict[str, Any]:
        """The plain-dict config that rebuilds this field's architecture."""
        return dict(self._spec)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_field(spec: dict[str, Any]) -> Field:
    """spec: {"in_dim": d, "out_dim": c, "encoding": {...}, "network": {...}}.

    The encoding's random matrices are drawn from its own seed, so the same spec
    always gives the same buffers; the network's weights come from torch's global
    RNG, which ``fit`` seeds before calling this.
    """
    in_dim, out_dim = int(spec["in_dim"]), int(spec["out_dim"])
    encoding = build_encoding(spec["encoding"], in_dim)
    network = build_network(spec.get("network", {"type": "mlp"}), encoding.out_dim, out_dim)
    full = {"in_dim": in_dim, "out_dim": out_dim, "encoding": encoding.spec(),
            "network": network.spec()}  # type: ignore[operator]
    fld = Field(encoding, network, full)
    if not any(p.requires_grad for p in fld.parameters()):
        raise UsageError(f"model {spec.get('network', {}).get('type', 'mlp')!r} with encoding "
                         f"{encoding.name!r} has nothing to train; use a learned encoding "
                         "(hashgrid, densegrid, mulfagrid)")
    return fld
