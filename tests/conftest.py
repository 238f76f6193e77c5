"""Shared fixtures: the real test signals beside the project, and tiny synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests share two cores with everything else; one thread keeps them predictable.
torch.set_num_threads(int(os.environ.get("NFIT_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data (Kodak images, meshes, an MRI volume) that ships beside the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kodak_path() -> Path:
    """A bundled Kodak photograph (samples/ ships one)."""
    return SAMPLES / "kodim23.png"


@pytest.fixture
def tiny_rgb(tmp_path: Path) -> Path:
    """A 32x32 smooth RGB PNG that a small field fits well in a few hundred steps."""
    import imageio.v3 as iio

    y, x = np.mgrid[0:32, 0:32] / 32.0
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(2 * np.pi * y),
                    0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
    path = tmp_path / "tiny.png"
    iio.imwrite(path, (img * 255).round().astype(np.uint8))
    return path
