"""Schedules, --batch auto, budgets, --params and --store: closed forms and round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nfit.config
import nfit.feeds
from nfit.api import fit_task, prepare_task, run
from nfit.checkpoint import load_checkpoint
from nfit.cli import app
from nfit.config import FitConfig, merge_config, parse_duration
from nfit.errors import UsageError
from nfit.field import predict
from nfit.formats.images import read_image
from nfit.job import member_bytes
from nfit.problem import Problem
from nfit.schedules import lr_factor
from nfit.signals.base import Task
from nfit.signals.grid import grid_coords
from nfit.sizing import count_parameters, size_to_params
from nfit.spec import FitSpec

runner = CliRunner()


def tiny(**kw) -> FitConfig:
    base = dict(sigma=3.0, features=16, width=32, depth=3, steps=40, lr=5e-3, split="all",
                device="cpu", precision="fp32", eval_every=10)
    base.update(kw)
    return FitConfig(**base)


@pytest.mark.parametrize("name", ["constant", "cosine", "exp"])
def test_schedule_factor_matches_its_closed_form(name: str) -> None:
    steps, warmup = 200, 0.05
    decay = {"constant": lambda t: 1.0,
             "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * (t - 1) / steps)),
             "exp": lambda t: 0.1 ** ((t - 1) / steps)}[name]
    for t in (1, 5, 10, 11, 100, 150, 200):
        expected = min(1.0, t / (warmup * steps)) * decay(t)
        assert lr_factor(name, t, steps, warmup=warmup) == pytest.approx(expected, rel=1e-12)
    # exp with a decay length: x0.1 every D steps, as the paper's 3D-shape notebook decays
    assert lr_factor("exp", 5001, 10_000, decay_steps=5000) == pytest.approx(0.1)
    assert lr_factor("exp", 10_001, 20_000, decay_steps=5000) == pytest.approx(0.01)
    # under a time budget the schedule follows the share of the budget spent
    assert lr_factor("cosine", 2, 10**6, elapsed=30.0, budget=60.0) == pytest.approx(0.5)


def test_the_loop_sets_each_steps_rate_from_the_schedule(tiny_rgb: Path) -> None:
    cfg = tiny(encoding="hashgrid", levels=2, log2_table=8, finest_resolution=16, lr=1e-2,
               schedule="cosine", warmup=0.1, steps=20)
    task = prepare_task("image", tiny_rgb, cfg)
    rates: dict[int, list[float]] = {}

    def on_step(step, capture):
        if step in (1, 2, 7, 20):
            rates[step] = [g["lr"] for g in capture().optimizer["param_groups"]]

    fit_task(task, cfg, on_step=on_step)
    for step, groups in rates.items():
        # the grid's table and the MLP are two Adam groups; both follow the schedule
        assert len(groups) == 2
        for lr in groups:
            assert lr == pytest.approx(1e-2 * lr_factor("cosine", step, 20, warmup=0.1), rel=1e-12)


def test_paper_protocol_restores_the_constant_full_batch_recipe() -> None:
    cfg = merge_config({}, {"protocol": "paper"}, kind="image")
    assert (cfg.schedule, cfg.warmup, cfg.batch, cfg.lr, cfg.steps) == ("constant", 0.0, "full", 1e-3, 2000)
    sdf = merge_config({}, {"protocol": "paper"}, kind="sdf")
    assert (sdf.schedule, sdf.decay_steps, sdf.lr, sdf.depth, sdf.target) == ("exp", 5000, 5e-4, 8, "occupancy")
    assert merge_config({}, {"protocol": "paper"}, kind="volume").schedule == "constant"


def test_batch_auto_full_batch_small_minibatches_large(tiny_rgb: Path, monkeypatch) -> None:
    from nfit.feeds import AUTO_MINIBATCH, fixed_batch

    cfg = FitConfig()
    assert cfg.batch == "auto" and fixed_batch(cfg.batch, 256 * 256) == 0
    assert fixed_batch(cfg.batch, 2040 * 1356) == AUTO_MINIBATCH
    assert fixed_batch(FitConfig(batch=512).batch, 1000) == 512 and fixed_batch("full", 10**7) == 0
    with pytest.raises(UsageError, match="--batch"):
        FitConfig(batch="lots").validate()
    # the loop follows the rule: with the threshold below the tiny image's 1024 pixels,
    # auto trains exactly as --batch 256 does, and not as the full batch
    monkeypatch.setattr(nfit.feeds, "AUTO_FULL_BATCH", 1000)
    monkeypatch.setattr(nfit.feeds, "AUTO_MINIBATCH", 256)
    task = prepare_task("image", tiny_rgb, tiny(steps=5))
    auto = fit_task(task, tiny(steps=5)).field.state_dict()
    fixed = fit_task(task, tiny(steps=5, batch=256)).field.state_dict()
    full = fit_task(task, tiny(steps=5, batch="full")).field.state_dict()
    assert all(torch.equal(auto[k], fixed[k]) for k in auto)
    assert not all(torch.equal(auto[k], full[k]) for k in auto)


def test_memory_estimate_of_a_whole_div2k_photograph_fits() -> None:
    h, w = 1356, 2040
    x = grid_coords((h, w))
    y = torch.zeros(h * w, 3)
    task = Task("image", 2, 3, Problem(x, y, {"test": (x, y)}), {"kind": "image", "shape": [h, w]})
    cfg = merge_config({}, {"split": "all"}, kind="image")
    estimate = member_bytes(task, cfg, "bf16", device=torch.device("cpu"))
    # cached bf16 features of every pixel (2.8 GB) plus a bounded step; was 42.65 GiB
    assert h * w * 512 * 2 < estimate < 6 * 2**30


def test_time_budget_stops_and_writes_every_output(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = run(FitSpec(kind="image", input=str(tiny_rgb), out=str(out),
                         options={**_options(), "time_budget": "1s"}))
    assert report["stopped"] == "time budget" and 0 < report["steps"] < report["config"]["steps"]
    assert report["config"]["steps"] == nfit.config.BUDGET_STEP_CAP  # the budget decides
    assert 1.0 <= report["wall_time_s"] < 30
    for name in ("recon.png", "error.png", "curve.csv", "curve.png", "model.safetensors",
                 "config.yaml", "report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["steps"] == report["steps"]
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    with pytest.raises(UsageError, match="time-budget"):
        parse_duration("soon")


def test_target_psnr_stops_when_reached(tiny_rgb: Path) -> None:
    cfg = tiny(steps=400, target_psnr=20.0)
    result = fit_task(prepare_task("image", tiny_rgb, cfg), cfg)
    assert result.extra["stopped"] == "target psnr" and result.steps < 400
    assert result.history[-1]["test_psnr"] >= 20.0
    assert all(row["test_psnr"] < 20.0 for row in result.history[:-1])


@pytest.mark.parametrize("options", [
    {"encoding": "gauss"}, {"encoding": "posenc"}, {"model": "siren"},
    {"encoding": "hashgrid"}, {"encoding": "densegrid"}, {"encoding": "mulfagrid"}])
@pytest.mark.parametrize("budget", [1e5, 3e5])
def test_params_lands_within_five_percent(tiny_rgb: Path, options: dict, budget: float) -> None:
    cfg = merge_config({}, {**options, "params": budget}, kind="image")
    task = prepare_task("image", tiny_rgb, cfg)
    sized = size_to_params(task, cfg)
    count = count_parameters(task, sized)
    assert count is not None and abs(count - budget) <= 0.05 * budget
    with pytest.raises(UsageError, match="--params"):
        size_to_params(task, merge_config({}, {**options, "params": 20}, kind="image"))


def test_params_is_reported_through_run(tiny_rgb: Path, tmp_path: Path) -> None:
    report = run(FitSpec(kind="image", input=str(tiny_rgb), out=str(tmp_path / "p"),
                         options={**_options(), "params": 5e4, "steps": 2}))
    assert abs(report["parameters"] - 5e4) <= 2500 and report["config"]["width"] != 32


def test_store_fp16_round_trips_through_render(tiny_rgb: Path, tmp_path: Path) -> None:
    opts = {**_options(), "steps": 30}
    reports = {store: run(FitSpec(kind="image", input=str(tiny_rgb), out=str(tmp_path / store),
                                  options={**opts, "store": store}))
               for store in ("fp32", "fp16", "bf16")}
    bits = {s: r["checkpoint"]["tensor_bits"] for s, r in reports.items()}
    assert bits["fp16"] == bits["bf16"] < 0.55 * bits["fp32"]  # weights halve; the frequencies stay
    assert reports["fp16"]["checkpoint"]["bits_per_pixel"] == pytest.approx(bits["fp16"] / (32 * 32))
    fields = {s: load_checkpoint(tmp_path / s / "model.safetensors")[0] for s in reports}
    x = grid_coords((32, 32))
    exact = predict(fields["fp32"], x)
    for store, eps in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        w16 = dict(fields[store].named_parameters())
        for name, p in fields["fp32"].named_parameters():  # each weight is its rounding
            assert torch.allclose(w16[name], p, rtol=eps, atol=1e-7), name
        diff = (predict(fields[store], x) - exact).abs().max().item()
        assert 0 < diff < 200 * eps
    # nfit render loads every store; fp16 renders match fp32's within a level of 8 bits
    images = {}
    for store in reports:
        target = tmp_path / f"{store}.png"
        done = runner.invoke(app, ["render", str(tmp_path / store / "model.safetensors"),
                                   "--out", str(target), "--quiet"])
        assert done.exit_code == 0, done.output
        images[store] = read_image(target)[0]
    assert np.abs(images["fp16"] - images["fp32"]).max() <= 1 / 255 + 1e-6
    bad = runner.invoke(app, ["image", str(tiny_rgb), "--store", "int4", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--store" in bad.output and not (tmp_path / "x").exists()


def _options() -> dict:
    return {"sigma": 3.0, "features": 16, "width": 32, "depth": 3, "lr": 5e-3, "split": "all",
            "device": "cpu", "precision": "fp32", "eval_every": 10}


def test_resumed_cosine_fit_is_bit_identical(tiny_rgb: Path) -> None:
    cfg = tiny(steps=12, schedule="cosine", warmup=0.2, batch=256)
    task = prepare_task("image", tiny_rgb, cfg)
    saved = {}

    def on_step(step, capture):
        if step == 5:
            saved["state"] = capture()

    whole = fit_task(task, cfg, on_step=on_step)
    resumed = fit_task(task, cfg, start=saved["state"])
    a, b = whole.field.state_dict(), resumed.field.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics == resumed.metrics


def test_render_in_cpu_chunks_matches_one_chunk_and_the_fits_precision() -> None:
    from nfit.device import eval_chunk
    from nfit.encodings import build_encoding
    from nfit.field import Field, InPrecision
    from nfit.networks import build_network
    from nfit.signals.grid import render_grid

    torch.manual_seed(0)
    enc = build_encoding({"type": "gauss", "sigma": 4.0, "features": 16, "seed": 0}, 2)
    net = build_network({"type": "mlp", "width": 16, "depth": 2}, enc.out_dim, 3)
    fld = Field(enc, net, {"encoding": enc.spec(), "network": net.spec()})
    cpu = torch.device("cpu")
    shape = (37, 300)  # 11,100 points: one full CPU chunk and a partial one
    cpu_chunk = eval_chunk(cpu)
    assert cpu_chunk < 37 * 300 < 2 * cpu_chunk
    chunked = render_grid(fld, shape, 3, device=cpu)
    whole = render_grid(fld, shape, 3, device=cpu, chunk=1 << 16)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    # in bf16 the network reads the fp32 features rounded once, as the fit's cache holds them
    in_bf16 = InPrecision(fld, cpu, "bf16")
    x = grid_coords(shape)[:100]
    with torch.no_grad():
        features = enc(x).to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = net(features).float()
        assert torch.equal(in_bf16(x), expected)
    assert in_bf16.points == 100
