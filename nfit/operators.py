"""Measurement operators of the inverse problems: parallel-beam CT and Cartesian MRI.

    proj = RotationProjector((512, 512), paper_angles(20), method="paper")
    sino = proj(images)             # images (K, 512*512) -> (K, 20, 512)
    back = proj.adjoint(sino)       # (K, 20, 512) -> (K, 512*512)

    mri = KSpaceOperator(mask)      # mask (a, b, c) bool, numpy.fft layout (DC at index 0)
    y = mri(volumes)                # (K, a, b, c) -> (K, M) complex, the M sampled entries
    x = mri.adjoint(y)              # (K, M) -> (K, a, b, c) complex

Both are linear, exact and differentiable in torch (autograd through the forward; the
adjoints are explicit and pass the dot-product test, ``tests/test_ct_mri.py``).

CT geometry: the image (H = W = N) is rotated about pixel (N / 2, N / 2) and the
projection at angle t is the rotated image reduced over its rows, one bin per column,
points outside the image counting 0.

- ``paper`` (Tancik et al. 2020, ``Experiments/2d_CT``, ``ct_project``), line for line:
  in float32, pixel (row i, column j) at x = j / N - 0.5, y = i / N - 0.5 reads the source
  at column (x cos t - y sin t + 0.5) N and row (x sin t + y cos t + 0.5) N, rounded half
  away from zero (``map_coordinates`` of order 0), outside the image 0; the projection is
  the **mean** over rows. The bins are line integrals through a domain of unit width. Its
  angles turn the other way from skimage's: paper view t is skimage's view -t.
- ``standard``: the convention of ``skimage.transform.radon`` about pixel (N // 2,
  N // 2): rotated pixel (x, y) reads the source at x_s = c + cos t (x - c) + sin t
  (y - c), y_s = c - sin t (x - c) + cos t (y - c), bilinear, and the **sum** over rows,
  i.e. line integrals in pixel units: it matches ``skimage.transform.radon(image,
  theta_degrees, circle=True)`` (within 1e-4 of the largest bin on images zero outside
  the inscribed circle).

A non-square image (H x W) is first zero-padded to the square a detector must span
(``detector_square``: side ceil(sqrt(2) max(H, W)), placed as ``radon(circle=False)``
places it), so no view cuts the object.

Each is a sparse matrix (V N, N^2) built once (scipy, duplicates summed), applied with
torch's CSR product; the libraries that offer parallel-beam operators (deepinv's
``Tomography`` resamples with ``grid_sample`` per call, diffct targets CUDA kernels) do
not give the paper's nearest-neighbour rotate-and-mean operator, which is the one the
paper's numbers need, so both are written here in one form.

MRI: the unnormalised 3D DFT (``numpy.fft.fftn``) of the volume, restricted to the mask's
entries; its adjoint is N ifftn of the zero-filled k-space (N voxels).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import torch

from nfit.errors import UsageError

PROJECTORS = ("paper", "standard")


def paper_angles(views: int) -> np.ndarray:
    """The paper's angles in degrees: ``linspace(0, 180, views + 1)[:-1]``."""
    return np.linspace(0.0, 180.0, views + 1)[:-1]


def parse_angles(text: str) -> np.ndarray:
    """'0:180:20' (N angles from START, END excluded) or '0,9,18' -> degrees (float64)."""
    whole = text.strip()
    if ":" in whole:
        match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*:\s*([-+0-9.eE]+)\s*:\s*(\d+)\s*", whole)
        if not match:
            raise UsageError(f"bad --angles {text!r}: expected START:END:N (END excluded) or a list 0,9,18")
        start, end, n = float(match[1]), float(match[2]), int(match[3])
        if n < 1 or not end > start:
            raise UsageError(f"bad --angles {text!r}: need N >= 1 and END > START")
        return np.linspace(start, end, n + 1)[:-1]
    try:
        values = np.array([float(p) for p in whole.split(",")])
    except ValueError:
        raise UsageError(f"bad --angles {text!r}: expected START:END:N or numbers separated by commas") from None
    if not np.isfinite(values).all():
        raise UsageError(f"bad --angles {text!r}: angles must be finite")
    return values


def paper_thetas(views: int) -> np.ndarray:
    """The notebook's angles in radians, as ``jnp.linspace(0, pi, views + 1)[:-1]`` makes
    them in float32 (step pi / views times the index): (views,) float32."""
    step = np.float32(np.pi) / np.float32(views)
    return (step * np.arange(views, dtype=np.float32)).astype(np.float32)


def detector_square(height: int, width: int) -> tuple[int, int, int]:
    """The square a parallel-beam detector must span for an H x W image, as
    ``skimage.transform.radon(circle=False)`` pads it: (side, top, left) where the image
    sits at rows top .. top + H and columns left .. left + W of the side x side square."""
    side = int(math.ceil(math.sqrt(2.0) * max(height, width)))
    top = (height + side - height) // 2 - height // 2
    left = (width + side - width) // 2 - width // 2
    return side, top, left


def _rotation_sources(n: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (x_s, y_s), each (N*N,) in row-major output order, of one rotation
    in skimage's convention (the ``standard`` projector)."""
    c = n // 2
    t = math.radians(angle_deg)
    cos_t, sin_t = math.cos(t), math.sin(t)
    y, x = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
    xs = c + cos_t * (x - c) + sin_t * (y - c)
    ys = c - sin_t * (x - c) + cos_t * (y - c)
    return xs.ravel(), ys.ravel()


def _round_half_away(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)  # exact for float32 values: v + 0.5 cannot round up
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def _paper_sources(n: int, theta: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's ``ct_project`` sample points (column, row) as integers, (N*N,) each,
    in float32 as it computes them (each multiply-add rounded once, as XLA fuses it)."""
    f32 = np.float32
    axis = np.arange(n, dtype=f32) / f32(n) - f32(0.5)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    cos_t, sin_t = np.cos(f32(theta)), np.sin(f32(theta))
    x_rot = (x.astype(np.float64) * cos_t - (y * sin_t).astype(np.float64)).astype(f32)
    y_rot = (x.astype(np.float64) * sin_t + (y * cos_t).astype(np.float64)).astype(f32)
    cols = ((x_rot + f32(0.5)) * f32(n)).astype(f32)
    rows = ((y_rot + f32(0.5)) * f32(n)).astype(f32)
    return _round_half_away(cols.ravel()), _round_half_away(rows.ravel())


def projection_matrix(n: int, angles_deg: np.ndarray, method: str, thetas: np.ndarray | None = None) -> Any:
    """The projector as a scipy CSR matrix (V N, N^2): row v N + j is bin j at angle v.

    thetas: the ``paper`` projector's angles in float32 radians when they must be the
    notebook's to the last bit (``paper_thetas``); by default float32(radians(angles_deg))."""
    import scipy.sparse as sp

    if method not in PROJECTORS:
        raise UsageError(f"unknown --projector {method!r}; choose {' or '.join(PROJECTORS)}")
    if method == "paper" and thetas is None:
        thetas = np.radians(np.asarray(angles_deg, dtype=np.float64)).astype(np.float32)
    bins = np.tile(np.arange(n), n)  # output column of each row-major output pixel
    blocks = []
    for v, angle in enumerate(angles_deg):
        if method == "paper":
            ix, iy = _paper_sources(n, thetas[v])  # type: ignore[index]
            ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
            rows, cols = bins[ok], iy[ok] * n + ix[ok]
            vals = np.full(len(rows), 1.0 / n)
        else:
            xs, ys = _rotation_sources(n, float(angle))
            x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
            fx, fy = xs - x0, ys - y0
            parts = []
            for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                              (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
                ix, iy = x0 + dx, y0 + dy
                ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n) & (w > 0)
                parts.append((bins[ok], iy[ok] * n + ix[ok], w[ok]))
            rows, cols, vals = (np.concatenate([p[i] for p in parts]) for i in range(3))
        blocks.append(sp.csr_matrix((vals, (rows, cols)), shape=(n, n * n)))  # duplicates summed
    return sp.vstack(blocks, format="csr")


def _torch_csr(matrix: Any) -> torch.Tensor:
    matrix = matrix.tocsr()
    matrix.sort_indices()
    with warnings.catch_warnings():  # "CSR support is in beta": the product used here is long stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data.astype(np.float32)),
                                       size=matrix.shape, check_invariants=False)


class _SparseApply(torch.autograd.Function):
    """y = A x for a fixed sparse A, with the gradient A^T g (A^T held as its own CSR)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return torch.sparse.mm(ctx.a_t, grad.contiguous()), None, None


class RotationProjector:
    """Parallel-beam projections of (K, N*N) row-major images at ``angles_deg``: (K, V, N)."""

    def __init__(self, n: int, angles_deg: np.ndarray, method: str = "standard",
                 thetas: np.ndarray | None = None) -> None:
        self.n, self.method = int(n), method
        self.angles = np.asarray(angles_deg, dtype=np.float64)
        matrix = projection_matrix(self.n, self.angles, method, thetas)
        self.a = _torch_csr(matrix)
        self.a_t = _torch_csr(matrix.T)

    @property
    def views(self) -> int:
        return len(self.angles)

    def to(self, device: torch.device) -> RotationProjector:
        if self.a.device != device:
            self.a, self.a_t = self.a.to(device), self.a_t.to(device)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        k = images.shape[0]
        self.to(images.device)
        out = _SparseApply.apply(images.float().reshape(k, -1).T.contiguous(), self.a, self.a_t)
        return out.T.reshape(k, self.views, self.n)

    def adjoint(self, sinograms: torch.Tensor) -> torch.Tensor:
        k = sinograms.shape[0]
        self.to(sinograms.device)
        return torch.sparse.mm(self.a_t, sinograms.float().reshape(k, -1).T.contiguous()).T


def fbp(sinogram: np.ndarray, angles_deg: np.ndarray, method: str) -> np.ndarray:
    """Filtered back-projection (ramp filter, ``skimage.transform.iradon``) of (V, N)
    projections of either projector; returns (N, N) in the image's units."""
    from skimage.transform import iradon

    sums = sinogram * sinogram.shape[1] if method == "paper" else sinogram  # mean -> sum over rows
    theta = -np.asarray(angles_deg, dtype=np.float64) if method == "paper" else np.asarray(angles_deg)
    return iradon(np.ascontiguousarray(sums.T, dtype=np.float64), theta=theta,
                  filter_name="ramp", circle=True, output_size=sinogram.shape[1])


class KSpaceOperator:
    """The masked unnormalised 3D DFT: (K, a, b, c) -> (K, M) complex at the M sampled entries.

    mask: (a, b, c) bool in ``numpy.fft.fftn`` layout (DC at index (0, 0, 0)).
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.shape = tuple(int(s) for s in mask.shape)
        self.index = torch.from_numpy(np.flatnonzero(mask.ravel())).long()

    def __len__(self) -> int:
        return len(self.index)

    def __call__(self, volumes: torch.Tensor) -> torch.Tensor:
        k = volumes.shape[0]
        spectrum = torch.fft.fftn(volumes.reshape(k, *self.shape), dim=(1, 2, 3))
        return spectrum.reshape(k, -1)[:, self.index.to(volumes.device)]

    def adjoint(self, samples: torch.Tensor) -> torch.Tensor:
        k = samples.shape[0]
        full = torch.zeros(k, math.prod(self.shape), dtype=torch.complex64, device=samples.device)
        full[:, self.index.to(samples.device)] = samples.to(torch.complex64)
        # the adjoint of the unnormalised DFT is N times the inverse DFT
        return torch.fft.ifftn(full.reshape(k, *self.shape), dim=(1, 2, 3), norm="forward")


#: the notebook's k-space draws (``nsamp``) and key (``PRNGKey(10)``)
PAPER_MASK_DRAWS = 200_000
PAPER_KEY = 10


def _mask_of_points(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    """Set the mask at integer points (P, d) as the notebook's ``index_update`` does: a
    negative index counts from the end (numpy's rule), one past the end is dropped."""
    dims = np.asarray(shape)
    keep = ((points >= -dims) & (points < dims)).all(axis=1)
    kept = np.where(points[keep] < 0, points[keep] + dims, points[keep])
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(kept.T)] = True
    return mask


def paper_mri_mask(shape: tuple[int, ...], draws: int = PAPER_MASK_DRAWS, key: int = PAPER_KEY) -> np.ndarray:
    """The paper's k-space mask itself (``Experiments/3d_MRI``, ``mri_mask``), in fftn layout.

    ``random.multivariate_normal(PRNGKey(10), shape // 2, 2 shape[0] I, (1, 200000))``
    through ``nfit.threefry`` (JAX's generator: the same uint32 bits, the same float32
    normals up to the last place), truncated toward zero (``astype(int32)``), duplicates
    collapsing, then ``fftshift``ed so the centre lands on DC. At 96^3 this is JAX's
    mask bit for bit: 111,130 entries, 12.56% of k-space.
    """
    from nfit.threefry import normal, prng_key

    dims = np.asarray(shape)
    std = np.float32(np.sqrt(np.float32(2 * shape[0])))  # the Cholesky factor of 2 shape[0] I
    z = normal(prng_key(key), (draws, len(shape)))
    points = ((dims // 2).astype(np.float32) + std * z).astype(np.int32).astype(np.int64)
    return np.fft.fftshift(_mask_of_points(shape, points))


def variable_density_mask(shape: tuple[int, ...], fraction: float, seed: int,
                          chunk: int = 20_000) -> tuple[np.ndarray, int]:
    """The paper's kind of k-space mask, grown to cover ``fraction`` of the entries.

    Points are drawn from a Gaussian centred on ``shape // 2`` with covariance
    2 * 96 * I at 96^3 (the paper's), scaled with the grid so the mask keeps its shape
    relative to k-space: variance 2 * 96 * (n_i / 96)^2 = n_i^2 / 48 on axis i (the
    notebook's 2 n_0 on a small grid would spread the draws past DC), truncated toward
    zero as the notebook's ``astype(int32)`` does (a negative index counts from the end,
    one past the end is dropped), duplicates collapsing; draws go on until the mask
    covers ``fraction``, then the mask is shifted so the centre lands on the DC corner.
    ``paper_mri_mask`` is the paper's own draw. Returns (mask bool in fftn layout, points
    drawn).
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(int(seed))
    dims = np.asarray(shape)
    centred = np.zeros(shape, dtype=bool)
    target = int(math.ceil(fraction * centred.size))
    covered, drawn = 0, 0
    while covered < target:
        points = np.trunc(rng.normal(dims // 2, dims / np.sqrt(48.0), size=(chunk, len(shape)))).astype(np.int64)
        inside = points[((points >= -dims) & (points < dims)).all(axis=1)]
        inside = np.where(inside < 0, inside + dims, inside)
        flat = np.asarray(np.ravel_multi_index(tuple(inside.T), shape), dtype=np.int64)
        # add one point at a time in draw order, stopping at the point that reaches the target
        fresh, first = np.unique(flat, return_index=True)
        new = ~centred.ravel()[fresh]
        order = np.sort(first[new])
        need = target - covered
        take = order[:need]
        centred.ravel()[flat[take]] = True
        covered += len(take)
        drawn += int(take[-1]) + 1 if covered >= target else len(inside)
    return np.fft.ifftshift(centred), drawn  # the notebook's fftshift, the same on even sides
