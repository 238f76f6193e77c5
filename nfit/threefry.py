"""JAX's random numbers in numpy: threefry2x32, PRNGKey, split, uniform, normal.

    key = prng_key(10)                 # jax.random.PRNGKey(10) -> [0, 10] (uint32)
    key, sub = split(key)              # jax.random.split(key)
    z = normal(sub, (10, 6))           # jax.random.normal(sub, (10, 6)), float32

The paper's experiments (Tancik et al. 2020) draw their phantoms, their MRI mask and
their Gaussian B from ``jax.random`` with ``PRNGKey(10)``. This port reproduces those
draws without JAX, for the layout JAX used then and still uses with
``jax_threefry_partitionable`` off (the default before JAX 0.5):

- ``threefry2x32``: Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123), the
  rotations (13, 15, 26, 6) and (17, 29, 16, 24), key schedule parity 0x1BD11BDA;
- a key is two uint32; ``prng_key(seed)`` is [seed >> 32, seed & 0xFFFFFFFF];
- ``random_bits(key, n)``: threefry2x32(key, counts 0 .. n-1) where the counts are cut in
  two halves (x0 = first half, x1 = second, an odd count padded with one 0) and the two
  output halves are joined again;
- ``split(key, num)``: random_bits(key, 2 num) read as num keys;
- ``uniform``: the top 23 bits as a float32 mantissa in [1, 2), minus 1, scaled;
- ``normal``: sqrt(2) erfinv(u), u uniform on (nextafter(-1, 0), 1), in float32 with
  XLA's single-precision erfinv (Giles 2010).

The bits are exact (uint32 arithmetic). The normals follow XLA's float32 formula in
IEEE float32; a JAX run whose compiler contracted or reordered that arithmetic may
differ in the last place of a few values. ``tests/test_threefry.py`` checks the bits
against the Random123 known-answer vectors and the draws against values of
``jax.random``.
"""

from __future__ import annotations

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(key: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32, 20 rounds: key (2,) uint32, counters x0, x1 (same shape) -> two uint32 arrays."""
    k0, k1 = (np.uint32(v) for v in np.asarray(key, dtype=np.uint32).reshape(2))
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = np.asarray(x0, dtype=np.uint32).copy()
    x1 = np.asarray(x1, dtype=np.uint32).copy()
    with np.errstate(over="ignore"):
        x0 += ks[0]
        x1 += ks[1]
        for block in range(5):
            for r in _ROTATIONS[block % 2]:
                x0 += x1
                x1 = _rotl(x1, r)
                x1 ^= x0
            x0 += ks[(block + 1) % 3]
            x1 += ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def prng_key(seed: int) -> np.ndarray:
    """``jax.random.PRNGKey(seed)`` for a non-negative 64-bit seed: (2,) uint32."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed {seed} is not a non-negative 64-bit integer")
    return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)


def random_bits(key: np.ndarray, count: int) -> np.ndarray:
    """``count`` uint32 from one key (``jax.random.bits`` of a 1D shape, flattened order)."""
    counts = np.arange(count, dtype=np.uint32)
    if count % 2:
        counts = np.concatenate([counts, np.zeros(1, dtype=np.uint32)])
    half = len(counts) // 2
    y0, y1 = threefry2x32(key, counts[:half], counts[half:])
    return np.concatenate([y0, y1])[:count]


def split(key: np.ndarray, num: int = 2) -> np.ndarray:
    """``jax.random.split(key, num)``: (num, 2) uint32."""
    return random_bits(key, 2 * num).reshape(num, 2)


def uniform(key: np.ndarray, shape: tuple[int, ...], minval: float = 0.0, maxval: float = 1.0) -> np.ndarray:
    """``jax.random.uniform`` in float32."""
    size = int(np.prod(shape, dtype=np.int64))
    bits = random_bits(key, size)
    one = np.array(1.0, dtype=np.float32).view(np.uint32)
    floats = ((bits >> np.uint32(32 - 23)) | one).view(np.float32) - np.float32(1.0)
    lo, hi = np.float32(minval), np.float32(maxval)
    return np.maximum(lo, floats * (hi - lo) + lo).reshape(shape)


# XLA's single-precision erfinv (M. Giles, "Approximating the erfinv function", 2010)
_ERFINV_SMALL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                 -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_LARGE = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                 -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def erfinv32(x: np.ndarray) -> np.ndarray:
    """The inverse error function in float32, XLA's polynomial (|x| < 1).

    Each step is rounded to float32 once, as a compiler that fuses the polynomial's
    multiply-adds does: 99% of jax.random.normal's values come out bit-equal on a CPU,
    the others within 2 units in the last place."""
    x = np.asarray(x, dtype=np.float32)
    w = (-np.log1p(-(x * x).astype(np.float64))).astype(np.float32)
    small = w < np.float32(5.0)
    w = np.where(small, w - np.float32(2.5), np.sqrt(w) - np.float32(3.0)).astype(np.float32)
    p = np.where(small, _ERFINV_SMALL[0], _ERFINV_LARGE[0]).astype(np.float32)
    w64 = w.astype(np.float64)
    for a, b in zip(_ERFINV_SMALL[1:], _ERFINV_LARGE[1:], strict=True):
        coef = np.where(small, np.float32(a), np.float32(b)).astype(np.float64)
        p = (coef + p.astype(np.float64) * w64).astype(np.float32)  # a fused multiply-add
    return (p * x).astype(np.float32)


def normal(key: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``jax.random.normal`` in float32."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = uniform(key, shape, float(lo), 1.0)
    return (np.float32(np.sqrt(2.0)) * erfinv32(u)).astype(np.float32)


__all__ = ["threefry2x32", "prng_key", "random_bits", "split", "uniform", "normal", "erfinv32"]
