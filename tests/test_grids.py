"""Grid encodings (hashgrid, densegrid, mulfagrid) and the SIREN network."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfit.api import fit_task, prepare_task, run
from nfit.checkpoint import load_checkpoint
from nfit.config import merge_config
from nfit.encodings import ENCODINGS, build_encoding
from nfit.errors import UsageError
from nfit.field import build_field
from nfit.grids import PRIMES, level_resolutions, spatial_hash
from nfit.networks import Siren
from nfit.signals import signal_kind
from nfit.spec import FitSpec
from nfit.stack import Members


def test_level_resolutions_follow_the_geometric_growth():
    res = level_resolutions(16, 16, 512)
    b = math.exp((math.log(512) - math.log(16)) / 15)
    assert res == [math.floor(16 * b**level + 1e-9) for level in range(16)]
    assert res[0] == 16 and res[-1] == 512


def test_spatial_hash_matches_the_formula():
    corners = torch.tensor([[3, 5, 7], [0, 0, 0], [1000, 2000, 3000]])
    table = 2**19
    for row, h in zip(corners.tolist(), spatial_hash(corners, table).tolist(), strict=True):
        expected = 0
        for c, p in zip(row, PRIMES, strict=True):
            expected ^= (c * p) % 2**32  # the paper's uint32 arithmetic
        assert h == expected % table


@pytest.mark.parametrize("dim", [2, 3])
def test_hash_indices_in_range_and_deterministic(dim):
    enc = build_encoding({"type": "hashgrid", "levels": 6, "log2_table": 10,
                          "finest_resolution": 256}, dim)
    x = torch.rand(2000, dim, generator=torch.Generator().manual_seed(1))
    index, weight, _ = enc.cell_geometry(x)
    assert index.shape == (2000, 6, 2**dim)
    again = build_encoding(enc.spec(), dim).cell_geometry(x)[0]
    assert torch.equal(index, again)
    for level, (start, size) in enumerate(zip(enc._offset.tolist(), enc.table_sizes, strict=True)):
        assert index[:, level].min() >= start and index[:, level].max() < start + size
    # hashed levels exist and use the whole table; d-linear weights sum to one
    assert enc.n_dense < 6
    assert torch.allclose(weight.sum(-1), torch.ones(2000, 6), atol=1e-5)


def test_interpolation_is_exact_at_vertices_and_linear_between():
    enc = build_encoding({"type": "densegrid", "levels": 1, "base_resolution": 8,
                          "finest_resolution": 8, "features_per_level": 3}, 2)
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    cx, cy = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    vertices = torch.stack([cx.reshape(-1), cy.reshape(-1)], -1)
    out = enc(vertices.float() / 8)
    assert torch.allclose(out, enc.table[vertices[:, 0] + 9 * vertices[:, 1]], atol=1e-6)
    a, b = torch.tensor([[2.0, 3.0]]) / 8, torch.tensor([[3.0, 3.0]]) / 8
    for t in (0.25, 0.5, 0.9):
        mid = enc(a + t * (b - a))
        assert torch.allclose(mid, (1 - t) * enc(a) + t * enc(b), atol=1e-6)


def test_dense_level_equals_dense_grid_lookup():
    enc = build_encoding({"type": "hashgrid", "levels": 2, "base_resolution": 16,
                          "finest_resolution": 24, "log2_table": 14}, 2)
    assert enc.n_dense == 2
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    x = torch.rand(500, 2, generator=torch.Generator().manual_seed(2))
    out = enc(x)
    for level, n in enumerate(enc.resolutions):
        start = enc._offset[level]
        image = enc.table[start:start + (n + 1) ** 2].T.reshape(1, -1, n + 1, n + 1)  # rows: y
        ref = F.grid_sample(image, (2 * x - 1)[None, None], align_corners=True)[0, :, 0].T
        assert torch.allclose(out[:, 2 * level:2 * level + 2], ref, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_gradient_reaches_exactly_the_touched_entries(dim):
    enc = build_encoding({"type": "hashgrid", "levels": 4, "log2_table": 8,
                          "finest_resolution": 64}, dim)
    x = torch.rand(7, dim, generator=torch.Generator().manual_seed(3))
    (enc(x) * torch.randn(7, enc.out_dim)).sum().backward()
    touched = set(enc.cell_geometry(x)[0].reshape(-1).tolist())
    nonzero = set(torch.nonzero(enc.table.grad.abs().sum(-1)).reshape(-1).tolist())
    assert nonzero == touched


def test_memory_bounded_path_matches_autograd_path():
    enc = build_encoding({"type": "hashgrid", "levels": 5, "log2_table": 9}, 3)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(4))
    w = torch.randn(300, enc.out_dim)
    (enc(x) * w).sum().backward()
    fast = enc.table.grad.clone()
    enc.table.grad = None
    xg = x.clone().requires_grad_(True)
    (enc(xg) * w).sum().backward()
    assert torch.allclose(enc.table.grad, fast, atol=1e-6)
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_mulfagrid_starts_as_the_dense_grid_and_its_kernel_learns():
    spec = {"levels": 3, "finest_resolution": 32}
    mulfa = build_encoding({"type": "mulfagrid", **spec}, 2)
    dense = build_encoding({"type": "densegrid", **spec}, 2)
    with torch.no_grad():
        dense.table.copy_(mulfa.table)
    x = torch.rand(200, 2)
    assert torch.allclose(mulfa(x), dense(x), atol=1e-7)
    mulfa(x).pow(2).sum().backward()
    assert mulfa.B.grad.abs().sum() > 0


@pytest.mark.parametrize("dim", [2, 3])
def test_mulfagrid_paper_form_normalises_over_the_cell_and_reads_the_vertices(dim):
    """Eq. (8): the weights of a cell's corners sum to one; Eq. (7): the filters depend on
    the vertex, so two points in one cell with the same Fourier features get the same
    weights, and moving the cell changes them."""
    torch.manual_seed(0)
    enc = build_encoding({"type": "mulfagrid", "levels": 2, "base_resolution": 4,
                          "finest_resolution": 8, "kernel_form": "paper"}, dim).double()
    with torch.no_grad():
        enc.B.normal_()
    x = torch.rand(300, dim, dtype=torch.float64)
    w = enc.paper_kernel(x)
    assert w.shape == (300, 2, 2**dim)
    assert torch.allclose(w.sum(-1), torch.ones(300, 2, dtype=torch.float64), atol=1e-9)
    # Level 0 has resolution 4 here: shifting x by two cells keeps gamma(x N) (its slowest
    # octave has a period of two cells) but moves the vertices, so the weights change.
    res = enc.resolutions[0]
    p = torch.full((1, dim), 0.3 / res, dtype=torch.float64)
    shifted = p + 2.0 / res
    assert not torch.allclose(enc.paper_kernel(p)[:, 0], enc.paper_kernel(shifted)[:, 0])
    enc.omega[0].data.zero_()
    enc.omega[1].data.zero_()  # no vertex dependence left: the same weights in both cells
    assert torch.allclose(enc.paper_kernel(p)[:, 0], enc.paper_kernel(shifted)[:, 0])
    with pytest.raises(UsageError, match="--kernel-form"):
        build_encoding({"type": "mulfagrid", "kernel_form": "exact"}, dim)


@pytest.mark.parametrize("dim", [2, 3])
def test_mulfagrid_fast_kernel_equals_the_per_corner_formula(dim, monkeypatch):
    """The factorised evaluation gives the per-corner MFN's values and gradients."""
    torch.manual_seed(3)
    enc = build_encoding({"type": "mulfagrid", "levels": 3, "finest_resolution": 24,
                          "kernel_layers": 3, "kernel_width": 8, "frequencies": 3}, dim).double()
    # The identity sin(pi (f - 1)) = -sin(pi f) is exact only for pi itself: recompute the
    # octaves in float64 (the float32 buffer rounds pi at 1e-7, float32's own precision).
    enc._octaves = (2.0 ** torch.arange(3, dtype=torch.float64)) * math.pi
    with torch.no_grad():  # a trained-looking kernel: the zero output layer would hide errors
        enc.B.normal_()
        enc.beta.normal_()
        enc.table.normal_()
    x = torch.rand(257, dim, dtype=torch.float64)
    index, weight, r = enc.cell_geometry(enc.normalise(x), with_offsets=True)
    r = r.double()
    assert r is not None
    probe = torch.randn(len(x), enc.levels, 2**dim, dtype=torch.float64)
    params = [p for p in enc.parameters() if p is not enc.table]
    ref = enc.kernel(r)
    fast = enc.fast_kernel(r[:, :, 0])
    assert torch.allclose(fast, ref, atol=1e-10)
    ref_grads = torch.autograd.grad((ref * probe).sum(), params)
    fast_grads = torch.autograd.grad((fast * probe).sum(), params)
    for a, b in zip(fast_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-9)
    # The whole encoding, chunked (checkpointed) or not, against the reference blend.
    w = torch.randn(len(x), enc.out_dim, dtype=torch.float64)
    expected = enc.blend(index, weight.double() * ref.detach())
    monkeypatch.setattr("nfit.grids.MULFA_CHUNK", 100)
    for _ in range(2):
        out = enc(x)
        assert torch.allclose(out, expected, atol=1e-10)
        enc.zero_grad()
        (out * w).sum().backward()
        table_grad = enc.table.grad.clone()
        expected_grad = torch.zeros_like(enc.table).index_add_(
            0, index.reshape(-1),
            ((weight.double() * ref.detach())[..., None] * w.view(len(x), enc.levels, 1, -1)
             ).reshape(-1, enc.features_per_level))
        assert torch.allclose(table_grad, expected_grad, atol=1e-10)
        monkeypatch.setattr("nfit.grids.MULFA_CHUNK", 1 << 16)


def test_bounds_map_the_domain_onto_the_grid():
    unit = build_encoding({"type": "hashgrid", "levels": 3}, 3)
    wide = build_encoding({"type": "hashgrid", "levels": 3, "bounds": [-1, 1]}, 3)
    with torch.no_grad():
        wide.table.copy_(unit.table)
    x = torch.rand(100, 3)
    assert torch.allclose(wide(2 * x - 1), unit(x), atol=1e-6)


def test_grid_parameter_errors_are_usage_errors():
    with pytest.raises(UsageError, match="finest-resolution"):
        build_encoding({"type": "densegrid", "finest_resolution": 4096}, 3)
    with pytest.raises(UsageError, match="log2-table"):
        build_encoding({"type": "hashgrid", "log2_table": 0}, 2)


def test_registry_defaults_and_options_reach_the_specs():
    cfg = merge_config({}, {"encoding": "hashgrid", "levels": 4, "log2_table": 12})
    assert (cfg.width, cfg.depth, cfg.lr) == (64, 3, 1e-2)
    assert cfg.encoding_spec()["levels"] == 4 and cfg.encoding_spec()["log2_table"] == 12
    assert merge_config({}, {"encoding": "hashgrid", "width": 128}).width == 128
    siren = merge_config({}, {"model": "siren", "omega0": 20.0})
    assert (siren.encoding, siren.lr) == ("none", 1e-4)
    assert siren.network_spec()["omega0"] == 20.0
    assert merge_config({}, {"model": "siren", "encoding": "gauss"}).encoding == "gauss"
    assert merge_config({}, {}).width == 256  # the MLP defaults are untouched
    for name in ("hashgrid", "densegrid", "mulfagrid"):
        assert ENCODINGS[name].trainable


def test_grid_parameters_get_the_paper_adam_settings():
    cfg = merge_config({}, {"encoding": "hashgrid", "levels": 2, "log2_table": 8})
    fld = build_field({"in_dim": 2, "out_dim": 3, "encoding": cfg.encoding_spec(),
                       "network": cfg.network_spec()})
    members = Members([fld])
    groups = torch.optim.Adam(members.param_groups(cfg), lr=cfg.lr).param_groups
    grid = next(g for g in groups if any(p is members.encoder.table for p in g["params"]))
    assert grid["betas"] == (0.9, 0.99) and grid["eps"] == 1e-15 and grid["lr"] == 1e-2
    rest = [g for g in groups if g is not grid]
    assert len(rest) == 1 and rest[0]["betas"] == (0.9, 0.999)  # the MLP keeps torch's Adam


@torch.no_grad()
def test_siren_initial_activations_follow_the_paper():
    torch.manual_seed(0)
    net = Siren(2, 1, width=512, depth=5, output="identity")
    h = torch.rand(4096, 2) * 2 - 1
    h = torch.sin(net.omega0 * net.layers[0](h))
    for layer in net.layers[1:-1]:
        pre = net.omega0 * (h @ layer.weight.T)  # the weight part: ~ N(0, 1) (Theorem 1.8)
        assert abs(float(pre.std()) - 1.0) < 0.1 and abs(float(pre.mean())) < 0.1
        h = torch.sin(net.omega0 * layer(h))
        # arcsine distribution on [-1, 1]: variance 1/2, P(|y| > 0.9) = 1 - 2/pi asin(0.9)
        assert abs(float(h.var()) - 0.5) < 0.05
        tail = float((h.abs() > 0.9).float().mean())
        assert abs(tail - (1 - 2 / math.pi * math.asin(0.9))) < 0.03
    first = net.layers[0].weight
    assert first.abs().max() <= 1 / 2 and net.layers[1].weight.abs().max() <= math.sqrt(6 / 512) / 30


@pytest.mark.parametrize("flags, floor", [
    ({"encoding": "hashgrid", "levels": 8, "log2_table": 12, "finest_resolution": 32}, 32.0),
    ({"encoding": "densegrid", "levels": 4, "finest_resolution": 32}, 32.0),
    ({"encoding": "mulfagrid", "levels": 4, "finest_resolution": 32}, 32.0),
    ({"encoding": "mulfagrid", "levels": 4, "finest_resolution": 32, "kernel_form": "paper"}, 32.0),
    # the paper's lr 1e-4 is tuned for 256-wide SIRENs; a small one this short needs 1e-3,
    # at the constant rate this floor was set for (the cosine default ends at 32 dB here)
    ({"model": "siren", "width": 64, "depth": 3, "lr": 1e-3, "schedule": "constant",
      "warmup": 0.0}, 35.0),
])
def test_each_model_fits_a_tiny_image(tiny_rgb, flags, floor):
    cfg = merge_config({}, {**flags, "steps": 150, "split": "all", "eval_every": 150,
                            "device": "cpu", "precision": "fp32"})
    result = fit_task(prepare_task("image", tiny_rgb, cfg), cfg)
    assert result.metrics["train_psnr"] > floor


def test_checkpoint_round_trip_renders_identical_pixels(tiny_rgb, tmp_path):
    cfg = merge_config({}, {"encoding": "hashgrid", "levels": 6, "log2_table": 10,
                            "finest_resolution": 64, "steps": 20, "split": "all",
                            "device": "cpu", "precision": "fp32"})
    report = run(FitSpec.of("image", tiny_rgb, cfg, out=str(tmp_path / "run")))
    assert report["parameters"] > 0
    fld, meta = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert fld.spec() == build_field(fld.spec()).spec()
    signal_kind("image").render(fld, meta["signal"], tmp_path / "again.png")
    assert np.array_equal(iio.imread(tmp_path / "again.png"), iio.imread(tmp_path / "run" / "recon.png"))


def test_coverage_finds_the_level_where_held_out_pixels_share_no_vertex_with_training_ones():
    """The paper split's layout on a 64-pixel lattice: at resolution 64 every pixel is a
    vertex and the held-out (odd) pixels' vertices are never touched by the training (even)
    pixels; at 16 and 32 held-out pixels interpolate between trained vertices (all but
    the last row and column, whose far vertex lies on the domain's edge)."""
    axis = torch.arange(64) / 64
    lattice = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)
    train, held = lattice[::2, ::2].reshape(-1, 2), lattice[1::2, 1::2].reshape(-1, 2)
    enc = build_encoding({"type": "hashgrid", "levels": 3, "base_resolution": 16,
                          "finest_resolution": 64, "log2_table": 16}, 2)
    assert enc.resolutions == [16, 32, 64]
    coarse, middle, finest = enc.coverage(train, held)
    assert finest == 0.0
    assert coarse > 0.95 and middle > 0.95
    assert enc.coverage(train, train) == pytest.approx([1.0, 1.0, 1.0])


def test_hash_grid_finest_level_follows_a_large_image(tmp_path):
    # Instant-NGP's N_max matches the data's finest detail: a 600-pixel-wide image raises
    # the default 512 to 600; a small image keeps 512; a given value is kept
    from nfit.signals import build_task_field

    wide, small = tmp_path / "wide.png", tmp_path / "small.png"
    iio.imwrite(wide, np.zeros((40, 600, 3), np.uint8))
    iio.imwrite(small, np.zeros((40, 60, 3), np.uint8))

    def finest(path, **flags):
        cfg = merge_config({}, {"encoding": "hashgrid", "levels": 4, "log2_table": 8, "split": "all",
                                **flags}, kind="image")
        task = prepare_task("image", path, cfg)
        with torch.device("meta"):
            fld = build_task_field(task, cfg)
        return fld.encoding.finest_resolution, fld.spec()["encoding"]["finest_resolution"]

    assert finest(wide) == (600, 600)  # the checkpoint's spec records it, so render rebuilds it
    assert finest(small) == (512, 512)
    assert finest(wide, finest_resolution=300) == (300, 300)
