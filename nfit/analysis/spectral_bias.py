"""The 1D spectral-bias experiment of Tancik et al. 2020 (Sec. 5, Fig. 3).

Targets are 1/f^alpha noise on n points v_i = i / n of [0, 1): Fourier coefficients
c_k = (g_k + i g'_k) / k^alpha for k = 1..n/2 with g, g' ~ N(0, 1), standardised to zero
mean and unit variance. A 4-layer ReLU MLP (linear output) reads the power-law mapping

    gamma(v) = [a_j cos(2 pi j v), a_j sin(2 pi j v)],   a_j = j^-p,   j = 1..n/2

(p = inf keeps only j = 1: the basic mapping [cos 2 pi v, sin 2 pi v]) and trains by
plain gradient descent on the even points; the odd points are the test set. A smaller p
flattens the tangent kernel's spectrum, so the high frequencies of the residual decay
faster, and the smallest p interpolates the training points with high-frequency noise
(overfitting). The mapping lives here, not in the encoding registry: its parameters (p,
a number of frequencies tied to the sampling) mean nothing for the other signal kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nfit.analysis.ntk import make_ntk_fn
from nfit.analysis.predict import eigh_desc, stable_lr
from nfit.config import FitConfig
from nfit.errors import DivergenceError, UsageError
from nfit.field import Field
from nfit.networks import MLP
from nfit.problem import Problem
from nfit.train import train


class PowerLawFeatures(nn.Module):
    """gamma(v) = [a_j cos(2 pi j v), a_j sin(2 pi j v)], a_j = j^-p, j = 1..n_freq.

    v: (N, 1) in [0, 1) -> (N, 2 n_freq); p = inf gives the basic mapping (n_freq = 1).
    """

    a: torch.Tensor
    b: torch.Tensor

    def __init__(self, p: float, n_freq: int) -> None:
        super().__init__()
        if math.isinf(p):
            n_freq = 1
        j = torch.arange(1, n_freq + 1, dtype=torch.float64)
        self.register_buffer("b", j.float())
        self.register_buffer("a", (j ** -float(p) if math.isfinite(p) else torch.ones(1,
                                   dtype=torch.float64)).float())
        self.in_dim, self.out_dim, self.p = 1, 2 * n_freq, float(p)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * v * self.b
        return torch.cat([self.a * torch.cos(proj), self.a * torch.sin(proj)], dim=-1)

    def spec(self) -> dict[str, Any]:
        return {"type": "powerlaw", "p": self.p, "n_freq": self.out_dim // 2}


class PowerLawField(Field):
    """The power-law mapping then nfit's MLP with a linear output: (N, 1) -> (N, 1); a
    ``Field``, so the training loop trains it as it trains any other."""

    def __init__(self, p: float, n_freq: int, width: int, depth: int) -> None:
        encoding = PowerLawFeatures(p, n_freq)
        network = MLP(encoding.out_dim, 1, width=width, depth=depth, output="identity")
        super().__init__(encoding, network, {"in_dim": 1, "out_dim": 1, "encoding": encoding.spec(),  # type: ignore[arg-type]
                                             "network": network.spec()})


def parse_p_list(text: str) -> list[float]:
    """'0,0.5,1,inf' -> [0.0, 0.5, 1.0, inf]; every p must be >= 0."""
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            value = float("inf") if part in ("inf", "infinity") else float(part)
        except ValueError:
            raise UsageError(f"bad --p entry {part!r}: expected numbers or inf, "
                             "comma-separated") from None
        if not value >= 0 or math.isnan(value):
            raise UsageError(f"--p values must be >= 0 (or inf), got {part}")
        values.append(value)
    if not values:
        raise UsageError("--p needs at least one value")
    return values


def power_law_noise(n: int, alpha: float, seed: int) -> np.ndarray:
    """(n,) float64 samples of 1/f^alpha noise on a periodic grid, zero mean, unit variance."""
    rng = np.random.default_rng(seed)
    k = np.arange(n // 2 + 1, dtype=np.float64)
    coeff = rng.standard_normal(len(k)) + 1j * rng.standard_normal(len(k))
    coeff[1:] /= k[1:] ** alpha
    coeff[0] = 0.0
    y = np.fft.irfft(coeff, n)
    return (y - y.mean()) / y.std()


@dataclass
class SpectralBiasResult:
    """One p: its NTK spectrum, residual spectrum over steps and final errors.

    band_error: (n_records, n/4 + 1) |rfft(residual)_k| / |rfft(y_train)_k| on the
    training points, frequencies k = 0..n/4 (k = 0 is undefined for zero-mean data: nan).
    """

    p: float
    eigenvalues: np.ndarray
    steps: np.ndarray
    band_error: np.ndarray
    train_mse: float
    test_mse: float
    lr: float
    prediction: np.ndarray  # (n,) final network output on all points

    def summary(self) -> dict[str, Any]:
        return {"p": self.p if math.isfinite(self.p) else "inf", "train_mse": self.train_mse,
                "test_mse": self.test_mse, "lr": self.lr,
                "eigenvalue_max": float(self.eigenvalues[0]),
                "eigenvalue_min": float(self.eigenvalues[-1])}


def run_spectral_bias(ps: list[float], *, alpha: float = 1.0, n: int = 64, width: int = 256,
                      depth: int = 4, steps: int = 2000, record_every: int = 20, seed: int = 0,
                      ) -> tuple[np.ndarray, list[SpectralBiasResult]]:
    """Run the experiment for each p. Returns (targets (n,), results in the order of ps)."""
    if n < 8 or n % 4:
        raise UsageError(f"--n must be a multiple of 4 and at least 8, got {n}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise UsageError(f"--alpha must be a number >= 0, got {alpha}")
    if steps < 1 or record_every < 1 or width < 1 or depth < 2:
        raise UsageError("--steps, --record-every and --width must be >= 1 and --depth >= 2")
    y_all = power_law_noise(n, alpha, seed)
    v_all = torch.arange(n, dtype=torch.float32)[:, None] / n
    x_train, y_train = v_all[::2], torch.tensor(y_all[::2], dtype=torch.float32)[:, None]
    x_test, y_test = v_all[1::2], torch.tensor(y_all[1::2], dtype=torch.float32)[:, None]
    y_hat = np.abs(np.fft.rfft(y_all[::2]))
    results = []
    for p in ps:
        torch.manual_seed(seed)
        fld = PowerLawField(p, n // 2, width, depth)
        kernel = make_ntk_fn(fld)(x_train).numpy()
        lam, _ = eigh_desc(kernel)
        lr = stable_lr(float(lam[0]), len(x_train), 1)
        records, recorded = _descend(fld, x_train, y_train, y_hat, lr, steps, record_every, p)
        with torch.no_grad():
            train_mse = float(F.mse_loss(fld(x_train), y_train))
            test_mse = float(F.mse_loss(fld(x_test), y_test))
            prediction = fld(v_all)[:, 0].double().numpy()
        band = np.array(records)
        band[:, 0] = np.nan
        results.append(SpectralBiasResult(p, lam, np.array(recorded), band, train_mse, test_mse,
                                          lr, prediction))
    return y_all, results


def _descend(fld: Field, x_train: torch.Tensor, y_train: torch.Tensor, y_hat: np.ndarray, lr: float,
             steps: int, record_every: int, p: float) -> tuple[list[np.ndarray], list[int]]:
    """Plain full-batch gradient descent on the MSE through the training loop; the residual's
    spectrum relative to the target's at step 0 and every ``record_every`` steps."""
    records: list[np.ndarray] = []
    recorded: list[int] = []

    def record(step: int) -> None:
        with torch.no_grad():
            residual = (fld(x_train) - y_train)[:, 0].double().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            records.append(np.abs(np.fft.rfft(residual)) / y_hat)
        recorded.append(step)

    def on_step(step: int, capture: Any) -> None:
        if step % record_every == 0 or step == steps:
            capture()  # the weights after this step, written back into fld
            record(step)

    cfg = FitConfig(steps=steps, lr=lr, optimizer="sgd", eval_every=steps, batch="full", precision="fp32")
    record(0)
    try:
        train([fld], Problem(x_train, y_train), cfg, device=torch.device("cpu"), precision="fp32", on_step=on_step)
    except DivergenceError:
        raise UsageError(f"gradient descent diverged for p={p:g}; try fewer --steps or a smaller --width") from None
    return records, recorded
