"""Grid encodings: multi-resolution hash grid, dense multi-resolution grid, MulFAGrid.

A grid encoding maps a point to learned feature vectors stored at the vertices of L
regular grids of growing resolution, blended by an interpolation kernel; a small MLP
reads the concatenated (N, L*F) features. All three are plain ``nn.Module`` encodings
of the registry in ``nfit.encodings`` (``trainable = True``), generic in d (2D images,
3D volumes and SDFs), pure PyTorch and vectorised over points, levels and corners.

Multi-resolution hash encoding (Müller et al. 2022, "Instant Neural Graphics Primitives")
-----------------------------------------------------------------------------------------
Coordinates v in [lo, hi]^d (``bounds``; [0, 1] for grid signals) are normalised to
x in [0, 1]^d. Level l = 0..L-1 has resolution

    N_l = floor(N_min * b^l),   b = exp((ln N_max - ln N_min) / (L - 1)),

vertices 0..N_l per axis, and a table of T_l = min(T, (N_l + 1)^d) feature vectors of
size F (T = 2^log2_table). A point's cell at level l has corners c in Z^d with
floor(x N_l) <= c <= floor(x N_l) + 1; each corner's table index is

    dense  (when (N_l + 1)^d <= T):  sum_i c_i * (N_l + 1)^i           (one-to-one)
    hashed (otherwise):              (XOR_i c_i * pi_i) mod T,  pi = (1, 2654435761, 805459861)

and the level's feature is the d-linear interpolation
``sum_c prod_i (1 - |x_i N_l - c_i|) * table_l[index(c)]``. Tables start U(-1e-4, 1e-4).
The hash uses int64 products; its low log2(T) bits equal the paper's uint32 wrap-around.

Memory and speed: without gradients with respect to the coordinates, a custom autograd
function evaluates points in chunks of ``CHUNK`` and recomputes indices and weights in
the backward pass, so memory is bounded by the table and one chunk, not by N; its
backward is one ``index_add_`` into the table gradient. When the coordinates require
gradients (eikonal or normal losses), the plain autograd path runs instead, which is
differentiable in x to any order.

Dense multi-resolution grid (``densegrid``)
-------------------------------------------
The same levels with every table dense ((N_l + 1)^d entries, no hashing, no collisions):
the baseline grid model. Refused with a clear error above ``MAX_DENSE_ENTRIES`` vertices.

MulFAGrid (Zhao et al. 2024, "Grounding and Enhancing Grid-based Models for Neural Fields")
-------------------------------------------------------------------------------------------
The paper writes a grid-based model as features w_i at the vertices i in U(x) near x,
blended by a kernel, f(x) = sum_{i in U(x)} phi(x, i) w_i, and shows its training is
governed by the grid tangent kernel (GTK) K(x, x') = sum_i phi(x, i) phi(x', i). A plain
d-linear grid has a fixed phi, so its GTK is constant in training (Theorem 2). MulFAGrid
("Multiplicative Fourier Adaptive Grid") makes phi learned: a multiplicative filter
network (Fathony et al. 2021) fed with Fourier features. We implement, per level l and
per corner c of x's cell, with r = x N_l - c in [-1, 1]^d the offset of x from that
vertex in cell units:

    z_0 = gamma(r) = [sin(2^k pi r), cos(2^k pi r)]_{k=0..K-1}              (2 d K,)
    z_j = (A_j z_{j-1} + a_j) * sin(Omega_j r + psi_j),   j = 1..J           (H,)
    phi_l(x, c) = prod_i (1 - |r_i|) * (1 + B z_J + beta)                     (scalar)
    feature_l(x) = sum_c phi_l(x, c) table_l[index(c)]

Choices where the text leaves room, and why:
- The kernel reads the offset r from the vertex, not the vertex's absolute index: the
  same r seen from either side of a cell face gives the same weight, so the field stays
  continuous across cells, and the kernel is the same whether a level is dense or hashed.
- The learned factor multiplies the d-linear weight instead of replacing it: phi keeps
  compact support on the cell (locality, the reason grids train fast) and vanishes at the
  other vertices. B and beta start at zero, so MulFAGrid starts exactly as the densegrid
  (a plain grid with constant GTK) and the kernel adapts during training.
- No normalisation over corners (dividing by sum_c phi can divide by values near zero).
- One scalar kernel per level (L small MFNs, stacked and evaluated with einsum);
  K = ``frequencies`` octaves, J = ``kernel_layers``, H = ``kernel_width``. Omega_j
  starts N(0, (pi)^2), the A_j start U(-1/sqrt(in), 1/sqrt(in)) (MFN's scaled init).
- Like the other grid encodings it is followed by the small MLP, and its levels are dense
  by default (the paper's grids are dense); ``log2_table`` still caps a level's table.
Evaluation (``MulFAGrid.fast_kernel``): the formula above, written per corner, costs an
MFN per corner per level. Because r = f - c with f the fractional position in the cell
and c in {0, 1}^d, the Fourier features of every corner are sign flips of gamma(f), and
each filter is sin(theta - Omega_j c) with theta = Omega_j f + psi_j, whose sine and
cosine are evaluated once per point (the angle-difference identity). So every layer is
one batched matmul over the levels on a (L, n, 2^d, H) tensor plus two hand-written
autograd functions (``_Modulate``, ``_Readout``) that make few passes over it. The
values are those of ``MulFAGrid.kernel`` (the per-corner reference, kept for tests) to
float rounding, gradients included; about 2-3x less time per training step on CPU.
Training on more than ``MULFA_CHUNK`` points recomputes chunks (activation
checkpointing) to bound memory.

The paper's own text could not be retrieved here; what is known of its equations comes
from second-hand sources (reading notes on the paper and an unofficial implementation
that cites its Eq. (7)): Eq. (6) feeds the filter network the Fourier features of the
point x, Eq. (7) evaluates each layer's filter at the grid vertex i rather than at x, and
Eq. (8) divides the kernel's values by their sum over the cell's active vertices. Both
readings are available, chosen by ``kernel_form`` (``--kernel-form``):

- ``offset`` (default), the form above. It differs from the published one in three
  places, for these reasons: its filters read the offset r = x N_l - c (so the kernel
  is the same function in every cell, whether a level is dense or hashed, and the same
  r seen from either side of a cell face gives the same weight: the field is continuous);
  its Fourier features gamma(r) equal gamma(x N_l) up to a sign per corner (the first
  octave's period is two cells); and it multiplies the d-linear weight instead of
  normalising (a normalised kernel gives the cell's far corners weight on its faces, so
  the field jumps between cells, and its denominator can pass through zero).
- ``paper``: Eqs. (6)-(8) as described. z_0 = gamma(x N_l) (per point), z_j = (A_j
  z_{j-1} + a_j) * sin(Omega_j v + psi_j) with v the corner's integer vertex coordinates
  (the unofficial code feeds a flattened vertex index instead, which makes neighbours
  along the slow axis a whole row apart), phi~ = B z_J + beta, and phi = phi~ / sum over
  the 2^d corners, with the sum held away from zero (``PAPER_EPS``). beta starts at 1
  and B small, so the weights start near the cell mean 1/2^d. This form is evaluated
  per corner (``paper_kernel``), without the fast path, so it is slower.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nfit.encodings import Encoding, register
from nfit.errors import UsageError

#: The spatial hash's primes (Müller et al. 2022, Sec. 3); the first is 1 for cache coherence.
PRIMES = (1, 2654435761, 805459861)
#: Points per chunk in the memory-bounded lookup.
CHUNK = 1 << 15
#: Points per checkpointed chunk of MulFAGrid. Training on this many points keeps about
#: five (L, n, 2^d, H) float32 tensors for the backward pass (about 0.7 GB at the
#: defaults in 2D, n = 2^16); larger point sets are recomputed chunk by chunk.
MULFA_CHUNK = 1 << 16
#: The ``paper`` MulFAGrid form's smallest |sum of the kernel over a cell's corners| (Eq. 8).
PAPER_EPS = 1e-3
#: Largest total number of vertices a dense grid may have (about 1 GiB at F = 4 in fp32).
MAX_DENSE_ENTRIES = 1 << 26

#: Instant-NGP's Adam (Müller et al. 2022, Sec. 4): lr 1e-2, betas (0.9, 0.99), eps 1e-15.
#: The paper also decays lr late and uses L2 1e-6 on the MLP only; nfit keeps a constant lr.
INSTANT_NGP_ADAM = {"betas": (0.9, 0.99), "eps": 1e-15}
#: the hash grid's finest resolution unless given (a signal with more samples along an axis raises it)
HASHGRID_FINEST = 512


def level_resolutions(levels: int, base_resolution: int, finest_resolution: int) -> list[int]:
    """N_l = floor(N_min * b^l) with b = exp((ln N_max - ln N_min)/(L-1)); b = 1 when L = 1."""
    if levels == 1:
        return [int(base_resolution)]
    growth = math.exp((math.log(finest_resolution) - math.log(base_resolution)) / (levels - 1))
    # The small epsilon keeps N_max itself from flooring to N_max - 1 through rounding.
    return [int(math.floor(base_resolution * growth**level + 1e-9)) for level in range(levels)]


def corner_offsets(dim: int) -> torch.Tensor:
    """(2^d, d) int64: the binary corners of the unit cell, bit i of row k along axis i."""
    k = torch.arange(2**dim)
    return torch.stack([(k >> i) & 1 for i in range(dim)], dim=-1)


def spatial_hash(corners: torch.Tensor, table_size: int) -> torch.Tensor:
    """(XOR_i c_i * pi_i) mod T for integer corners (..., d), d <= 3; T a power of two."""
    h = corners[..., 0] * PRIMES[0]
    for i in range(1, corners.shape[-1]):
        h = h ^ (corners[..., i] * PRIMES[i])
    return h & (table_size - 1)


class MultiResolutionGrid(Encoding):
    """Shared machinery of the grid encodings: levels, tables, indices and d-linear weights.

    coords: (N, d) in [lo, hi]^d  ->  (N, levels * features_per_level)
    """

    _res: torch.Tensor
    _res_int: torch.Tensor
    _offset: torch.Tensor
    _hash_size: torch.Tensor
    _strides: torch.Tensor
    _corners: torch.Tensor

    hashed: ClassVar[bool] = True

    def __init__(self, in_dim: int, levels: int = 16, features_per_level: int = 2,
                 log2_table: int = 19, base_resolution: int = 16, finest_resolution: int = HASHGRID_FINEST,
                 bounds: tuple[float, float] | list[float] = (0.0, 1.0)) -> None:
        super().__init__(in_dim)
        if in_dim > len(PRIMES):
            raise UsageError(f"grid encodings support 1 to {len(PRIMES)} input dimensions, got {in_dim}")
        if levels < 1 or features_per_level < 1:
            raise UsageError("--levels and --features-per-level must be at least 1 "
                             f"(got {levels}, {features_per_level})")
        if not 1 <= log2_table <= 30:
            raise UsageError(f"--log2-table must be between 1 and 30, got {log2_table}")
        if base_resolution < 1 or finest_resolution < base_resolution:
            raise UsageError("need 1 <= --base-resolution <= --finest-resolution "
                             f"(got {base_resolution}, {finest_resolution})")
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise UsageError(f"grid bounds must be finite with lo < hi, got {list(bounds)}")
        self.levels, self.features_per_level = int(levels), int(features_per_level)
        self.log2_table = int(log2_table)
        self.base_resolution, self.finest_resolution = int(base_resolution), int(finest_resolution)
        self.bounds = (lo, hi)
        self.resolutions = level_resolutions(self.levels, self.base_resolution, self.finest_resolution)
        table_size = 2**self.log2_table
        sizes, dense = [], []
        for res in self.resolutions:
            vertices = (res + 1) ** in_dim
            is_dense = (not self.hashed) or vertices <= table_size
            sizes.append(vertices if is_dense else table_size)
            dense.append(is_dense)
        if not self.hashed and sum(sizes) > MAX_DENSE_ENTRIES:
            raise UsageError(f"a dense grid of finest resolution {finest_resolution} in {in_dim}D has "
                             f"{sum(sizes):,} vertices (limit {MAX_DENSE_ENTRIES:,}); lower "
                             "--finest-resolution or use --encoding hashgrid")
        self.table_sizes = sizes
        self.out_dim = self.levels * self.features_per_level
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        # Buffers (not Python lists) so .to(device) moves them; derived from the spec, so
        # they are rebuilt identically on load and need not be stored.
        self.register_buffer("_res", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("_res_int", torch.tensor(self.resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("_offset", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        # Resolutions grow with the level, so the dense levels are a prefix.
        self.n_dense = sum(dense)
        self.register_buffer("_hash_size", torch.tensor(table_size, dtype=torch.int64), persistent=False)
        strides = torch.stack([(torch.tensor(self.resolutions) + 1) ** i for i in range(in_dim)], -1)
        self.register_buffer("_strides", strides.to(torch.int64), persistent=False)
        self.register_buffer("_corners", corner_offsets(in_dim), persistent=False)
        self.table = nn.Parameter(torch.empty(sum(sizes), self.features_per_level).uniform_(-1e-4, 1e-4))

    # ---- geometry -------------------------------------------------------------------
    def normalise(self, coords: torch.Tensor) -> torch.Tensor:
        """(N, d) in [lo, hi]^d -> (N, d) float32 in [0, 1]^d (points outside are clamped)."""
        lo, hi = self.bounds
        return ((coords.float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    def cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n, d) in [0, 1]^d -> its position in every level's grid units (n, L, d) and
        the integer origin of its cell (n, L, d) int64. x = 1 falls in the last cell."""
        pos = x[:, None, :] * self._res[None, :, None]
        return pos, torch.minimum(pos.floor().long(), (self._res_int - 1)[None, :, None])

    def cell_geometry(self, x: torch.Tensor, with_offsets: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Indices, d-linear weights and vertex offsets of every corner at every level.

        x: (n, d) in [0, 1]^d. Returns index (n, L, 2^d) int64 rows of ``table``, weight
        (n, L, 2^d), and (with ``with_offsets``) r (n, L, 2^d, d) = x N_l - c, the offset
        of x from each corner c. Corner k has bit i of k as its offset along axis i.

        Per-axis pieces (two values per axis: the lower and upper vertex) are combined
        across axes by broadcasting, so no (n, L, 2^d, d) integer tensor is formed.
        """
        pos, cell = self.cells(x)
        frac = pos - cell.to(pos.dtype)                                        # (n, L, d)
        two = torch.arange(2, device=x.device)
        weight: torch.Tensor | None = None
        index: torch.Tensor | None = None
        dense, hashed = self.n_dense, self.levels - self.n_dense
        indices: list[torch.Tensor] = []
        # Each level's table offset is added where the tensor is smallest: to the first
        # axis's two values at dense levels, after the mask at hashed ones.
        if dense:
            for i in range(self.in_dim):
                step = (cell[:, :dense, i, None] + two) * self._strides[None, :dense, i, None]
                if i == 0:
                    step = step + self._offset[None, :dense, None]
                index = step if index is None else (step[..., :, None] + index[..., None, :]).flatten(-2)
            assert index is not None
            indices.append(index)
        if hashed:
            index = None
            for i in range(self.in_dim):
                step = (cell[:, dense:, i, None] + two) * PRIMES[i]
                index = step if index is None else (step[..., :, None] ^ index[..., None, :]).flatten(-2)
            assert index is not None
            indices.append((index & (int(self._hash_size) - 1)) + self._offset[None, dense:, None])
        for i in range(self.in_dim):
            f = frac[:, :, i, None]
            step = torch.cat([1.0 - f, f], -1)                                 # (n, L, 2)
            weight = step if weight is None else (step[..., :, None] * weight[..., None, :]).flatten(-2)
        assert weight is not None
        full_index = (indices[0] if len(indices) == 1 else torch.cat(indices, 1))
        r = None
        if with_offsets:
            r = frac[:, :, None, :] - self._corners[None, None].to(frac.dtype)  # (n, L, C, d)
        return full_index, weight, r

    @torch.no_grad()
    def coverage(self, train: torch.Tensor, held_out: torch.Tensor, chunk: int = 1 << 16) -> list[float]:
        """Per level, the mean share of a held-out point's interpolation weight that falls
        on vertices some training point touches (with nonzero weight).

        The level's block of the grid tangent kernel between a held-out point and the
        training set is built from exactly those vertices, so a level at 0 is fitted to
        the training points but says nothing about the held-out ones. Coordinates in
        the grid's bounds, (n, d); returns L floats in [0, 1].
        """
        touched = torch.zeros(self.table.shape[0], dtype=torch.bool, device=self.table.device)
        for i in range(0, len(train), chunk):
            index, weight, _ = self.cell_geometry(self.normalise(train[i:i + chunk]))
            touched[index[weight > 1e-6]] = True
        share = torch.zeros(self.levels, dtype=torch.float64)
        for i in range(0, len(held_out), chunk):
            index, weight, _ = self.cell_geometry(self.normalise(held_out[i:i + chunk]))
            share += (weight * touched[index]).sum((0, 2)).double().cpu()
        return (share / max(len(held_out), 1)).tolist()

    def level_index(self, x: torch.Tensor) -> torch.Tensor:
        """(n, L, 2^d) int64 table rows of the corners of x's cell at every level."""
        return self.cell_geometry(x)[0]

    # ---- forward --------------------------------------------------------------------
    def blend(self, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """sum_c weight * table[index]: (n, L, C) -> (n, L * F)."""
        feats = self.table.index_select(0, index.reshape(-1)).view(*index.shape, -1)  # (n, L, C, F)
        return (feats * weight[..., None].to(feats.dtype)).sum(2).reshape(len(index), -1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = self.normalise(coords)
        if x.requires_grad or _functorch_active():
            # torch.func transforms (the tangent kernel's dense Jacobian) cannot see through
            # the custom autograd function; the plain path is the same function of the table
            index, weight, _ = self.cell_geometry(x)
            return self.blend(index, weight)
        return _GridLookup.apply(x, self.table, self)

    def optimizer_settings(self, cfg: Any) -> dict[str, Any]:
        """Adam overrides for the grid's parameters: Instant-NGP's betas/eps at lr = cfg.lr."""
        return {"lr": float(cfg.lr), **INSTANT_NGP_ADAM}

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "levels": self.levels,
                "features_per_level": self.features_per_level, "log2_table": self.log2_table,
                "base_resolution": self.base_resolution,
                "finest_resolution": self.finest_resolution, "bounds": list(self.bounds)}


def _functorch_active() -> bool:
    """Whether a torch.func transform (jacrev, vmap, ...) is running around this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


class _GridLookup(torch.autograd.Function):
    """Memory-bounded d-linear lookup: gradients for the table only, recomputed in chunks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, grid: MultiResolutionGrid) -> torch.Tensor:
        out = torch.empty(len(x), grid.out_dim, dtype=table.dtype, device=table.device)
        with torch.no_grad():
            for i in range(0, len(x), CHUNK):
                index, weight, _ = grid.cell_geometry(x[i:i + CHUNK])
                # Gather, weight and sum the corners in one fused kernel (about 4x faster
                # on CPU than index_select + product + sum); no gradient is needed here.
                n, levels, corners = index.shape
                out[i:i + CHUNK] = F.embedding_bag(
                    index.view(-1, corners), table, mode="sum",
                    per_sample_weights=weight.reshape(-1, corners).to(table.dtype)).view(n, -1)
        ctx.save_for_backward(x)
        ctx.grid, ctx.table_shape = grid, table.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        grid: MultiResolutionGrid = ctx.grid
        features = grid.features_per_level
        grad_table = torch.zeros(ctx.table_shape, dtype=torch.float32, device=grad_out.device)
        for i in range(0, len(x), CHUNK):
            index, weight, _ = grid.cell_geometry(x[i:i + CHUNK])
            g = grad_out[i:i + CHUNK].float().reshape(len(index), grid.levels, 1, features)
            grad_table.index_add_(0, index.reshape(-1), (g * weight[..., None]).reshape(-1, features))
        return None, grad_table.to(grid.table.dtype), None


@register("hashgrid")
class HashGrid(MultiResolutionGrid):
    """The hash grid; its facts (options read, the small MLP it implies) in ``nfit.catalog``."""


@register("densegrid")
class DenseGrid(MultiResolutionGrid):
    hashed = False

    def __init__(self, in_dim: int, levels: int = 8, features_per_level: int = 2,
                 base_resolution: int = 16, finest_resolution: int = 256,
                 bounds: tuple[float, float] | list[float] = (0.0, 1.0)) -> None:
        super().__init__(in_dim, levels=levels, features_per_level=features_per_level,
                         log2_table=30, base_resolution=base_resolution,
                         finest_resolution=finest_resolution, bounds=bounds)

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec.pop("log2_table")
        return spec


@register("mulfagrid")
class MulFAGrid(MultiResolutionGrid):
    #: ``offset`` (default) or ``paper``; see the module docstring.
    KERNEL_FORMS = ("offset", "paper")

    _octaves: torch.Tensor

    def __init__(self, in_dim: int, levels: int = 8, features_per_level: int = 2,
                 log2_table: int = 22, base_resolution: int = 16, finest_resolution: int = 256,
                 bounds: tuple[float, float] | list[float] = (0.0, 1.0), kernel_width: int = 16,
                 kernel_layers: int = 2, frequencies: int = 4, seed: int = 0,
                 kernel_form: str = "offset") -> None:
        super().__init__(in_dim, levels=levels, features_per_level=features_per_level,
                         log2_table=log2_table, base_resolution=base_resolution,
                         finest_resolution=finest_resolution, bounds=bounds)
        if kernel_width < 1 or kernel_layers < 1 or frequencies < 1:
            raise UsageError("--kernel-width, --kernel-layers and --frequencies must be at least 1")
        if kernel_form not in self.KERNEL_FORMS:
            raise UsageError(f"--kernel-form must be one of {', '.join(self.KERNEL_FORMS)}, got {kernel_form!r}")
        self.kernel_form = kernel_form
        self.kernel_width, self.kernel_layers = int(kernel_width), int(kernel_layers)
        self.frequencies, self.seed = int(frequencies), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        L, H = self.levels, self.kernel_width
        self.register_buffer("_octaves", (2.0 ** torch.arange(self.frequencies)) * math.pi,
                             persistent=False)
        dims = [2 * in_dim * self.frequencies] + [H] * self.kernel_layers
        self.A = nn.ParameterList()
        self.a = nn.ParameterList()
        self.omega = nn.ParameterList()
        self.psi = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.A.append(nn.Parameter((torch.rand(L, fan_out, fan_in, generator=gen) * 2 - 1) * bound))
            self.a.append(nn.Parameter((torch.rand(L, fan_out, generator=gen) * 2 - 1) * bound))
            self.omega.append(nn.Parameter(torch.randn(L, fan_out, in_dim, generator=gen) * math.pi))
            self.psi.append(nn.Parameter((torch.rand(L, fan_out, generator=gen) * 2 - 1) * math.pi))
        if kernel_form == "offset":
            # Zero output layer: the kernel starts as the plain d-linear one.
            self.B = nn.Parameter(torch.zeros(L, H))
            self.beta = nn.Parameter(torch.zeros(L))
        else:
            # Output bias 1 and a small readout: the normalised weights start near 1/2^d
            # (the cell's mean), far from a vanishing denominator.
            self.B = nn.Parameter((torch.rand(L, H, generator=gen) * 2 - 1) / (10 * math.sqrt(H)))
            self.beta = nn.Parameter(torch.ones(L))

    def kernel(self, r: torch.Tensor) -> torch.Tensor:
        """Learned factor 1 + B z_J + beta for offsets r: (n, L, C, d) -> (n, L, C).

        The reference evaluation, straight from the formula: one MFN per corner. The
        forward pass uses ``fast_kernel``, which computes the same values (tested).
        """
        angles = r[..., None] * self._octaves                                 # (n, L, C, d, K)
        z = torch.cat([torch.sin(angles), torch.cos(angles)], -1).flatten(-2)  # (n, L, C, 2dK)
        for A, a, omega, psi in zip(self.A, self.a, self.omega, self.psi, strict=True):
            filt = torch.sin(torch.einsum("nlcd,lhd->nlch", r, omega) + psi[None, :, None])
            z = (torch.einsum("nlci,lhi->nlch", z, A) + a[None, :, None]) * filt
        return 1.0 + torch.einsum("nlch,lh->nlc", z, self.B) + self.beta[None, :, None]

    def fast_kernel(self, frac: torch.Tensor) -> torch.Tensor:
        """``kernel`` for all 2^d corners of a cell at once: frac (n, L, d) -> (n, L, C).

        The corners' offsets are r = f - c with f = frac and c in {0, 1}^d, so the
        per-corner work that ``kernel`` repeats reduces to per-point work and constants:

        - Fourier features: sin/cos(2^k pi (f_i - c_i)) equal sin/cos(2^k pi f_i) for
          k >= 1 (a whole number of periods) and their negatives for k = 0 when c_i = 1.
          So gamma(r) = s_c * gamma(f) with a sign vector s_c, and the first layer is
          A_1 gamma(r) = (A_1 diag s_c) gamma(f): one matmul for all corners.
        - Filters: sin(Omega r + psi) = sin(theta - Omega c) with theta = Omega f + psi
          = sin(theta) cos(Omega c) - cos(theta) sin(Omega c): two sines per point
          instead of one per corner; Omega c (L, C, H) is a constant of the parameters.
        - Layout (L, n, C, H), contiguous, so every layer is one batched matmul over the
          levels (no permute copies) with its bias fused (baddbmm).
        """
        n, L, d = frac.shape
        C, H, K = 2**d, self.kernel_width, self.frequencies
        f = frac.transpose(0, 1)                                              # (L, n, d)
        angles = f[..., None] * self._octaves                                 # (L, n, d, K)
        g = torch.cat([torch.sin(angles), torch.cos(angles)], -1).flatten(-2)  # (L, n, 2dK)
        corners = self._corners.to(frac.dtype)                                # (C, d)
        # s_c: -1 on the k = 0 sine and cosine of each axis where c_i = 1, else +1.
        first = torch.zeros(2 * K, dtype=frac.dtype, device=frac.device)
        first[0] = first[K] = 1.0
        sign = 1.0 - 2.0 * (corners[:, :, None] * first).flatten(1)            # (C, 2dK)
        z: torch.Tensor | None = None
        for j, (A, a, omega, psi) in enumerate(zip(self.A, self.a, self.omega, self.psi, strict=True)):
            theta = torch.baddbmm(psi[:, None], f, omega.transpose(1, 2))      # (L, n, H)
            phase = torch.einsum("cd,lhd->lch", corners, omega)                # (L, C, H)
            if j == 0:
                weight = (A[:, None] * sign[None, :, None, :]).reshape(L, C * H, -1)
                bias = a.repeat(1, C)[:, None]                                  # (L, 1, C H)
                u = torch.baddbmm(bias, g, weight.transpose(1, 2)).view(L, n, C, H)
            else:
                assert z is not None
                u = torch.baddbmm(a[:, None], z.view(L, n * C, H), A.transpose(1, 2)).view(L, n, C, H)
            z = _Modulate.apply(u, theta, phase)
        assert z is not None
        out = _Readout.apply(z.view(L, n * C, H), self.B) + (1.0 + self.beta)[:, None]
        return out.view(L, n, C).transpose(0, 1)                               # (n, L, C)

    def paper_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised weights of the ``paper`` form: x (n, d) in [0, 1]^d -> (n, L, 2^d).

        Eq. (6): the first layer reads gamma(x N_l), the Fourier features of the point in
        the level's grid units (the same for every corner). Eq. (7): each layer's filter
        sin(Omega_j v + psi_j) is evaluated at the corner's vertex v (integer grid
        coordinates). Eq. (8): the kernel's values over the cell's corners are divided by
        their sum; a sum within ``PAPER_EPS`` of zero is held at +-PAPER_EPS.
        """
        pos, cell = self.cells(x)                                             # (n, L, d)
        vertex = (cell[:, :, None, :] + self._corners[None, None]).to(pos.dtype)  # (n, L, C, d)
        angles = pos[..., None] * self._octaves                                # (n, L, d, K)
        z = torch.cat([torch.sin(angles), torch.cos(angles)], -1).flatten(-2)   # (n, L, 2dK)
        for j, (A, a, omega, psi) in enumerate(zip(self.A, self.a, self.omega, self.psi, strict=True)):
            filt = torch.sin(torch.einsum("nlcd,lhd->nlch", vertex, omega) + psi[None, :, None])
            if j == 0:
                u = (torch.einsum("nli,lhi->nlh", z, A) + a[None])[:, :, None]  # (n, L, 1, H)
            else:
                u = torch.einsum("nlci,lhi->nlch", z, A) + a[None, :, None]
            z = u * filt                                                        # (n, L, C, H)
        raw = torch.einsum("nlch,lh->nlc", z, self.B) + self.beta[None, :, None]
        total = raw.sum(-1, keepdim=True)
        sign = torch.where(total < 0, -1.0, 1.0)
        return raw / torch.where(total.abs() < PAPER_EPS, sign * PAPER_EPS, total)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_form == "paper":
            index, _, _ = self.cell_geometry(x)
            return self.blend(index, self.paper_kernel(x))
        index, weight, r = self.cell_geometry(x, with_offsets=True)
        assert r is not None
        # Corner 0 sits at the cell's origin, so its offset is the fractional position.
        return self.blend(index, weight * self.fast_kernel(r[:, :, 0]))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = self.normalise(coords)
        if not torch.is_grad_enabled() or len(x) <= MULFA_CHUNK:
            return self._encode(x)
        # Recompute each chunk in the backward pass: memory per chunk, not per point set.
        return torch.cat([checkpoint(self._encode, x[i:i + MULFA_CHUNK], use_reentrant=False)
                          for i in range(0, len(x), MULFA_CHUNK)])

    def optimizer_settings(self, cfg: Any) -> dict[str, Any]:
        """The paper trains its grids with Adam; we use Instant-NGP's betas/eps at cfg.lr."""
        return {"lr": float(cfg.lr), **INSTANT_NGP_ADAM}

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "kernel_width": self.kernel_width,
                "kernel_layers": self.kernel_layers, "frequencies": self.frequencies,
                "seed": self.seed, "kernel_form": self.kernel_form}


class _Modulate(torch.autograd.Function):
    """z = u * sin(theta - phase) for every corner: the MFN's filter, fused by hand.

    u (L, n, C, H), theta (L, n, H), phase (L, C, H) -> z (L, n, C, H). The filter is
    sin(theta) cos(phase) - cos(theta) sin(phase), so only per-point and per-corner
    sines are evaluated; the backward pass uses d/dtheta sin(theta - phase) =
    cos(theta - phase) = cos(theta) cos(phase) + sin(theta) sin(phase), and
    d/dphase = -d/dtheta. Autograd through the broadcast products would make about
    twice as many passes over the (L, n, C, H) tensors, which bound the cost on CPU.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, theta: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        sin_t, cos_t = torch.sin(theta)[:, :, None], torch.cos(theta)[:, :, None]
        sin_p, cos_p = torch.sin(phase)[:, None], torch.cos(phase)[:, None]
        filt = sin_t * cos_p
        filt.addcmul_(cos_t, sin_p, value=-1.0)
        ctx.save_for_backward(u, filt, sin_t, cos_t, sin_p, cos_p)
        return u * filt

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, filt, sin_t, cos_t, sin_p, cos_p = ctx.saved_tensors
        grad_u = grad * filt if ctx.needs_input_grad[0] else None
        grad_theta = grad_phase = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g = grad * u
            slope = cos_t * cos_p
            slope.addcmul_(sin_t, sin_p)
            g.mul_(slope)                                                      # (L, n, C, H)
            if ctx.needs_input_grad[1]:
                grad_theta = g.sum(2)
            if ctx.needs_input_grad[2]:
                grad_phase = -g.sum(1)
        return grad_u, grad_theta, grad_phase


class _Readout(torch.autograd.Function):
    """Per-level dot product z B: z (L, m, H), B (L, H) -> (L, m).

    Autograd of ``bmm(z, B[..., None])`` forms the gradient of z as a batched matmul
    with an inner dimension of 1, which is slow on CPU; it is a broadcast product.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z, B)
        return torch.bmm(z, B[:, :, None])[..., 0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, B = ctx.saved_tensors
        grad_z = grad[:, :, None] * B[:, None, :] if ctx.needs_input_grad[0] else None
        grad_B = torch.bmm(grad[:, None, :], z)[:, 0] if ctx.needs_input_grad[1] else None
        return grad_z, grad_B
