"""`nfit ct` and `nfit mri`: the operators against closed forms and libraries, adjoints,
tiny reconstructions, held-out sweeps, bad inputs, render after reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nfit.cli import app
from nfit.errors import UsageError
from nfit.operators import KSpaceOperator, RotationProjector, paper_angles, parse_angles, variable_density_mask
from nfit.phantoms import perturbed_shepp_logan

TINY = ["--width", "64", "--depth", "3", "--features", "64", "--precision", "fp32", "--device", "cpu",
        "--eval-every", "50", "--quiet"]


def disc(n: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (((xx - n // 2) ** 2 + (yy - n // 2) ** 2) <= radius ** 2).astype(np.float64)


def project(image: np.ndarray, angles: np.ndarray, method: str) -> np.ndarray:
    proj = RotationProjector(image.shape[0], angles, method)
    return proj(torch.from_numpy(image).reshape(1, -1))[0].double().numpy()


def test_standard_projector_matches_skimage_radon() -> None:
    from skimage.transform import radon

    n = 48
    yy, xx = np.mgrid[:n, :n]
    image = disc(n, 18) * (0.5 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 7.0))  # zero outside the circle
    angles = np.array([0.0, 13.0, 45.0, 90.0, 121.5, 179.0])
    ours = project(image, angles, "standard")
    theirs = radon(image, theta=angles, circle=True).T
    assert ours.shape == theirs.shape == (6, n)
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


@pytest.mark.parametrize("method", ["standard", "paper"])
def test_projection_of_a_disc_is_its_chord(method: str) -> None:
    n, radius = 128, 40.0
    t = np.arange(n) - n // 2
    chord = 2 * np.sqrt(np.clip(radius ** 2 - t ** 2, 0, None))  # line integral in pixels
    expected = chord / n if method == "paper" else chord  # the paper's mean over rows
    got = project(disc(n, radius), paper_angles(20), method)
    unit = 1.0 / n if method == "paper" else 1.0
    # every view equals the chord up to the disc's pixelation (within a pixel at the rim;
    # nearest-neighbour resampling adds half a pixel on average)
    assert np.abs(got - expected[None]).mean() < (0.6 if method == "paper" else 0.35) * unit
    inner = np.abs(t) < radius - 3  # away from the rim, where the chord's slope is unbounded
    assert np.abs(got - expected[None])[:, inner].max() < 2.5 * unit  # one sample at each end
    # and the mass is kept: the sum over bins is the disc's area (in the operator's units)
    assert np.allclose(got.sum(axis=1), disc(n, radius).sum() * unit, rtol=1e-2 if method == "paper" else 2e-3)


@pytest.mark.parametrize("method", ["standard", "paper"])
def test_projector_adjoint_and_gradient(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    proj = RotationProjector(24, parse_angles("0:180:7"), method)
    x = torch.rand(2, 24 * 24, generator=g, dtype=torch.float32)
    y = torch.rand(2, 7, 24, generator=g, dtype=torch.float32)
    lhs = (proj(x).double() * y.double()).sum()
    rhs = (x.double() * proj.adjoint(y).double()).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5)
    x.requires_grad_(True)
    (proj(x) * y).sum().backward()
    assert torch.allclose(x.grad, proj.adjoint(y), atol=1e-6)


def test_kspace_operator_matches_numpy_fft_and_its_adjoint() -> None:
    rng = np.random.default_rng(0)
    shape = (6, 8, 5)
    mask = rng.random(shape) < 0.4
    op = KSpaceOperator(mask)
    vol = rng.random((2, *shape))
    got = op(torch.from_numpy(vol)).numpy()
    want = np.stack([np.fft.fftn(v)[mask] for v in vol])
    assert np.allclose(got, want, atol=1e-9)
    x = torch.from_numpy(rng.normal(size=(2, *shape)) + 1j * rng.normal(size=(2, *shape))).to(torch.complex64)
    y = torch.from_numpy(rng.normal(size=(2, len(op))) + 1j * rng.normal(size=(2, len(op)))).to(torch.complex64)
    lhs = (op(x).conj() * y).sum()  # <A x, y>
    rhs = (x.conj() * op.adjoint(y).reshape(2, *shape)).sum()  # <x, A^H y>
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_variable_density_mask_is_the_papers() -> None:
    from nfit.operators import paper_mri_mask

    mask, drawn = variable_density_mask((96, 96, 96), 0.126, seed=0)
    assert abs(mask.mean() - 0.126) < 1e-5
    # the paper's 200,000 Gaussian draws (covariance 2 * 96 * I) cover about 12.6%
    assert 190_000 < drawn < 210_000
    small, _ = variable_density_mask((16, 16, 16), 0.15, seed=0)
    assert small[0, 0, 0] and small[0, 0, 1] and small[0, 1, 0] and small[1, 0, 0]  # same shape, scaled
    assert mask[0, 0, 0]  # DC sampled: the centre was shifted onto the corner
    centred = np.fft.fftshift(mask)
    assert centred[40:56, 40:56, 40:56].mean() > 0.9 > 0.1 > centred[:10].mean()
    # the same law as the paper's own draw (tests/test_threefry.py checks that one bit for bit)
    paper = np.fft.fftshift(paper_mri_mask((96, 96, 96)))
    for box in (np.s_[40:56, 40:56, 40:56], np.s_[30:66, 30:66, 30:66], np.s_[:20]):
        assert abs(centred[box].mean() - paper[box].mean()) < 0.01


@pytest.mark.parametrize("keep_graphs", [False, True])
@pytest.mark.parametrize("operator", ["ct", "mri"])
def test_whole_grid_step_gradient_equals_the_full_graph_gradient(operator: str, keep_graphs: bool) -> None:
    """The operator step (values without a graph, the gradient through the operator, then
    slice by slice with a graph; or, on a small grid, every slice's graph kept) gives the
    full-graph gradient of every member's weights."""
    from nfit.config import FitConfig
    from nfit.device import slice_rows
    from nfit.feeds import FeedContext, GridFeed, MemberRNG
    from nfit.field import build_field
    from nfit.objectives import Measurement, OperatorObjective
    from nfit.signals.grid import grid_coords
    from nfit.stack import Members
    from nfit.train import operator_step

    g = torch.Generator().manual_seed(3)
    shape: tuple[int, ...]
    if operator == "ct":
        shape, n = (16, 16), 16
        proj = RotationProjector(n, paper_angles(5), "paper")
        sets = {"train": Measurement(proj, proj(torch.rand(1, n * n, generator=g))[0], 1.0, 0.5)}
    else:
        shape = (6, 8, 5)
        op = KSpaceOperator(np.random.default_rng(0).random(shape) < 0.4)
        sets = {"train": Measurement(op, op(torch.rand(1, *shape, generator=g).double())[0].to(torch.complex64))}
    objective = OperatorObjective(shape, sets)
    cfg = FitConfig(width=32, depth=3, features=16, sigma=3.0)
    fields = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        spec = {"in_dim": len(shape), "out_dim": 1, "encoding": {**cfg.encoding_spec(), "seed": seed},
                "network": cfg.network_spec()}
        fields.append(build_field(spec))
    members = Members(fields)
    coords = grid_coords(shape)
    feed = GridFeed(coords)
    # slices of 37 rows: many, and the last one short
    cpu = torch.device("cpu")
    feed.start(FeedContext(members, cpu, torch.float32, 37, True, MemberRNG([0, 1], cpu)))
    assert len(feed.step(1)) > 3
    terms = operator_step(members, feed.step(1), objective, torch.device("cpu"), "fp32", keep_graphs)
    got = [p.grad.clone() for p in members.parameters()]

    ref = Members(fields)
    values = ref(ref.prepare(coords, torch.float32))[..., 0]  # one graph over the whole grid
    loss = objective.loss(values)
    loss.sum().backward()
    assert torch.allclose(terms["data"], loss.detach(), rtol=1e-5)
    for a, b in zip(got, [p.grad for p in ref.parameters()], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7 * float(b.abs().max()))
    assert slice_rows(2, torch.device("cpu")) < len(coords) * 40  # sanity: the cap is a slice, not the grid


def test_measurement_fit_scores_held_out_sets_above_the_subset_threshold(tmp_path: Path, monkeypatch) -> None:
    """A measurement fit whose grid is larger than the thresholds at which held-out sets are
    subsampled trains, evaluates every step and scores the whole grid (the crash of a 96^3
    MRI or a 1024^2 CT at its first evaluation, at test size)."""
    import nfit.train as train_mod

    monkeypatch.setattr(train_mod, "EVAL_FULL_MAX", 256)
    monkeypatch.setattr(train_mod, "EVAL_SUBSET", 128)
    rng = np.random.default_rng(0)
    vol = np.zeros((12, 12, 12), dtype=np.float32)
    vol[3:9, 4:8, 2:10] = 0.8
    vol += 0.1 * rng.random(vol.shape).astype(np.float32)
    path = tmp_path / "vol.npy"
    np.save(path, vol)
    out = tmp_path / "mri"
    result = CliRunner().invoke(app, ["mri", str(path), *TINY, "--steps", "6", "--eval-every", "1",
                                      "--held-out", "0.2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"train", "val", "test"} <= set(report) and report["test"]["psnr"] > 5
    rows = (out / "curve.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["step", "train_loss", "train_psnr"] and len(rows) == 7
    header = rows[0].split(",")
    curve = [dict(zip(header, map(float, row.split(",")), strict=True)) for row in rows[1:]]
    # the curve's held-out scores are the whole grid's: the row of the step whose state the
    # report holds (the best on validation: early stopping is on with held-out views) has
    # the report's values
    at = next(r for r in curve if r["step"] == report["best_step"])
    assert at["val_psnr"] == max(r["val_psnr"] for r in curve)
    assert at["val_psnr"] == pytest.approx(report["val"]["psnr"], abs=0.05)
    assert at["test_psnr"] == pytest.approx(report["test"]["psnr"], abs=0.05)


def test_ct_curve_and_report_give_the_same_training_psnr(tmp_path: Path, phantom32: Path) -> None:
    """One definition per metric: the curve's train_psnr (the step's loss, in image units)
    and the report's (the fitted projections after the last step) are the same quantity,
    so they agree at the end of a converging fit."""
    out = tmp_path / "ct"
    result = CliRunner().invoke(app, ["ct", str(phantom32), *TINY, "--steps", "40", "--eval-every", "40",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    header, last = (line.split(",") for line in (out / "curve.csv").read_text().splitlines()[::40][:1] +
                    (out / "curve.csv").read_text().splitlines()[-1:])
    row = dict(zip(header, map(float, last), strict=True))
    assert report["train"]["psnr"] > 15
    assert row["train_psnr"] == pytest.approx(report["train"]["psnr"], abs=1.0)
    assert "train" in report["psnr_on"]


@pytest.fixture
def phantom32(tmp_path: Path) -> Path:
    from nfit.formats.images import write_image

    path = tmp_path / "phantom.png"
    write_image(path, perturbed_shepp_logan(1, 32, seed=3)[0], 16)
    return path


@pytest.fixture
def blobs32(tmp_path: Path) -> Path:
    """Three Gaussian blobs inside the inscribed circle: smooth, so a small field fits it quickly."""
    from nfit.formats.images import write_image

    yy, xx = np.mgrid[:32, :32] / 32.0
    image = sum(a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
                for cx, cy, s, a in ((0.4, 0.45, 0.12, 0.7), (0.62, 0.6, 0.07, 0.5), (0.5, 0.3, 0.05, 0.4)))
    path = tmp_path / "blobs.png"
    write_image(path, np.clip(image, 0, 1), 16)
    return path


def test_tiny_ct_reconstruction_reaches_a_floor_and_renders_after_reload(tmp_path: Path, blobs32: Path) -> None:
    out = tmp_path / "ct"
    result = CliRunner().invoke(app, ["ct", str(blobs32), "--views", "12", "--projector", "paper",
                                      "--sigma", "3", "--steps", "300", "--lr", "3e-3", "--out", str(out),
                                      "--json", *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["psnr"] > 35.0  # the projections are fitted
    assert report["test"]["psnr"] > 25.0  # and the image behind them found (measured: 28.6 dB)
    assert report["baseline"]["psnr"] > 25.0  # FBP of a smooth image is good too (measured: 35.0 dB)
    for name in ("recon.png", "fbp.png", "sinogram.png", "curve.csv", "model.safetensors"):
        assert (out / name).exists(), name
    result = CliRunner().invoke(app, ["render", str(out / "model.safetensors"), "--out", str(tmp_path / "again.png"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    from nfit.formats.images import read_image

    again, depth = read_image(tmp_path / "again.png")
    recon, _ = read_image(out / "recon.png")
    assert depth == 16 and np.abs(again - recon).max() < 1e-4


def smooth_volume(n: int) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij")
    return 0.5 + 0.2 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + 0.2 * np.sin(2 * np.pi * (z + x))


def test_tiny_mri_reconstruction_and_the_zero_filled_closed_form(tmp_path: Path) -> None:
    import nibabel as nib

    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image((smooth_volume(16) * 200).astype(np.float32), affine), str(src))
    out = tmp_path / "mri"
    result = CliRunner().invoke(app, ["mri", str(src), "--fraction", "0.15", "--sigma", "1", "--steps", "200",
                                      "--lr", "3e-3", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["psnr"] > 30.0  # measured: 37.4 dB
    # the volume's few low frequencies all lie inside the centred mask: zero filling is exact
    assert report["baseline"]["psnr"] > 60.0
    recon = nib.load(str(out / "recon.nii.gz"))
    assert np.allclose(recon.affine, affine) and recon.shape == (16, 16, 16)
    assert abs(report["signal"]["sampled_fraction"] - 0.15) < 1e-3


def test_ct_sweep_selects_sigma_on_held_out_views(tmp_path: Path, blobs32: Path) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", "ct", str(blobs32), "--views", "16", "--held-out", "0.25",
                                      "--sigma", "0.3,3", "--steps", "150", "--lr", "3e-3", "--out", str(out),
                                      "--json", *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = {row["sigma"]: row for row in report["configs"]}
    # the blurry sigma fits the held-out views worse, and the choice follows them
    assert rows[3.0]["val_psnr"] > rows[0.3]["val_psnr"] + 5.0  # measured: 33.9 vs 19.1 dB
    assert report["chosen"]["sigma"] == 3.0
    assert rows[3.0]["test_psnr"] > rows[0.3]["test_psnr"]  # and the image agrees (25.8 vs 15.0 dB)


def test_measured_sinogram_without_path_and_without_truth(tmp_path: Path) -> None:
    angles = paper_angles(10)
    sino = project(disc(24, 8) * 3.0, angles, "standard").astype(np.float32)  # values above 1: rescaled
    np.save(tmp_path / "scan.npy", sino)
    out = tmp_path / "meas"
    result = CliRunner().invoke(app, ["ct", "--sinogram", str(tmp_path / "scan.npy"), "--angles", "0:180:10",
                                      "--steps", "40", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert "test" not in report or "psnr" not in report["test"]
    assert report["signal"]["scale"] > 1.0 and (out / "recon.npy").exists()


def _bad(tmp_path: Path, args: list[str], code: int, words: str) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--steps", "2", *TINY])
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nfit: error:") and words in lines[0], result.output
    assert not out.exists()


def test_bad_inputs_one_line_right_code_nothing_written(tmp_path: Path, phantom32: Path) -> None:
    np.save(tmp_path / "s.npy", np.ones((10, 24), dtype=np.float32))
    _bad(tmp_path, ["ct", "--sinogram", str(tmp_path / "s.npy"), "--angles", "0:180:12"], 1,
         "10 projections (rows) but --angles gives 12")
    np.save(tmp_path / "c.npy", np.ones((10, 24), dtype=np.complex64))
    _bad(tmp_path, ["ct", "--sinogram", str(tmp_path / "c.npy"), "--angles", "0:180:10"], 1, "complex")
    nan = np.ones((10, 24), dtype=np.float32)
    nan[2, 3] = np.nan
    np.save(tmp_path / "n.npy", nan)
    _bad(tmp_path, ["ct", "--sinogram", str(tmp_path / "n.npy"), "--angles", "0:180:10"], 1, "NaN")
    _bad(tmp_path, ["ct", "--sinogram", str(tmp_path / "s.npy")], 2, "--angles")
    _bad(tmp_path, ["ct", str(phantom32), "--batch", "64"], 2, "full-batch")
    _bad(tmp_path, ["ct"], 2, "PATH")
    kspace = np.ones((6, 6, 6), dtype=np.complex64)
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "m_shape.npy", np.ones((6, 6, 5)))
    np.save(tmp_path / "m_empty.npy", np.zeros((6, 6, 6)))
    np.save(tmp_path / "k_real.npy", np.ones((6, 6, 6), dtype=np.float32))
    _bad(tmp_path, ["mri", "--kspace", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m_shape.npy")], 1,
         "differs from the k-space")
    _bad(tmp_path, ["mri", "--kspace", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m_empty.npy")], 1,
         "samples nothing")
    _bad(tmp_path, ["mri", "--kspace", str(tmp_path / "k_real.npy"), "--mask", str(tmp_path / "m_empty.npy")], 1,
         "must be complex")
    _bad(tmp_path, ["mri", "--kspace", str(tmp_path / "k.npy")], 2, "--mask")
    _bad(tmp_path, ["sweep", "ct", str(phantom32), "--sigma", "1,2"], 2, "validation")
    result = CliRunner().invoke(app, ["kernel", "ct", str(phantom32), "--out", str(tmp_path / "never"), "--quiet"])
    assert result.exit_code == 2 and "measurement operator" in result.output and not (tmp_path / "never").exists()
    for args, words in ((["--paper", "--count", "3"], "drop --count"), (["--paper", "--size", "1"], "--size >= 2")):
        result = CliRunner().invoke(app, ["phantom", "shepp", *args, "--out", str(tmp_path / "never")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
        assert not (tmp_path / "never").exists()


def test_paper_protocol_sets_the_recipe_per_encoding() -> None:
    from nfit.config import merge_config

    gauss = merge_config({}, {"protocol": "paper", "encoding": "gauss"}, kind="ct")
    none = merge_config({}, {"protocol": "paper", "encoding": "none"}, kind="ct")
    # 976: the update after which the notebook takes the evaluation its table reports
    assert (gauss.lr, gauss.sigma, gauss.steps, gauss.projector, gauss.views) == (1e-3, 4.0, 976, "paper", 20)
    assert none.lr == 1e-2
    mri = merge_config({}, {"protocol": "paper", "encoding": "posenc"}, kind="mri")
    # no --fraction: the paper's own mask
    assert (mri.lr, mri.sigma, mri.grid, mri.fraction, mri.steps) == (2e-3, 4.0, "96x96x96", None, 976)
    with pytest.raises(UsageError, match="applies to mri fits only"):
        merge_config({}, {"fraction": 0.2}, kind="ct")
    with pytest.raises(UsageError, match="applies to ct fits only"):
        merge_config({}, {"projector": "paper"}, kind="mri")


def test_paper_projector_samples_what_the_notebooks_ct_project_samples() -> None:
    import hashlib

    from nfit.operators import _paper_sources, paper_thetas

    # the notebook's ct_project (JAX 0.10.2, CPU) on a 64 x 64 image of pixel numbers: the
    # flat source pixel of every output pixel at the 20 angles (-1 outside), sha256 of int32
    n = 64
    maps = []
    for theta in paper_thetas(20):
        ix, iy = _paper_sources(n, theta)
        ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
        maps.append(np.where(ok, iy * n + ix, -1))
    digest = hashlib.sha256(np.stack(maps).astype("<i4").tobytes()).hexdigest()
    assert digest == "7c532d6265b0d8957cb62fd4ee53f28d48addc478972ad20928cbf83f0a5ea73"
    assert np.allclose(paper_thetas(20), np.radians(paper_angles(20)), rtol=1e-6)


def test_paper_projector_turns_against_skimage_and_fbp_follows() -> None:
    n = 48
    yy, xx = np.mgrid[:n, :n]
    image = disc(n, 20) * (0.3 + 0.6 * (xx > yy + 5))  # no mirror symmetry across the views
    angles = np.array([30.0])
    paper = project(image, angles, "paper") * n
    assert np.abs(paper - project(image, -angles, "standard")).mean() < 0.1 * np.abs(paper).mean()
    assert np.abs(paper - project(image, angles, "standard")).mean() > 0.3 * np.abs(paper).mean()
    from nfit.operators import fbp

    views = paper_angles(90)
    back = fbp(project(image, views, "paper").astype(np.float32), views, "paper")
    inside = disc(n, 17) > 0
    assert np.abs(back - image)[inside].mean() < 0.05


def test_ct_of_a_non_square_slice_pads_scores_and_writes_its_own_size(tmp_path: Path) -> None:
    from nfit.formats.images import read_image, write_image
    from nfit.operators import detector_square

    h, w = 18, 26
    yy, xx = np.mgrid[:h, :w]
    image = 0.2 + 0.6 * np.exp(-((xx - 15) ** 2 + (yy - 8) ** 2) / 30.0)  # non-zero to the edges
    write_image(tmp_path / "slice.png", image, 16)
    out = tmp_path / "ct"
    result = CliRunner().invoke(app, ["ct", str(tmp_path / "slice.png"), "--views", "24", "--sigma", "1",
                                      "--steps", "300", "--lr", "1e-2", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    side, top, left = detector_square(h, w)
    assert report["signal"]["shape"] == [side, side] and report["signal"]["image_shape"] == [h, w]
    assert report["signal"]["offset"] == [top, left] and report["signal"]["test_points"] == h * w
    assert report["test"]["psnr"] > 25.0  # scored on the slice's 18 x 26 pixels (measured: 28.5 dB)
    recon, _ = read_image(out / "recon.png")
    fbp_image, _ = read_image(out / "fbp.png")
    assert recon.shape[:2] == (h, w) and fbp_image.shape[:2] == (h, w)
    assert 10 * np.log10(1 / np.mean((recon[..., 0] - image) ** 2)) == pytest.approx(report["test"]["psnr"], abs=0.3)
    result = CliRunner().invoke(app, ["render", str(out / "model.safetensors"), "--out", str(tmp_path / "again.png"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    again, _ = read_image(tmp_path / "again.png")
    assert again.shape[:2] == (h, w) and np.abs(again - recon).max() < 1e-3
    # a sinogram of the padded slice (skimage's radon with circle=False) with the slice as truth
    from skimage.transform import radon

    sino = radon(image, theta=paper_angles(24), circle=False).T.astype(np.float32)
    assert sino.shape[1] == side
    np.save(tmp_path / "sino.npy", sino)
    result = CliRunner().invoke(app, ["ct", str(tmp_path / "slice.png"), "--sinogram", str(tmp_path / "sino.npy"),
                                      "--angles", "0:180:24", "--steps", "20", "--out", str(tmp_path / "m"), *TINY])
    assert result.exit_code == 0, result.output
    np.save(tmp_path / "narrow.npy", sino[:, :-3])
    _bad(tmp_path, ["ct", str(tmp_path / "slice.png"), "--sinogram", str(tmp_path / "narrow.npy"),
                    "--angles", "0:180:24"], 1, f"detector square (padded as radon(circle=False) pads it) is {side}")


def test_mri_paper_protocol_scales_resizes_and_masks_as_the_notebook(tmp_path: Path) -> None:
    import nibabel as nib

    from nfit.config import merge_config
    from nfit.operators import paper_mri_mask
    from nfit.signals.mri import _prepare_data, area_resize

    # the notebook's local-mean resize: 4 -> 2 averages pairs, 3 -> 2 weighs by overlap
    assert np.allclose(area_resize(np.arange(4.0).reshape(4, 1, 1), (2, 1, 1)).ravel(), [0.5, 2.5])
    assert np.allclose(area_resize(np.array([0.0, 3.0, 6.0]).reshape(3, 1, 1), (2, 1, 1)).ravel(), [1.0, 5.0])
    raw = (smooth_volume(12) * 200).astype(np.uint8)  # brightest voxel below 255
    nib.save(nib.Nifti1Image(raw, np.eye(4)), str(tmp_path / "v.nii.gz"))
    cfg = merge_config({}, {"protocol": "paper", "encoding": "gauss", "grid": "8x8x8"}, kind="mri")
    data = _prepare_data(tmp_path / "v.nii.gz", cfg)
    assert data.truth is not None and data.truth.shape == (8, 8, 8)
    assert np.allclose(data.truth, area_resize(raw / 255.0, (8, 8, 8)), atol=1e-6)  # /255, not min-max
    assert data.meta["range"] == [0.0, 255.0]
    assert np.array_equal(np.sort(data.index), np.flatnonzero(paper_mri_mask((8, 8, 8)).ravel()))
    plain = _prepare_data(tmp_path / "v.nii.gz", merge_config({}, {"grid": "8x8x8"}, kind="mri"))
    assert plain.truth is not None and plain.truth.max() == pytest.approx(1.0, abs=0.05)  # nfit's min-max


def _paper_ct_loop(image: np.ndarray, b: np.ndarray, weights: list[tuple[np.ndarray, np.ndarray]],
                   lr: float, iters: int) -> float:
    """Experiments/2d_CT's train_model for one image, transcribed to torch: the input
    encoder [sin, cos](2 pi x B^T), the stax MLP (Dense-Relu x3, Dense, Sigmoid), ct_project,
    0.5 mean squared sinogram error, Adam; returns the test PSNR after ``iters`` updates."""
    res = image.shape[0]
    x1 = torch.linspace(0, 1, res + 1)[:-1]
    xx, yy = torch.meshgrid(x1, x1, indexing="xy")  # np.meshgrid(x1, x1): [..., 0] runs along columns
    x_train = torch.stack([xx, yy], dim=-1)
    bt = torch.from_numpy(b)

    def input_encoder(x: torch.Tensor) -> torch.Tensor:
        proj = (2.0 * torch.pi * x) @ bt.T
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    params = [(torch.tensor(w, requires_grad=True), torch.tensor(c, requires_grad=True)) for w, c in weights]

    def run_model(x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        for i, (w, c) in enumerate(params):
            h = h @ w + c
            h = torch.relu(h) if i < len(params) - 1 else torch.sigmoid(h)
        return h.reshape(x.shape[0], x.shape[1])

    def ct_project(img: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        n = img.shape[0]
        axis = torch.arange(n, dtype=torch.float32) / n - 0.5
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        x_rot = (x * torch.cos(theta) - y * torch.sin(theta) + 0.5) * n
        y_rot = (x * torch.sin(theta) + y * torch.cos(theta) + 0.5) * n

        def nearest(v: torch.Tensor) -> torch.Tensor:  # map_coordinates, order 0: half away from zero
            v = v.double()
            return (torch.sign(v) * torch.floor(v.abs() + 0.5)).long()

        iy, ix = nearest(y_rot), nearest(x_rot)
        ok = (iy >= 0) & (iy < n) & (ix >= 0) & (ix < n)
        resampled = torch.where(ok, img[iy.clamp(0, n - 1), ix.clamp(0, n - 1)], torch.zeros(()))
        return resampled.mean(dim=0)

    thetas = torch.linspace(0.0, torch.pi, 21)[:-1]
    target = torch.from_numpy(image)
    y_train = torch.stack([ct_project(target, t) for t in thetas])
    features = input_encoder(x_train)
    opt = torch.optim.Adam([p for pair in params for p in pair], lr=lr)
    for _ in range(iters):
        opt.zero_grad()
        image_now = run_model(features)  # compute_projs: ct_project_batch(run_model(params, x), thetas)
        loss = 0.5 * torch.mean((torch.stack([ct_project(image_now, t) for t in thetas]) - y_train) ** 2)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = torch.mean((torch.clamp(run_model(features), 0.0, 1.0) - target) ** 2)
    return float(-10 * torch.log10(mse))


def test_ct_fit_equals_a_transcription_of_the_papers_loop(tmp_path: Path) -> None:
    """nfit ct --protocol paper against the notebook's loop written out in torch: the same
    phantom (the paper's first test phantom at 64^2), the same B and the same initial weights
    (copied from nfit's field); 200 steps, a 32-wide network to keep it quick."""
    from nfit.api import prepare_task
    from nfit.config import merge_config
    from nfit.formats.images import read_image, write_image
    from nfit.phantoms import paper_shepp_logan
    from nfit.signals.base import build_task_field

    write_image(tmp_path / "p.png", paper_shepp_logan(64)[0], 16)
    image = read_image(tmp_path / "p.png")[0][..., 0].astype(np.float32)  # what nfit reads
    args = {"protocol": "paper", "encoding": "gauss", "steps": 200, "width": 32, "features": 32,
            "precision": "fp32", "device": "cpu", "eval_every": 200}
    out = tmp_path / "ct"
    flags = [f"--{k.replace('_', '-')}" if i == 0 else str(v) for k, v in args.items() for i in range(2)]
    result = CliRunner().invoke(app, ["ct", str(tmp_path / "p.png"), *flags, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 200 and report["config"]["lr"] == 1e-3 and report["config"]["sigma"] == 4.0
    cfg = merge_config({}, args, kind="ct")
    fld = build_task_field(prepare_task("ct", tmp_path / "p.png", cfg), cfg)  # the fit's initial field
    b = fld.encoding.B.numpy().copy()
    linears = [m for m in fld.network.modules() if isinstance(m, torch.nn.Linear)]
    weights = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears]
    m = b.shape[0]
    weights[0] = (np.concatenate([weights[0][0][m:], weights[0][0][:m]]), weights[0][1])  # [cos, sin] -> [sin, cos]
    theirs = _paper_ct_loop(image, b, weights, 1e-3, 200)
    assert report["test"]["psnr"] == pytest.approx(theirs, abs=0.1)
