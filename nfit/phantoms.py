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

from pathlib import Path
from typing import Any

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


def write_phantoms(name: str = "shepp", *, count: int | None = None, size: int = 512, seed: int | None = None,
                   paper: bool = False, out: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """``nfit phantom``: write COUNT phantoms as OUT/shepp-000.png ... (16-bit grayscale) and
    OUT/phantoms.json (last), or with ``paper`` the paper's 8 test phantoms, also exactly as
    OUT/phantoms.npy (float32). OUT defaults to runs/phantoms; an existing one needs ``force``.
    Returns the report (with "out")."""
    from nfit.formats.images import write_image
    from nfit.io import atomic_path, atomic_write_json, resolve_out_dir

    if name not in PHANTOMS:
        raise UsageError(f"unknown phantom {name!r}; choose {', '.join(PHANTOMS)}")
    if paper and (count is not None or seed is not None):
        raise UsageError("--paper writes the paper's 8 test phantoms; drop --count and --seed")
    if size > 16_384:
        raise UsageError(f"--size {size} is more than 16,384 pixels per side")
    if paper:
        if size < 2:
            raise UsageError(f"need --size >= 2, got {size}")
        images = paper_shepp_logan(size)
    else:
        images = perturbed_shepp_logan(8 if count is None else count, size, 0 if seed is None else seed)
    out_dir = resolve_out_dir(Path(out) if out is not None else None, Path("runs") / "phantoms", force)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        files.append(f"{name}-{i:03d}.png")
        write_image(out_dir / files[-1], image, 16)
    report: dict[str, Any] = {"phantom": name, "count": len(images), "size": size,
                              "perturbation": f"N(0, 1) x {PERTURBATION:g} on every ellipse parameter",
                              "files": files, "out": str(out_dir)}
    if paper:
        with atomic_path(out_dir / "phantoms.npy") as tmp:
            np.save(tmp, images)
        files.append("phantoms.npy")
        report["source"] = (f"the paper's test phantoms (Experiments/2d_CT): draws {PAPER_TEST_DRAWS.start}-"
                            f"{PAPER_TEST_DRAWS.stop - 1} of JAX's PRNGKey({PAPER_KEY}), float32; the "
                            "PNGs round them to 16 bits, phantoms.npy holds them exactly")
    else:
        report["seed"] = 0 if seed is None else seed
    atomic_write_json(out_dir / "phantoms.json", report)
    return report
