"""Every feature on every signal kind: sweeps, kernels, grids and resume on volumes and meshes.

Signals are tiny (a 16^3 volume, an icosphere, a 32x32 image) so each fit takes seconds
on one CPU thread; floors sit well under what the fits reach and far above what a broken
pipeline (wrong sign, wrong bounds, untrained weights) gives.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from nfit.api import build_task_field, prepare_task
from nfit.cli import app
from nfit.config import FitConfig
from nfit.field import predict
from nfit.geometry import iou
from nfit.signals.mesh import predicted_inside
from nfit.sweep import parse_sigmas, run_sweep
from nfit.train import fit, train

CPU = ["--device", "cpu", "--precision", "fp32"]
TINY_NET = ["--features", "16", "--width", "32", "--depth", "3"]
#: small mesh settings (the defaults label 200,000 points)
MESH_EXTRA = {"pool": 4000, "eval_points": 600, "metric_points": 2000, "resolution": 24}


def _volume(path: Path, n: int = 16) -> Path:
    """(n, n, n) uint8 of a few low frequencies, written as .npy."""
    z, y, x = np.meshgrid(*[np.arange(n) / n] * 3, indexing="ij")
    v = 0.5 + 0.2 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + 0.2 * np.sin(2 * np.pi * (z + x))
    np.save(path, np.round(v * 200 + 20).astype(np.uint8))
    return path


def _ball(path: Path) -> Path:
    trimesh.creation.icosphere(subdivisions=3, radius=1.0).export(path)
    return path


def _mesh_yaml(path: Path, **more: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({**MESH_EXTRA, **more}))
    return path


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


# ----------------------------------------------------------------------------- sweeps


def test_sweep_volume_cli_outputs_and_render(tmp_path: Path) -> None:
    src = _volume(tmp_path / "vol.npy")
    out = tmp_path / "sweep"
    _invoke(["sweep", "volume", str(src), "--encoding", "gauss", "--sigma", "0.5,2",
             "--steps", "150", "--batch", "512", "--lr", "3e-3", "--eval-every", "50",
             "--out", str(out), "--quiet", *TINY_NET, *CPU])
    for name in ("sweep.csv", "sweep.png", "sweep.json", "model.safetensors", "recon.npy",
                 "slices.png", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "sweep.json").read_text())
    assert report["metric"] == "psnr"
    chosen = report["chosen"]
    rows = {r["sigma"]: r for r in report["configs"]}
    assert chosen["val_psnr"] == max(r["val_psnr"] for r in rows.values())
    assert chosen["test_psnr"] > 20.0  # a smooth volume's held-out voxels
    # scored on every validation voxel (8^3 of the paper split), not a subset
    assert json.loads((out / "report.json").read_text())["signal"]["test_points"] == 8 ** 3
    _invoke(["render", str(out / "model.safetensors"), "--out", str(tmp_path / "r.npy"),
             "--size", "8x8x8", "--quiet"])
    assert np.load(tmp_path / "r.npy").shape == (8, 8, 8)


def test_volume_ensemble_equals_single_fits(tmp_path: Path) -> None:
    """Sampled training and chunk-scored PointSource sets: each member ends as its own fit."""
    base = FitConfig(features=16, width=32, depth=3, steps=15, batch=256, device="cpu",
                     precision="fp32", eval_every=5)
    task = prepare_task("volume", _volume(tmp_path / "vol.npy"), base)
    cfgs = [replace(base, sigma=1.0, seed=0), replace(base, sigma=3.0, seed=1)]
    fields = [build_task_field(task, c) for c in cfgs]
    result = train(fields, task.problem, base, seeds=[0, 1],
                   device=torch.device("cpu"), precision="fp32")
    for c, got in zip(cfgs, result.members, strict=True):
        alone = fit(build_task_field(task, c), task.problem, c, device=torch.device("cpu"),
                    precision="fp32")
        assert set(alone.metrics) == {"val_loss", "val_psnr", "test_loss", "test_psnr"}
        for name, value in alone.metrics.items():
            assert got.metrics[name] == pytest.approx(value, rel=1e-4), name


def test_sweep_sdf_cli_selects_on_iou(tmp_path: Path) -> None:
    src = _ball(tmp_path / "ball.obj")
    out = tmp_path / "sweep"
    _invoke(["sweep", "sdf", str(src), "--encoding", "gauss", "--sigma", "1,16",
             "--steps", "300", "--batch", "1024", "--lr", "3e-3", "--eval-every", "100",
             "--config", str(_mesh_yaml(tmp_path / "m.yaml")), "--out", str(out), "--quiet",
             "--features", "32", "--width", "64", "--depth", "3", *CPU])
    report = json.loads((out / "sweep.json").read_text())
    assert report["metric"] == "iou"
    rows = {r["sigma"]: r for r in report["configs"]}
    assert report["chosen"]["sigma"] == 1.0  # sigma 16 on [-1, 1]^3 overfits the samples
    assert report["chosen"]["val_iou"] == rows[1.0]["val_iou"] > rows[16.0]["val_iou"]
    # held-out points are 80 % near the surface, where a tiny fit is least sure (~0.7)
    assert report["chosen"]["test_iou"] > 0.6
    members = {m["sigma"]: m for m in report["members"]}
    assert 0.0 <= members[16.0]["test_iou"] <= 1.0
    best = json.loads((out / "report.json").read_text())
    assert best["test"]["iou_uniform"] > 0.8  # the chosen model's own mesh metrics
    _invoke(["render", str(out / "model.safetensors"), "--out", str(tmp_path / "r.obj"),
             "--resolution", "24", "--quiet"])
    radius = np.linalg.norm(trimesh.load(tmp_path / "r.obj").vertices, axis=1)
    assert np.median(np.abs(radius - 1.0)) < 0.1


def test_occupancy_sweep_iou_is_geometry_iou(tmp_path: Path) -> None:
    """The ensemble's chunked IoU equals nfit.geometry.iou on the member's own predictions."""
    cfg = FitConfig(features=16, width=32, depth=3, steps=60, batch=1024, lr=3e-3,
                    device="cpu", precision="fp32", eval_every=30,
                    **{**MESH_EXTRA, "target": "occupancy"})
    task = prepare_task("sdf", _ball(tmp_path / "ball.obj"), cfg)
    result = run_sweep(task, cfg, ["gauss"], parse_sigmas("1,4"))
    assert result.metric == "iou"
    x, y = task.problem.eval_sets["val"]
    for m in result.members:
        assert m.field is not None
        values = predict(m.field, x)[:, 0]
        want = iou(predicted_inside(values, "occupancy").numpy(), (y[:, 0] > 0.5).numpy())
        assert m.metrics["val_iou"] == pytest.approx(want, abs=1e-12)
        assert 0.0 < m.metrics["val_iou"] < 1.0  # a real overlap, not a degenerate one


def test_sweep_stacks_learned_encodings(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "sweep", "image", str(tiny_rgb), "--encoding", "gauss,densegrid", "--sigma", "2,8",
        "--steps", "60", "--eval-every", "30", "--levels", "4", "--finest-resolution", "32",
        "--seeds", "2", "--out", str(out), "--quiet", *TINY_NET, *CPU])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    assert {g["mode"] for g in report["groups"]} == {"stacked"}
    assert sorted((g["encoding"], g["members"]) for g in report["groups"]) == [
        ("densegrid", 2), ("gauss", 4)]
    dense = [m for m in report["members"] if m["encoding"] == "densegrid"]
    assert len(dense) == 2 and dense[0]["sigma"] is None  # no sigma: once per seed
    # Each stacked grid member is exactly the single fit `nfit image --encoding densegrid`
    # would make with the same flags (its own grid defaults, lr 1e-2, width 32 as given).
    for member in dense:
        cfg = FitConfig(encoding="densegrid", features=16, width=32, depth=3, steps=60, lr=1e-2,
                        eval_every=30, device="cpu", precision="fp32", seed=member["seed"],
                        **{"levels": 4, "finest_resolution": 32})
        task = prepare_task("image", tiny_rgb, cfg)
        alone = fit(build_task_field(task, cfg), task.problem, cfg, device=torch.device("cpu"),
                    precision="fp32")
        assert member["val_psnr"] == pytest.approx(alone.metrics["val_psnr"], rel=1e-5)
        assert alone.metrics["val_psnr"] > 15.0  # trained: a constant 0.5 image scores ~11 dB


def test_sweep_stacks_siren_members(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "sweep", "image", str(tiny_rgb), "--model", "siren", "--encoding", "none",
        "--sigma", "1", "--steps", "40", "--width", "32", "--depth", "3", "--seeds", "2",
        "--out", str(out), "--quiet", *CPU])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    assert [(g["mode"], g["members"]) for g in report["groups"]] == [("stacked", 2)]
    assert report["chosen_config"]["model"] == "siren"
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- kernels


def _kernel(kind: str, path: Path, out: Path, steps: int = 30, **cfg: object) -> dict:
    from nfit.analysis.run import kernel_file
    from nfit.analysis.study import KernelOptions

    config = FitConfig(**{"device": "cpu", "features": 16, "width": 64, "depth": 3, **cfg})
    opts = KernelOptions(points=48, test_points=32, steps=steps, eval_every=10,
                         row_resolution=12)
    return kernel_file(kind, path, [config], opts, out)


@pytest.mark.parametrize("kind", ["volume", "sdf"])
def test_kernel_on_3d_kinds(tmp_path: Path, kind: str) -> None:
    src = _volume(tmp_path / "v.npy") if kind == "volume" else _ball(tmp_path / "b.obj")
    extra = {} if kind == "volume" else dict(MESH_EXTRA)
    report = _kernel(kind, src, tmp_path / "k", sigma=1.0, **extra)
    study = report["encodings"]["gauss"]
    assert report["points"] == 48  # distinct points, drawn from the volume's sampler too
    assert study["eigenvalue_min"] > -1e-6 * study["eigenvalue_max"]  # PSD
    curve = study["curve"]
    assert curve[-1]["train_psnr"] > curve[0]["train_psnr"]  # gradient descent trained
    # the prediction starts where the network starts (same points, same targets, same f0)
    assert curve[0]["pred_test_psnr"] == pytest.approx(curve[0]["test_psnr"], rel=1e-6)
    assert study["kernel_drift"] > 0.0
    for name in ("spectrum.csv", "spectrum.png", "kernel_row.png", "prediction.png"):
        assert (tmp_path / "k" / name).is_file()


GRID = {"levels": 3, "features_per_level": 3, "finest_resolution": 32, "log2_table": 8}


@pytest.mark.parametrize("encoding", ["densegrid", "hashgrid"])
def test_plain_grid_tangent_kernel_is_constant(tiny_rgb: Path, tmp_path: Path,
                                               encoding: str) -> None:
    """Theorem 2 of Zhao et al. 2024: a grid read linearly keeps its GTK in training; then the
    kernel prediction of gradient descent is exact (3 features per level: the RGB outputs'
    kernels are equal, so the output-averaged kernel is each one's)."""
    report = _kernel("image", tiny_rgb, tmp_path / "k", encoding=encoding, model="sum",
                     **GRID)
    study = report["encodings"][encoding]
    curve = study["curve"]
    assert curve[-1]["train_psnr"] > curve[0]["train_psnr"] + 20  # real training steps
    assert study["kernel_drift"] < 1e-6
    assert study["predicted"]["test_psnr"] == pytest.approx(study["measured"]["test_psnr"],
                                                            abs=1e-4)
    coverage = study["grid_coverage"]
    assert [c["resolution"] for c in coverage] == [16, 22, 32]
    assert all(0.0 <= c["held_out_weight_on_trained_vertices"] <= 1.0 for c in coverage)
    # the same grid read by an MLP is not linear in the table: its GTK moves
    moved = _kernel("image", tiny_rgb, tmp_path / "m", encoding=encoding, **GRID)
    assert moved["encodings"][encoding]["kernel_drift"] > 1e-3


def test_sum_model_needs_a_learned_encoding(tiny_rgb: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["image", str(tiny_rgb), "--model", "sum", "--encoding",
                                      "gauss", "--steps", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "nothing to train" in result.output and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- grids in 3D

HASH_3D = ["--encoding", "hashgrid", "--levels", "4", "--log2-table", "12",
           "--base-resolution", "4"]


def test_hashgrid_volume_reaches_psnr(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _invoke(["volume", str(_volume(tmp_path / "v.npy")), *HASH_3D, "--finest-resolution", "16",
             "--steps", "150", "--batch", "1024", "--out", str(out), "--quiet", *CPU])
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["encoding"] == "hashgrid"
    assert report["test"]["psnr"] > 24.0  # held-out odd voxels (27 dB at 200 steps)


def test_hashgrid_sdf_covers_the_mesh_domain(tmp_path: Path) -> None:
    """The grid spans [-1, 1]^3 (the task's domain), not [0, 1]^3, which would clamp seven
    octants of the ball onto the grid's faces."""
    from nfit.checkpoint import load_checkpoint

    out = tmp_path / "run"
    _invoke(["sdf", str(_ball(tmp_path / "b.obj")), *HASH_3D, "--finest-resolution", "32",
             "--steps", "150", "--batch", "2048", "--config", str(_mesh_yaml(tmp_path / "m.yaml")),
             "--out", str(out), "--quiet", *CPU])
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["iou_uniform"] > 0.9  # 0.99 at 200 steps
    fld, _ = load_checkpoint(out / "model.safetensors")
    assert fld.spec()["encoding"]["bounds"] == [-1.0, 1.0]
    _invoke(["render", str(out / "model.safetensors"), "--out", str(tmp_path / "r.obj"),
             "--resolution", "24", "--quiet"])
    radius = np.linalg.norm(trimesh.load(tmp_path / "r.obj").vertices, axis=1)
    assert np.median(np.abs(radius - 1.0)) < 0.05


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kind", ["volume", "sdf"])
def test_3d_fit_resumes_to_identical_weights(tmp_path: Path, kind: str) -> None:
    """Interrupted at step 20 (SIGINT, handled at the step boundary), resumed to step 40:
    the same weights and metrics as one uninterrupted run (sampled batches included)."""
    import signal

    from safetensors.torch import load_file

    from nfit.api import Reporter, run
    from nfit.errors import Interrupted
    from nfit.job import RESUME_FILE
    from nfit.spec import FitSpec

    if kind == "volume":
        src = _volume(tmp_path / "v.npy")
        cfg = FitConfig(sigma=1.0, features=16, width=32, depth=3, steps=40, batch=256,
                        eval_every=10, device="cpu", precision="fp32")
    else:  # a learned encoding too: its table and Adam moments must come back
        src = _ball(tmp_path / "b.obj")
        cfg = FitConfig(encoding="hashgrid", width=32, depth=3, steps=40, batch=512, lr=1e-2,
                        eval_every=10, device="cpu", precision="fp32",
                        **{**MESH_EXTRA, "levels": 3, "log2_table": 10,
                               "base_resolution": 4, "finest_resolution": 16})
    reference = run(FitSpec.of(kind, src, cfg, out=str(tmp_path / "ref")))

    class Interrupter(Reporter):
        @contextlib.contextmanager
        def fit(self, total, metric, budget=None):
            def interrupt(row: dict[str, float]) -> None:
                if row["step"] == 20:
                    signal.raise_signal(signal.SIGINT)

            yield interrupt

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run(FitSpec.of(kind, src, cfg, out=str(out)), Interrupter())
    assert (out / RESUME_FILE).is_file() and not (out / "model.safetensors").exists()
    resumed = run(FitSpec.of(kind, src, cfg, out=str(out), resume=True))
    assert resumed["metrics"] == reference["metrics"]
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
