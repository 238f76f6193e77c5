"""The numpy port of JAX's generator (nfit.threefry) and the paper's draws made with it:
the CT test phantoms and the MRI mask.

Reference values: the Threefry-2x32-20 known-answer vectors of Random123 (``kat_vectors``,
also ``testThreefry2x32`` in JAX's ``tests/random_test.py``); ``jax.random`` outputs
quoted in JAX's documentation (the split and normal draws of ``PRNGKey(0)`` in "Common
Gotchas" and the quickstart); and values printed by ``jax.random`` (JAX 0.10.2 with
``jax_threefry_partitionable`` off, the layout JAX used in 2020) for ``PRNGKey(10)``,
the notebooks' key. No test needs JAX.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nfit.threefry import normal, prng_key, random_bits, split, threefry2x32, uniform


@pytest.mark.parametrize(("key", "count", "expected"), [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_threefry2x32_known_answers(key, count, expected) -> None:
    y0, y1 = threefry2x32(np.array(key, dtype=np.uint32), np.array([count[0]], dtype=np.uint32),
                          np.array([count[1]], dtype=np.uint32))
    assert (int(y0[0]), int(y1[0])) == expected


def test_keys_and_draws_documented_by_jax() -> None:
    key = prng_key(0)
    assert key.tolist() == [0, 0]
    new, sub = split(key)
    assert new.tolist() == [4146024105, 967050713]
    assert sub.tolist() == [2718843009, 1272950319]
    assert normal(sub, (1,))[0] == np.float32(-1.2515389)
    assert normal(key, (1,))[0] == np.float32(-0.20584226)
    quick = np.array([-0.3721109, 0.26423115, -0.18252768, -0.7368197, -0.44030377, -0.1521442,
                      -0.67135346, -0.5908641, 0.73168886, 0.5673026], dtype=np.float32)
    assert np.array_equal(normal(key, (10,)), quick)
    assert uniform(key, ()) == np.float32(0.41845703)


def test_the_notebooks_key_against_jax() -> None:
    key = prng_key(10)
    assert key.tolist() == [0, 10]
    assert split(key).tolist() == [[3912842007, 31661381], [1231749211, 3783122137]]
    assert random_bits(key, 7).tolist() == [1687824982, 1230739865, 2219920422, 3529846565, 7676928,
                                            342155782, 1830312102]
    assert np.array_equal(normal(key, (3,)), np.array([1.3471218, -1.0199504, -0.5627899], dtype=np.float32))
    # the gauss B of both notebooks: random.normal(PRNGKey(10), (256, d)); a few of the
    # float32 normals may differ in the last places from XLA's erfinv
    b = normal(key, (256, 2))
    assert np.allclose(b[:2], [[-0.54172397, -1.0479056], [0.78314054, 0.5275838]], rtol=0, atol=3e-7)
    assert np.allclose(b[-1], [-0.94265664, -0.8067664], rtol=0, atol=3e-7)
    z = normal(key, (600_000,))
    assert np.allclose(z[:4], [-0.8958635, 0.51642674, -0.8511714, -0.7275802], rtol=0, atol=3e-7)
    assert np.allclose(z[-2:], [-0.34938094, -0.8304652], rtol=0, atol=3e-7)
    assert abs(float(z.mean())) < 5e-3 and abs(float(z.std()) - 1) < 5e-3


def test_the_papers_ct_phantoms_bit_for_bit() -> None:
    from nfit.phantoms import paper_ellipses, paper_shepp_logan

    ellipses = paper_ellipses()
    assert ellipses.shape == (8, 10, 6) and ellipses.dtype == np.float32
    # JAX's values; 3 of the 480 differ from JAX's in the last place (erfinv), moving no pixel
    assert np.allclose(ellipses[0, 0], [1.0738436, 0.7579451, 0.91505486, -0.04773397, -0.00415466, 0.00798689],
                       rtol=0, atol=1.2e-7)
    assert np.allclose(ellipses[7, 9], [0.06652571, -0.02380395, 0.12003656, 0.03235638, -0.70340115, 0.02598366],
                       rtol=0, atol=1.2e-7)
    images = paper_shepp_logan(64)
    assert images.shape == (8, 64, 64) and images.dtype == np.float32
    # sha256 of the 8 float32 images JAX 0.10.2 and phantominator 0.7 make with the notebook's code
    digest = hashlib.sha256(images.astype("<f4").tobytes()).hexdigest()
    assert digest == "6e09491fd56fa3f1f4bdb0209f4a0e584fc7c910c2ad32395955abe655f7f90c"


def test_the_papers_mri_mask_bit_for_bit() -> None:
    from nfit.operators import paper_mri_mask

    mask = paper_mri_mask((96, 96, 96))
    assert mask.sum() == 111_130 and abs(mask.mean() - 0.1256) < 1e-4
    assert mask[0, 0, 0]  # DC sampled
    centred = np.fft.fftshift(mask)  # back to the notebook's mri_mask, before its fftshift
    digest = hashlib.sha256(np.packbits(centred).tobytes()).hexdigest()
    assert digest == "9ce2edd7ed0b08e54f9387e5d3c3214c664259a11f2db667e9ace173f3d20448"
