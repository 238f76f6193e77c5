"""Kernel predictions of gradient-descent training, and the generalization measure.

A field linearised around its initialisation, f(x; theta) ~ f0(x) + J(x)(theta - theta0),
trained by plain gradient descent with step eta on the loss nfit uses,
L = (1 / (N C)) sum_{i,c} (f_c(x_i) - y_ic)^2, evolves on the training points as

    r(t+1) = (I - eta Theta) r(t),   Theta = (2 / (N C)) K,   r = f_train - y

(Lee et al. 2019), channel by channel with the output-traced kernel K (see
``nfit.analysis.ntk``; the cross-output blocks are neglected). Through K = V diag(lam) V^T,

    f_train(t) = y + V diag((1 - eta' lam)^t) V^T (f0_train - y)
    f_test(t)  = f0_test + K_test V diag((1 - (1 - eta' lam)^t) / lam) V^T (y - f0_train)

with eta' = 2 eta / (N C). For small eta' lam, (1 - eta' lam)^t ~ exp(-eta' lam t), the
gradient-flow form K_test K^-1 (I - exp(-eta' K t)) y of Tancik et al. (eq. 3); the discrete
form is used because it is exact for the linearised model under the steps we compare with.
The ratio (1 - (1 - eta' lam)^t) / lam tends to eta' t as lam -> 0, so no ridge is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Predictor = Callable[[int], tuple[np.ndarray, np.ndarray | None]]


def eigh_desc(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of a symmetric kernel, in float64."""
    lam, vec = np.linalg.eigh(np.asarray(kernel, dtype=np.float64))
    order = np.argsort(lam)[::-1]
    return lam[order], vec[:, order]


def effective_lr(lr: float, n_points: int, n_outputs: int) -> float:
    """eta' = 2 eta / (N C): the step on the kernel for nfit's mean-squared-error loss."""
    return 2.0 * lr / (n_points * n_outputs)


def stable_lr(lam_max: float, n_points: int, n_outputs: int) -> float:
    """The step eta with eta' lam_max = 1: half the largest stable step for the linear model."""
    return n_points * n_outputs / (2.0 * lam_max)


def gradient_descent_mse(k_train: np.ndarray, y_train: np.ndarray, lr: float, *,
                         f0_train: np.ndarray, k_test_train: np.ndarray | None = None,
                         f0_test: np.ndarray | None = None) -> Predictor:
    """``predict(t) -> (f_train(t), f_test(t) or None)`` for t gradient-descent steps.

    k_train: (N, N) kernel on the training points; y_train, f0_train: (N, C) targets and
    outputs at initialisation; k_test_train: (M, N); f0_test: (M, C); lr: the step eta of
    the optimiser on nfit's mean-squared-error loss.
    """
    n, c = y_train.shape
    lam, vec = eigh_desc(k_train)
    lam = np.clip(lam, 0.0, None)  # round-off can leave tiny negative eigenvalues
    step = effective_lr(lr, n, c)
    residual0 = vec.T @ (f0_train - y_train)  # (N, C) in the eigenbasis
    test_map = None if k_test_train is None else k_test_train @ vec  # (M, N)

    def predict(t: int) -> tuple[np.ndarray, np.ndarray | None]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            base = 1.0 - step * lam
            decay = np.sign(base) ** t * np.exp(t * np.log(np.abs(base)))
            decay = np.where(base == 0, 0.0 if t > 0 else 1.0, decay)
            # (1 - decay) / lam, with its limit eta' t where lam vanishes
            gain = np.where(lam > 1e-12 * max(lam[0], 1e-300), (1.0 - decay) / lam, step * t)
        f_train = y_train + vec @ (decay[:, None] * residual0)
        if test_map is None or f0_test is None:
            return f_train, None
        f_test = f0_test - test_map @ (gain[:, None] * residual0)
        return f_train, f_test

    return predict


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(pred, np.float64) - target) ** 2))
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def generalization_measure(kernel: np.ndarray, residual: np.ndarray, ridge: float = 1e-3) -> float:
    """Delta = (1 / (N C)) tr(R^T (K_hat + lambda I)^-1 R), K_hat = K / mean(diag K).

    The GTK paper's Y^T G^-1 Y (Zhao et al. 2024), made comparable across encodings and
    point counts: the kernel is normalised to a unit mean diagonal, the ridge ``lambda``
    (default 1e-3, relative to that diagonal) conditions the solve, and R = y - f0 is what
    gradient descent has to learn from initialisation. Lower means the targets lie in the
    kernel's top eigendirections, which predicts faster training and better interpolation.
    kernel: (N, N); residual: (N, C).
    """
    k = np.asarray(kernel, dtype=np.float64)
    k = k / max(float(np.mean(np.diag(k))), 1e-300)
    lam, vec = eigh_desc(k)
    proj = vec.T @ np.asarray(residual, dtype=np.float64)
    return float(np.sum(proj ** 2 / (np.clip(lam, 0.0, None) + ridge)[:, None]) / residual.size)
