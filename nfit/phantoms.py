"""Test phantoms: the paper's randomly perturbed modified Shepp-Logan set.

    images = perturbed_shepp_logan(count=8, size=512, seed=0)   # (8, 512, 512) float64 in [0, 1]

Tancik et al. 2020 (``Experiments/2d_CT``) draw each phantom from the modified
Shepp-Logan ellipses of ``phantominator`` with every ellipse parameter (grey value, both
semi-axes, centre, angle) perturbed by N(0, 1) / 20, and clip the image to [0, 1]. The
seed makes a set reproducible; the paper's own draws are not published, so this set is
statistically, not pixel-for-pixel, the paper's.
"""

from __future__ import annotations

import numpy as np

from nfit.errors import UsageError

PHANTOMS = ("shepp",)
PERTURBATION = 1.0 / 20.0


def perturbed_shepp_logan(count: int, size: int = 512, seed: int = 0,
                          perturbation: float = PERTURBATION) -> np.ndarray:
    """(count, size, size) float64 phantoms in [0, 1]."""
    from phantominator import ct_modified_shepp_logan_params_2d, ct_shepp_logan

    if count < 1 or size < 2:
        raise UsageError(f"need --count >= 1 and --size >= 2, got {count} and {size}")
    rng = np.random.default_rng(int(seed))
    base = ct_modified_shepp_logan_params_2d()
    out = np.empty((count, size, size))
    for i in range(count):
        ellipses = base + rng.normal(size=base.shape) * perturbation
        out[i] = np.clip(ct_shepp_logan(size, modified=True, E=ellipses), 0.0, 1.0)
    return out
