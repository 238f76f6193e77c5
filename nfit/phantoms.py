"""Test phantoms: the paper's randomly perturbed modified Shepp-Logan set.

    images = perturbed_shepp_logan(count=8, size=512, seed=0)   # (8, 512, 512) float64 in [0, 1]
    images = paper_shepp_logan(size=512)                         # (8, 512, 512) float32: the paper's own

Tancik et al. 2020 (``Experiments/2d_CT``, ``get_shepp_dataset``) draw each phantom from
the modified Shepp-Logan ellipses of ``phantominator`` with every ellipse parameter (grey
value, both semi-axes, centre, angle) perturbed by N(0, 1) / 20, and clip the image to
[0, 1]. ``perturbed_shepp_logan`` draws such a set from numpy's generator and a seed.

``paper_shepp_logan`` is the paper's test set itself: the notebook splits ``PRNGKey(10)``
16 times, draws ``random.normal(subkey, (10, 6)) / 20`` after each split, keeps draws 0-7
for its grid search and reports Table 1 on draws 8-15. ``nfit.threefry`` reproduces those
draws without JAX, and the phantom is computed as the notebook computed it: ``E`` is a
JAX float32 array, so phantominator's ellipse test runs in float32 (JAX's operators take
over from numpy's) and each grey value is added in float32. Of the 480 perturbed
parameters, 477 equal JAX's and 3 differ in the last place (XLA's float32 erfinv), which
moves no pixel: at 64^2 and 512^2 the 8 images equal, bit for bit, those of JAX
(``jax_threefry_partitionable`` off, as JAX then was) and phantominator 0.7 on a CPU.
The same parameters through phantominator in float64 change 1 pixel of 2,097,152 at
512^2, so a last-place difference elsewhere (another JAX, a GPU) moves a pixel or so.
"""

from __future__ import annotations

import numpy as np

from nfit.errors import UsageError

PHANTOMS = ("shepp",)
PERTURBATION = 1.0 / 20.0
#: the notebook's key, its grid-search draws (0-7) and its test draws (8-15)
PAPER_KEY = 10
PAPER_TEST_DRAWS = range(8, 16)


def paper_ellipses(draws: range = PAPER_TEST_DRAWS, key: int = PAPER_KEY) -> np.ndarray:
    """The notebook's perturbed ellipse parameters, (len(draws), 10, 6) float32.

    ``ct_params + random.normal(subkey, (10, 6)) / 20.0`` in float32; XLA computes the
    division by the constant 20 as a product with float32(0.05), as done here."""
    from phantominator import ct_modified_shepp_logan_params_2d

    from nfit.threefry import normal, prng_key, split

    base = np.asarray(ct_modified_shepp_logan_params_2d(), dtype=np.float32)
    rng_key = prng_key(key)
    out = []
    for i in range(max(draws) + 1):
        rng_key, sub = split(rng_key)
        if i in draws:
            out.append(base + normal(sub, base.shape) * np.float32(PERTURBATION))
    return np.stack(out).astype(np.float32)


def shepp_logan_float32(ellipses: np.ndarray, size: int) -> np.ndarray:
    """phantominator's ``ct_shepp_logan((size, size), E=ellipses)`` evaluated in float32, as
    the notebook's JAX arrays made it, clipped to [0, 1]: (size, size) float32."""
    f32 = np.float32
    axis = np.linspace(-1, 1, size).astype(f32)
    x, y = np.meshgrid(axis, axis)
    image = np.zeros((size, size), dtype=f32)
    cos_t, sin_t = np.cos(ellipses[:, 5]).astype(f32), np.sin(ellipses[:, 5]).astype(f32)
    for (grey, a, b, xc, yc, _), c, s in zip(ellipses.astype(f32), cos_t, sin_t, strict=True):
        dx, dy = x - xc, y - yc
        u, v = dx * c + dy * s, dx * s - dy * c
        inside = (u * u) / (a * a) + (v * v) / (b * b) <= f32(1.0)
        image[inside] = image[inside] + grey
    return np.clip(image, f32(0.0), f32(1.0))


def paper_shepp_logan(size: int = 512, draws: range = PAPER_TEST_DRAWS) -> np.ndarray:
    """The paper's CT test phantoms (Table 1): (8, size, size) float32 in [0, 1]."""
    if size < 2:
        raise UsageError(f"need --size >= 2, got {size}")
    return np.stack([shepp_logan_float32(e, size) for e in paper_ellipses(draws)])


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
