"""Activation regions of a ReLU MLP field (Lazzari and Liu 2023).

A ReLU network is piecewise linear in its input features: each point has an activation
pattern, the on/off state of every hidden unit, and points sharing a pattern lie in one
linear region. The number of distinct patterns among a set of points measures how finely
the network has cut up the domain there; training a coordinate MLP on a detailed signal
raises it.
"""

from __future__ import annotations

import torch

from nfit.networks import MLP


def activation_regions(field: torch.nn.Module, coords: torch.Tensor, chunk: int = 8192
                       ) -> int | None:
    """Number of distinct hidden-unit on/off patterns among ``coords`` (N, d).

    Defined for fields whose network is nfit's ReLU ``MLP`` (a ReLU after every linear layer
    but the last); returns None for other networks. A pre-activation of exactly 0 counts as off.
    """
    network = getattr(field, "network", None)
    encoding = getattr(field, "encoding", None)
    if type(network) is not MLP or encoding is None or len(network.layers) < 2:
        return None
    patterns = []
    with torch.no_grad():
        for i in range(0, len(coords), chunk):
            h = encoding(coords[i:i + chunk])
            bits = []
            for layer in network.layers[:-1]:
                z = layer(h)
                bits.append(z > 0)
                h = torch.relu(z)
            patterns.append(torch.cat(bits, dim=1))
    table = torch.cat(patterns).to(torch.uint8)
    return int(torch.unique(table, dim=0).shape[0])
