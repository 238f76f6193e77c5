"""`nfit volume`: formats, splits, sampled fitting, outputs in the input's format, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nfit.cli import app
from nfit.formats.volumes import read_volume, scaled_affine, write_volume
from nfit.objectives import BCEObjective, Objective, Scores
from nfit.signals.volume import Lattice, Masked, VoxelPoints, random_roles, volume_split

TINY = ["--width", "64", "--depth", "3", "--features", "64", "--precision", "fp32",
        "--device", "cpu", "--eval-every", "100", "--quiet"]


def smooth_volume(n: int = 24) -> np.ndarray:
    """(n, n, n) uint8, a few low frequencies: a small field fits it well quickly."""
    z, y, x = np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij")
    v = 0.5 + 0.2 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + 0.2 * np.sin(2 * np.pi * (z + x))
    return np.round(v * 200 + 20).astype(np.uint8)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(xyz="mm")
    nib.save(img, str(path))
    return path


AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 2.0, 0, 7.0], [0, 0, 0.75, 3.0], [0, 0, 0, 1]])


def test_tiny_fit_reaches_psnr_and_keeps_affine_through_recon_and_render(tmp_path: Path) -> None:
    src = write_nifti(tmp_path / "tiny.nii.gz", smooth_volume(), AFFINE)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["volume", str(src), "--sigma", "1", "--steps", "300",
                                      "--batch", "1024", "--lr", "3e-3", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["psnr"] > 30.0  # held-out odd voxels of a smooth volume
    assert report["signal"]["test_points"] == 12 ** 3
    for name in ("recon.nii.gz", "slices.png", "curve.csv", "curve.png", "model.safetensors"):
        assert (out / name).is_file()

    import nibabel as nib

    recon = nib.load(str(out / "recon.nii.gz"))
    assert recon.shape == (24, 24, 24)
    assert recon.get_data_dtype() == np.uint8
    assert np.allclose(recon.affine, AFFINE)
    assert recon.header.get_xyzt_units()[0] == "mm"
    # Written back in the file's units: close to the original values, not to [0, 1].
    error = np.abs(np.asarray(recon.dataobj, np.float64) - smooth_volume().astype(np.float64))
    assert error.mean() < 10.0

    up = tmp_path / "up.nii.gz"
    result = CliRunner().invoke(app, ["render", str(out / "model.safetensors"),
                                      "--size", "48x36x24", "--out", str(up), "--quiet"])
    assert result.exit_code == 0, result.output
    rendered = nib.load(str(up))
    assert rendered.shape == (48, 36, 24)
    assert np.allclose(rendered.affine, AFFINE @ np.diag([0.5, 24 / 36, 1.0, 1.0]))
    # Every second voxel of the 2x upsampled axis lands on an original voxel.
    assert np.allclose(rendered.affine @ [2, 0, 0, 1], AFFINE @ [1, 0, 0, 1])


@pytest.mark.parametrize("name", ["vol.npy", "vol.tif"])
def test_npy_and_tiff_round_trip_and_fit_writes_same_format(tmp_path: Path, name: str) -> None:
    data = np.random.default_rng(0).integers(0, 4000, size=(6, 7, 8)).astype(np.uint16)
    path = tmp_path / name
    write_volume(path, data)
    back = read_volume(path)
    assert back.data.shape == (6, 7, 8, 1) and back.data.dtype == np.uint16
    assert np.array_equal(back.data[..., 0], data)

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["volume", str(path), "--steps", "3", "--batch", "64",
                                      "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    recon = read_volume(out / ("recon" + Path(name).suffix)).data
    assert recon.shape == (6, 7, 8, 1) and recon.dtype == np.uint16
    assert data.min() <= recon.min() and recon.max() <= data.max()  # clipped to the file's range


def test_channels_and_nifti_write_read(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((4, 5, 6, 3)).astype(np.float32)
    write_volume(tmp_path / "c.nii", data, affine=AFFINE, units="mm")
    back = read_volume(tmp_path / "c.nii")
    assert back.data.shape == (4, 5, 6, 3) and np.allclose(back.data, data)
    assert np.allclose(back.affine, AFFINE) and back.units == "mm"


def test_paper_split_is_exactly_even_and_odd_voxels() -> None:
    shape = (5, 6, 7)
    flat = np.arange(np.prod(shape)).reshape(shape)
    name, sets, held_out = volume_split(shape, "paper", 0)
    assert name == "paper" and held_out

    def listed(voxels: Lattice) -> np.ndarray:
        return torch.cat(list(voxels.chunks(11))).numpy()

    assert np.array_equal(listed(sets["train"]), flat[::2, ::2, ::2].ravel())
    assert np.array_equal(listed(sets["test"]), flat[1::2, 1::2, 1::2].ravel())
    assert np.array_equal(listed(sets["val"]), flat[::2, ::2, 1::2].ravel())
    sampled = sets["train"].sample(500, torch.Generator().manual_seed(0)).numpy()
    assert np.all(np.stack(np.unravel_index(sampled, shape)) % 2 == 0)


def test_voxel_points_give_grid_coordinates_and_values() -> None:
    shape = (4, 6, 8)
    values = torch.rand(int(np.prod(shape)), 2)
    points = VoxelPoints(values, shape, Lattice(shape, (1, 1, 1), (2, 2, 2)))
    x, y = next(points.chunks(1000))
    i, j, k = np.unravel_index(np.arange(np.prod(shape)).reshape(shape)[1::2, 1::2, 1::2].ravel(), shape)
    assert torch.allclose(x, torch.tensor(np.stack([k / 8, j / 6, i / 4], 1), dtype=torch.float32))
    assert torch.equal(y, values.reshape(*shape, 2)[1::2, 1::2, 1::2].reshape(-1, 2))


def test_random_split_roles_are_disjoint_and_sampled_from_their_role() -> None:
    roles = random_roles(20000, 0.1, seed=3)
    counts = torch.bincount(roles.long(), minlength=3).numpy()
    assert counts.sum() == 20000
    assert abs(counts[2] - 2000) < 200 and abs(counts[1] - 2000) < 200
    test = Masked(roles, 2)
    drawn = test.sample(777, torch.Generator().manual_seed(1))
    assert len(drawn) == 777 and bool((roles[drawn] == 2).all())
    listed = torch.cat(list(test.chunks(4096)))
    assert torch.equal(listed, torch.nonzero(roles == 2).ravel())


def test_chunked_score_equals_whole_score() -> None:
    pred, target = torch.rand(1000, 3), torch.rand(1000, 3)
    for objective in (Objective(), BCEObjective()):
        t = target if objective.name == "mse" else (target > 0.5).float()
        whole, chunked = Scores(1, objective), Scores(1, objective)
        whole.add(pred[None] - 0.5, t)
        for i in range(0, 1000, 128):
            chunked.add(pred[None, i:i + 128] - 0.5, t[i:i + 128])
        a, b = whole.result()[0], chunked.result()[0]
        assert a == pytest.approx(b, rel=1e-12)
        if objective.name == "mse":
            want = float(((pred.double() - 0.5 - t.double()) ** 2).mean())
            assert a["loss"] == pytest.approx(want, rel=1e-12)
        else:
            want = float(((pred - 0.5 > 0).float() == t).double().mean())
            assert a["accuracy"] == pytest.approx(want, rel=1e-12)


def test_scaled_affine_halves_voxels() -> None:
    assert np.allclose(scaled_affine(AFFINE, (10, 10, 10), (20, 10, 5)),
                       AFFINE @ np.diag([0.5, 1.0, 2.0, 1.0]))


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}

    def npy(name: str, array: np.ndarray, message: str) -> None:
        np.save(tmp / name, array)
        cases[name] = (tmp / name, message)

    npy("flat2d.npy", np.random.rand(16, 16), "2D")
    npy("series.npy", np.random.rand(8, 8, 8, 12), "series of 12 volumes")
    npy("constant.npy", np.full((8, 8, 8), 7, np.int16), "same value")
    nan = np.random.rand(8, 8, 8)
    nan[2, 3, 4] = np.nan
    npy("nan.npy", nan, "NaN")
    inf = np.random.rand(8, 8, 8)
    inf[0, 0, 0] = np.inf
    npy("inf.npy", inf, "infinite")
    npy("objects.npy", np.array([{"a": 1}] * 8, dtype=object), "not a plain NumPy array")
    (tmp / "garbage.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    cases["garbage.nii.gz"] = (tmp / "garbage.nii.gz", "unreadable or corrupt NIfTI")
    good = write_nifti(tmp / "good.nii.gz", smooth_volume(16), AFFINE).read_bytes()
    (tmp / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    cases["truncated.nii.gz"] = (tmp / "truncated.nii.gz", "unreadable or corrupt NIfTI")
    (tmp / "random.nii").write_bytes(np.random.default_rng(0).bytes(500))
    cases["random.nii"] = (tmp / "random.nii", "unreadable or corrupt NIfTI")
    import tifffile

    tifffile.imwrite(tmp / "page.tif", np.zeros((16, 16), np.uint8))
    cases["page.tif"] = (tmp / "page.tif", "2D")
    return cases


def test_bad_inputs_exit_1_with_one_line_and_no_output(tmp_path: Path) -> None:
    for name, (path, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}"
        result = CliRunner().invoke(app, ["volume", str(path), "--out", str(out), "--steps", "2"])
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nfit: error:"), (name, result.output)
        assert message in lines[0], (name, lines[0])
        assert not out.exists(), name


def test_real_mri_loads_with_shape_and_affine(shared_data: Path) -> None:
    vol = read_volume(shared_data / "volumes" / "mni152-t1-96.nii.gz")
    assert vol.data.shape == (96, 112, 96, 1) and vol.data.dtype == np.uint8
    assert vol.affine is not None and np.linalg.det(vol.affine[:3, :3]) > 0
    raw = np.load(shared_data / "volumes" / "mni152-t1-96.npy")
    assert np.array_equal(vol.data[..., 0], raw)
