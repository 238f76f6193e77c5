"""The infinite-width NTK of a ReLU MLP on Fourier features, in closed form.

Parameterisation (NTK parameterisation, Jacot et al. 2018; biases as in Arora et al.
2019): every weight and bias is drawn from N(0, 1) and a layer computes

    z^1 = (sigma_w / sqrt(n_0)) W^1 gamma(v) + sigma_b b^1
    z^{l+1} = (sigma_w / sqrt(n_l)) W^{l+1} relu(z^l) + sigma_b b^{l+1},   l = 1..L-1

with f = z^L (``depth`` = L linear layers, L - 1 hidden ReLU layers, linear output).
As every width n_l -> infinity, the tangent kernel becomes deterministic:

    Sigma^1(v, v') = sigma_w^2 h(v, v') / n_0 + sigma_b^2,          Theta^1 = Sigma^1
    Sigma^{l+1}     = sigma_w^2 E[relu(u) relu(u')] + sigma_b^2
    Sigmadot^{l+1}  = sigma_w^2 E[relu'(u) relu'(u')]
    Theta^{l+1}     = Sigma^{l+1} + Theta^l Sigmadot^{l+1}

with (u, u') ~ N(0, Sigma^l on {v, v'}) and the arc-cosine expectations (Cho and Saul
2009), for rho = Sigma(v, v') / sqrt(Sigma(v, v) Sigma(v', v')), theta = arccos rho:

    E[relu(u) relu(u')]   = sqrt(Sigma(v,v) Sigma(v',v'))
                            * (sin theta + (pi - theta) cos theta) / (2 pi)
    E[relu'(u) relu'(u')] = (pi - theta) / (2 pi)

The input kernel of a Fourier-feature mapping gamma(v) = [a_j cos(2 pi b_j^T v),
a_j sin(2 pi b_j^T v)] is stationary,

    h(v, v') = gamma(v) . gamma(v') = sum_j a_j^2 cos(2 pi b_j^T (v - v')),

so Theta depends only on v - v' (for Fourier features Sigma(v, v) is the same for every
v). ``NTKMLP`` is the finite network of this parameterisation: its empirical kernel
(``nfit.analysis.ntk.make_ntk_fn``) approaches ``analytic_ntk`` as the width grows, with
a relative error of order 1/sqrt(width).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fourier_input_kernel(v1: torch.Tensor, v2: torch.Tensor, frequencies: torch.Tensor,
                         amplitudes: torch.Tensor | None = None) -> torch.Tensor:
    """h(v1, v2) = sum_j a_j^2 cos(2 pi b_j^T (v1 - v2)).

    v1: (N1, d), v2: (N2, d), frequencies B: (m, d), amplitudes a: (m,) or None for ones.
    Returns (N1, N2) float64.
    """
    b = frequencies.double()
    a2 = torch.ones(len(b), dtype=torch.float64) if amplitudes is None else amplitudes.double() ** 2
    diff = v1.double()[:, None, :] - v2.double()[None, :, :]  # (N1, N2, d)
    return torch.cos(2 * math.pi * diff @ b.T) @ a2


def relu_ntk_from_input(h12: torch.Tensor, h11: torch.Tensor, h22: torch.Tensor, *, n0: int,
                        depth: int, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0
                        ) -> torch.Tensor:
    """Theta^L from the input Gram values: h12 (N1, N2), h11 (N1,), h22 (N2,); float64."""
    if depth < 1:
        raise ValueError("depth must be at least 1")
    sw2, sb2 = sigma_w ** 2, sigma_b ** 2
    s12 = sw2 * h12 / n0 + sb2
    s11 = sw2 * h11 / n0 + sb2
    s22 = sw2 * h22 / n0 + sb2
    theta = s12.clone()
    for _ in range(depth - 1):
        norm = torch.sqrt(s11[:, None] * s22[None, :])
        rho = (s12 / norm).clamp(-1.0, 1.0)
        angle = torch.arccos(rho)
        arc = torch.sin(angle) + (math.pi - angle) * torch.cos(angle)
        s12 = sw2 * norm * arc / (2 * math.pi) + sb2
        sdot = sw2 * (math.pi - angle) / (2 * math.pi)
        # On the diagonal theta = 0: E[relu(u)^2] = Sigma/2.
        s11 = sw2 * s11 / 2 + sb2
        s22 = sw2 * s22 / 2 + sb2
        theta = s12 + theta * sdot
    return theta


def analytic_ntk(v1: torch.Tensor, v2: torch.Tensor, frequencies: torch.Tensor | None, *,
                 depth: int, amplitudes: torch.Tensor | None = None,
                 sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0) -> torch.Tensor:
    """The infinite-width NTK of an NTK-parameterised ReLU MLP with ``depth`` linear layers
    on the Fourier features (B = ``frequencies``: (m, d), a = ``amplitudes``), or on the raw
    coordinates when ``frequencies`` is None. v1: (N1, d), v2: (N2, d) -> (N1, N2) float64.
    """
    if frequencies is None:
        x1, x2 = v1.double(), v2.double()
        h12, h11, h22 = x1 @ x2.T, (x1 * x1).sum(1), (x2 * x2).sum(1)
        n0 = v1.shape[1]
    else:
        h12 = fourier_input_kernel(v1, v2, frequencies, amplitudes)
        a2 = (torch.ones(len(frequencies), dtype=torch.float64) if amplitudes is None
              else amplitudes.double() ** 2)
        h11 = torch.full((len(v1),), float(a2.sum()), dtype=torch.float64)
        h22 = torch.full((len(v2),), float(a2.sum()), dtype=torch.float64)
        n0 = 2 * len(frequencies)
    return relu_ntk_from_input(h12, h11, h22, n0=n0, depth=depth, sigma_w=sigma_w,
                               sigma_b=sigma_b)


class NTKLinear(nn.Module):
    """y = (sigma_w / sqrt(n_in)) W x + sigma_b b with W, b ~ N(0, 1) (NTK parameterisation).

    Not an ``nn.Linear`` (the scale lives outside the weight), so ``make_ntk_fn`` takes the
    dense Jacobian route for it: tests use it as an independent check of both routes.
    """

    def __init__(self, n_in: int, n_out: int, sigma_w: float, sigma_b: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.randn(n_out))
        self.scale_w, self.scale_b = sigma_w / math.sqrt(n_in), sigma_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_w * (x @ self.weight.T) + self.scale_b * self.bias


class NTKMLP(nn.Module):
    """A finite ReLU MLP in the NTK parameterisation, on a fixed feature map.

    features: a module (N, d) -> (N, n_0) such as a Fourier-feature encoding.
    (N, d) -> (N, out_dim).
    """

    def __init__(self, features: nn.Module, n0: int, width: int, depth: int, out_dim: int = 1,
                 sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0) -> None:
        super().__init__()
        self.features = features
        dims = [n0] + [width] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(NTKLinear(a, b, sigma_w, sigma_b)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = self.features(v)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)
