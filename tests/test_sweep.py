"""Sweeps: the batched ensemble equals single fits, selection on validation, auto, CLI."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nfit.api import build_task_field, prepare_task
from nfit.checkpoint import load_checkpoint
from nfit.cli import app
from nfit.config import FitConfig
from nfit.errors import UsageError
from nfit.job import member_bytes
from nfit.memory import plan_groups
from nfit.signals import Task
from nfit.signals.grid import interleaved_split
from nfit.signals.image import grid_problem
from nfit.sweep import Member, parse_encodings, parse_sigmas, run_sweep
from nfit.train import fit, train

TINY = dict(features=16, width=32, depth=3, device="cpu", precision="fp32", eval_every=10)


@pytest.mark.parametrize("batch", [0, 64])
def test_ensemble_equals_single_fits(tiny_rgb: Path, batch: int) -> None:
    """Each member trained inside the ensemble ends where its own single fit ends."""
    base = FitConfig(steps=20, batch=batch, **TINY)
    task = prepare_task("image", tiny_rgb, base)
    members = [("gauss", 3.0, 0), ("gauss", 10.0, 1), ("laplace", 5.0, 0), ("posenc", 8.0, 2)]
    cfgs = [replace(base, encoding=e, sigma=s, seed=seed) for e, s, seed in members]
    assert_members_are_single_fits(task, base, cfgs, atol=1e-5, moved=1e-3)


def assert_members_are_single_fits(task: Task, base: FitConfig, cfgs: list[FitConfig], *,
                                   atol: float, moved: float) -> None:
    """Train ``cfgs`` as one stack; each member ends where its own single fit ends
    (metrics, evaluation steps, weights), and training moved its weights by > ``moved``."""
    fields = [build_task_field(task, c) for c in cfgs]
    result = train(fields, task.problem, base, seeds=[c.seed for c in cfgs],
                   device=torch.device("cpu"), precision="fp32")
    for c, fld, got in zip(cfgs, fields, result.members, strict=True):
        alone = fit(build_task_field(task, c), task.problem, c, device=torch.device("cpu"),
                    precision="fp32")
        for name, value in alone.metrics.items():
            assert got.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        assert [r["step"] for r in got.history] == [r["step"] for r in alone.history]
        assert got.history[-1]["val_psnr"] == pytest.approx(alone.history[-1]["val_psnr"], rel=1e-4)
        for (name, p), q in zip(fld.state_dict().items(), alone.field.state_dict().values(),
                                strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=atol, msg=name)
        # Training moved the weights: the comparison is not of two untouched inits.
        init = build_task_field(task, c).state_dict()
        assert max(float((fld.state_dict()[k] - v).abs().max()) for k, v in init.items()) > moved


STACKED_FAMILIES = {
    "hashgrid": {"encoding": "hashgrid", "lr": 1e-2, "levels": 4, "log2_table": 8,
                 "finest_resolution": 32},
    "densegrid": {"encoding": "densegrid", "lr": 1e-2, "levels": 3, "finest_resolution": 16},
    "mulfagrid": {"encoding": "mulfagrid", "lr": 1e-2, "levels": 2, "finest_resolution": 16,
                  "kernel_width": 8},
    "siren": {"encoding": "none", "model": "siren", "lr": 1e-4},
}


@pytest.mark.parametrize("batch", [0, 64])
@pytest.mark.parametrize("family", sorted(STACKED_FAMILIES))
def test_stacked_members_equal_single_fits(tiny_rgb: Path, family: str, batch: int) -> None:
    """Grids (one shared table layout, or looped for MulFAGrid) and SIREN train stacked; each
    member ends where its own single fit ends, with full batches and with per-seed minibatches."""
    base = FitConfig(steps=12, batch=batch, **{**TINY, **STACKED_FAMILIES[family]})
    task = prepare_task("image", tiny_rgb, base)
    cfgs = [replace(base, seed=s) for s in (0, 1, 2)]
    assert_members_are_single_fits(task, base, cfgs, atol=1e-6, moved=1e-6)


def test_stacked_hashgrid_members_on_a_sampler(tmp_path: Path) -> None:
    """A sampled problem (an sdf's pool) with two seeds: members draw their own points."""
    import trimesh

    path = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=2, radius=0.6).export(path)
    base = FitConfig(steps=8, batch=512, eval_every=4, device="cpu", precision="fp32",
                     encoding="hashgrid", lr=1e-2, width=16, depth=2,
                     **{"levels": 3, "log2_table": 10, "finest_resolution": 32, "pool": 4000,
                            "eval_points": 500, "metric_points": 500, "resolution": 16})
    task = prepare_task("sdf", path, base)
    cfgs = [replace(base, seed=s) for s in (0, 1)]
    fields = [build_task_field(task, c) for c in cfgs]
    result = train(fields, task.problem, base, seeds=[0, 1], device=torch.device("cpu"),
                   precision="fp32")
    for c, got in zip(cfgs, result.members, strict=True):
        alone = fit(build_task_field(task, c), task.problem, c, device=torch.device("cpu"),
                    precision="fp32")
        assert set(got.metrics) >= {"train_iou", "val_iou", "test_loss"}
        for name, value in alone.metrics.items():
            assert got.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def _band_limited_task(n: int = 64) -> Task:
    """A smooth 2D signal (frequencies up to 3 cycles per unit) on an n x n grid, paper split.

    Its best Gaussian sigma is a few cycles per unit: sigma 0.1 gives nearly linear
    features (underfits), sigma 400 gives features far above the training grid's
    Nyquist frequency (16), which fit the training pixels and alias between them.
    """
    y, x = torch.meshgrid(torch.arange(n) / n, torch.arange(n) / n, indexing="ij")
    v = 0.5 + 0.2 * torch.sin(2 * math.pi * (2 * x + y)) + 0.2 * torch.cos(2 * math.pi * 3 * y)
    split = interleaved_split((n, n))
    problem = grid_problem(v.reshape(-1, 1).float(), (n, n), split)
    return Task("image", 2, 1, problem, {"kind": "image", "shape": [n, n]})


SYNTH = dict(features=32, width=32, depth=3, steps=150, lr=1e-2, device="cpu",
             precision="fp32", eval_every=50)


def test_sweep_picks_the_known_bandwidth() -> None:
    task = _band_limited_task()
    result = run_sweep(task, FitConfig(**SYNTH), ["gauss"], parse_sigmas("0.1,4,400"))
    by_sigma = {r["sigma"]: r for r in result.configs}
    assert result.best_config["sigma"] == 4.0
    assert result.best.sigma == 4.0
    # The two failure modes the choice avoids: underfitting and overfitting.
    assert by_sigma[0.1]["train_psnr"] < by_sigma[4.0]["train_psnr"] - 5
    assert by_sigma[400.0]["train_psnr"] > by_sigma[400.0]["val_psnr"] + 10
    assert by_sigma[4.0]["val_psnr"] > 30


def test_auto_converges_within_its_budget() -> None:
    task = _band_limited_task()
    result = run_sweep(task, FitConfig(**SYNTH), ["gauss"], parse_sigmas("auto"), rounds=4)
    auto = result.auto
    assert auto is not None and auto["rounds_used"] <= 4
    assert auto["converged"] == {"gauss": True}
    tried = sorted(m.sigma for m in result.members)
    best = result.best_config["sigma"]
    assert tried[0] < best < tried[-1]
    assert 1.0 <= best <= 16.0
    # Bracketed: the neighbours tried on either side are no better on validation.
    rows = {r["sigma"]: r["val_psnr"] for r in result.configs}
    below = max(s for s in rows if s < best)
    above = min(s for s in rows if s > best)
    assert rows[best] >= rows[below] and rows[best] >= rows[above]
    assert above / below <= auto["tolerance"] ** 2 + 1e-6


def test_groups_split_by_memory_give_the_same_numbers() -> None:
    task = _band_limited_task(32)
    cfg = FitConfig(**{**SYNTH, "steps": 30})
    sigmas = parse_sigmas("2,8,32")
    together = run_sweep(task, cfg, ["gauss"], sigmas, seeds=2)
    one = member_bytes(task, replace(cfg, sigma=2.0), "fp32", device=torch.device("cpu"))
    apart = run_sweep(task, cfg, ["gauss"], sigmas, seeds=2, memory=int(2.5 * one))
    assert len(together.groups) == 1
    assert [g["members"] for g in apart.groups] == [2, 2, 2]
    for a, b in zip(together.members, apart.members, strict=False):
        assert (a.sigma, a.seed) == (b.sigma, b.seed)
        assert a.metrics["val_psnr"] == pytest.approx(b.metrics["val_psnr"], rel=1e-5)


def test_plan_groups() -> None:
    assert plan_groups([32, 32, 32, 64], [10, 10, 10, 10], 25) == [[0, 1], [2], [3]]
    assert plan_groups([32] * 5, [10] * 5, 1000) == [[0, 1, 2, 3, 4]]
    assert plan_groups([32] * 5, [10] * 5, 40) == [[0, 1, 2], [3, 4]]
    with pytest.raises(UsageError, match="one sweep member needs"):
        plan_groups([32], [100], 50)


def test_parse_sigmas() -> None:
    assert parse_sigmas("1,3,10,30,100").values == (1.0, 3.0, 10.0, 30.0, 100.0)
    assert parse_sigmas(" 3, 1 ,3").values == (3.0, 1.0)
    assert parse_sigmas("1:5:5lin").values == (1.0, 2.0, 3.0, 4.0, 5.0)
    log = parse_sigmas("2:64:8log").values
    assert len(log) == 8 and log[0] == 2.0 and log[-1] == 64.0
    ratios = [b / a for a, b in zip(log, log[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-4)
    assert ratios[0] == pytest.approx(32 ** (1 / 7), rel=1e-4)
    assert parse_sigmas("AUTO").mode == "auto"


@pytest.mark.parametrize("text, message", [
    ("", "empty --sigma list"), (" , ", "empty --sigma list"), ("1,,3", "empty entry"),
    ("1,x", "not a number"), ("-1", "positive"), ("0,1", "positive"), ("inf", "positive"),
    ("2:64", "START:END:Nlog"), ("2:64:8cubic", "START:END:Nlog"), ("2:64:1log", "at least 2"),
    ("64:2:8log", "start must be below"), ("0:2:3lin", "positive"),
])
def test_parse_sigmas_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_sigmas(text)


def test_parse_encodings() -> None:
    assert parse_encodings("gauss, posenc,gauss") == ["gauss", "posenc"]
    with pytest.raises(UsageError, match="unknown encoding 'fourier'"):
        parse_encodings("gauss,fourier")
    with pytest.raises(UsageError, match="empty"):
        parse_encodings(",")


def test_sigma_free_encoding_trains_once() -> None:
    from nfit.sweep import plan_members

    members, notes = plan_members(["gauss", "none"], [1.0, 2.0, 4.0], [0, 1])
    assert sum(m.encoding == "none" for m in members) == 2
    assert all(isinstance(m, Member) and m.sigma is None for m in members if m.encoding == "none")
    assert any("'none' takes no sigma" in n for n in notes)


ARGS = ["--steps", "20", "--features", "16", "--width", "32", "--depth", "3", "--device", "cpu",
        "--precision", "fp32", "--eval-every", "10"]


def test_cli_writes_and_reports(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", "image", str(tiny_rgb), "--encoding", "gauss,none",
                                   "--sigma", "2,8", "--seeds", "2", "--out", str(out), "--json",
                                   *ARGS])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    for name in ("sweep.csv", "sweep.json", "sweep.png", "model.safetensors", "recon.png",
                 "report.json", "curve.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "sweep.json").read_text())["chosen"] == report["chosen"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2 + 2  # gauss x 2 sigmas x 2 seeds, none x 2 seeds
    assert {r["encoding"] for r in rows} == {"gauss", "none"}
    assert any("takes no sigma" in n for n in report["notes"])
    assert "takes no sigma" in res.stderr
    # The chosen configuration has the highest mean validation PSNR of all.
    assert report["chosen"]["val_psnr"] == max(c["val_psnr"] for c in report["configs"])
    fld, meta = load_checkpoint(out / "model.safetensors")
    best = report["best_member"]
    assert meta["field"]["encoding"]["type"] == best["encoding"]
    assert meta["metrics"]["test_psnr"] == pytest.approx(best["test_psnr"])
    info = CliRunner().invoke(app, ["info", str(out / "model.safetensors"), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["valid"]


@pytest.mark.parametrize("extra, message", [
    (["--sigma", "1,,3"], "empty entry"),
    (["--sigma", "2:64"], "START:END:Nlog"),
    (["--encoding", "gauss,wavelet"], "unknown encoding 'wavelet'"),
    (["--sigma", "1,2", "--memory", "0.000001"], "one sweep member needs"),
    (["--split", "all", "--sigma", "2"], "validation split"),
])
def test_cli_bad_input(tiny_rgb: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["sweep", "image", str(tiny_rgb), "--out", str(out), *ARGS,
                                   *extra])
    assert res.exit_code == 2
    assert res.stderr.startswith("nfit: error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_unknown_kind(tiny_rgb: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sweep", "hologram", str(tiny_rgb),
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown signal kind 'hologram'" in res.stderr


def test_encodings_lists_which_take_sigma() -> None:
    res = CliRunner().invoke(app, ["encodings", "--json"])
    entries = {e["name"]: e for e in json.loads(res.stdout)["encodings"]}
    assert entries["gauss"]["uses_sigma"] and entries["posenc"]["uses_sigma"]
    assert not entries["none"]["uses_sigma"] and not entries["basic"]["uses_sigma"]


def test_auto_grid_gives_posenc_the_scales_that_reach_its_frequencies() -> None:
    from nfit.sweep import _own_sigmas

    frequencies = [0.8, 3.2, 12.8, 51.2, 204.8, 3e7]
    assert _own_sigmas("gauss", frequencies) == frequencies
    scales = _own_sigmas("posenc", frequencies)
    assert scales[:5] == [float(f"{math.log2(1 + f):.6g}") for f in frequencies[:5]]
    assert scales[-1] == 20.0  # capped: the largest scale posenc takes
