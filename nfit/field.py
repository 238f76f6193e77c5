"""A neural field: an encoding composed with a network, f(v) = network(gamma(v))."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nfit.device import autocast, compute_dtype, eval_chunk
from nfit.encodings import Encoding, FourierFeatures, build_encoding
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


def predict(fld: Field, x: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """fp32 predictions of one field at x: (N, d), in chunks; returns (N, C) on x's device."""
    chunk = chunk or eval_chunk(x.device)
    with torch.no_grad():
        return torch.cat([fld(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])


class InPrecision(Field):
    """A trained field that evaluates as its fit did: the network under the fit's autocast
    (bf16 on a CPU with native bf16), a fixed encoding's features in fp32 (a bf16 phase
    2 pi b.x would be off by whole radians at sigma 10). Counts the points it evaluates.

    For rendering: ``nfit render`` hands one to the kind's ``render`` in place of the field.
    """

    def __init__(self, fld: Field, device: torch.device, precision: str) -> None:
        super().__init__(fld.encoding, fld.network, fld.spec())
        self.device, self.precision, self.points = device, precision, 0

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        self.points += len(coords)
        with torch.autocast(self.device.type, enabled=False):
            if isinstance(self.encoding, FourierFeatures):
                # computed in fp32, written in the network's dtype as the fit cached them
                features = self.encoding(coords, compute_dtype(self.precision))
            else:
                features = self.encoding(coords)
        with autocast(self.device, self.precision):
            return self.network(features).float()  # type: ignore[no-any-return]
