"""Early stopping on the validation set (``--patience``): a fit that plateaus stops, keeps
and writes its best state, resumes bit-identically across the stop, and the published
protocols keep their fixed steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nfit.api import fit_task, prepare_task, run
from nfit.catalog import KINDS
from nfit.checkpoint import load_checkpoint
from nfit.config import DEFAULT_PATIENCE, FitConfig, merge_config
from nfit.errors import UsageError
from nfit.field import predict
from nfit.metrics import psnr_from_mse
from nfit.resume import load_resume, save_resume
from nfit.spec import FitSpec
from nfit.train import train

PATIENCE, EVERY, CAP = 30, 5, 600


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    """A smooth 32x32 image under independent noise: the held-out pixels first improve as a
    high-bandwidth field learns the smooth part, then worsen as it learns the training
    pixels' noise, so the fit plateaus on validation well before the cap."""
    import imageio.v3 as iio

    y, x = np.mgrid[0:32, 0:32] / 32.0
    img = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * x), 0.5 + 0.3 * np.cos(2 * np.pi * y),
                    0.5 + 0.2 * np.sin(2 * np.pi * (x + y))], axis=-1)
    img = img + np.random.default_rng(0).normal(0, 0.08, img.shape)
    path = tmp_path_factory.mktemp("noisy") / "noisy.png"
    iio.imwrite(path, (np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return path


def options(**kw) -> dict:
    base = dict(sigma=8.0, features=32, width=64, depth=3, steps=CAP, lr=1e-2, split="paper",
                device="cpu", precision="fp32", eval_every=EVERY, patience=PATIENCE)
    base.update(kw)
    return base


def val_curve(history: list[dict[str, float]]) -> dict[int, float]:
    return {int(r["step"]): r["val_psnr"] for r in history}


@pytest.fixture(scope="module")
def stopped(noisy, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("stop") / "run"
    report = run(FitSpec(kind="image", input=str(noisy), options=options(), out=str(out)))
    return report


def test_a_fit_that_plateaus_stops_and_writes_its_best_state(noisy, stopped) -> None:
    report, out = stopped, Path(stopped["out"])
    assert report["stopped"] == "plateau" and report["steps"] < CAP
    best = report["best_step"]
    rows = [r.split(",") for r in (out / "curve.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    curve = {int(r[0]): float(r[header.index("val_psnr")]) for r in rows}
    # the best step is the curve's highest validation PSNR, the fit stopped PATIENCE steps on
    assert best == max(curve, key=lambda s: curve[s])
    assert PATIENCE <= report["steps"] - best < PATIENCE + EVERY
    assert max(curve) == report["steps"] and curve[report["steps"]] < curve[best]
    assert report["early_stopping"] == {"patience": PATIENCE, "score": "val_psnr", "best_step": best}
    # the report's validation and test figures are the best step's (fp32 both ways)
    assert report["val"]["psnr"] == pytest.approx(curve[best], abs=1e-3)
    # the checkpoint is the best state: it renders the best step's PSNR, not the last's
    fld, _ = load_checkpoint(out / "model.safetensors")
    task = prepare_task("image", noisy, FitConfig(**options()))
    for role in ("val", "test"):
        x, y = task.problem.eval_sets[role]
        mse = float(((predict(fld, x) - y) ** 2).mean())
        assert psnr_from_mse(mse) == pytest.approx(report[role]["psnr"], abs=1e-4)
    x, y = task.problem.eval_sets["val"]
    assert abs(psnr_from_mse(float(((predict(fld, x) - y) ** 2).mean())) - curve[report["steps"]]) > 0.01


def test_resume_across_an_early_stop_is_bit_identical(noisy, stopped, tmp_path) -> None:
    cfg = merge_config({}, options(), kind="image")
    task = prepare_task("image", noisy, cfg)
    best, end = stopped["best_step"], stopped["steps"]
    # one state before the best step, one after it (the plateau counting), through the file
    at = {best - EVERY, best + 2 * EVERY + 1}
    saved = {}

    def on_step(step, capture):
        if step in at:
            state = capture()
            path = save_resume(tmp_path / str(step), state, {"kind": "image", "config": cfg.to_dict()})
            saved[step] = load_resume(path, {k: tuple(v.shape) for k, v in state.model.items()})

    whole = fit_task(task, cfg, on_step=on_step)
    assert whole.steps == end and whole.extra["early_stopping"]["best_step"] == best
    assert saved[best + 2 * EVERY + 1].best_model and saved[best + 2 * EVERY + 1].best["steps"] == [best]
    for step, state in saved.items():
        resumed = fit_task(task, cfg, start=state)
        a, b = whole.field.state_dict(), resumed.field.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), step
        assert resumed.metrics == whole.metrics and resumed.steps == end
        assert resumed.extra == whole.extra


def test_protocol_paper_keeps_its_fixed_steps(noisy, stopped, tmp_path) -> None:
    for kind, facts in KINDS.items():
        for name, recipe in facts.protocols.items():
            assert recipe["*"].get("patience") == 0, (kind, name)
    # the same fit as the one that plateaued, under the protocol: every step is run
    flags = {k: v for k, v in options().items() if k not in ("patience", "lr", "split", "steps")}
    out = tmp_path / "paper"
    steps = stopped["steps"] + 3 * EVERY
    paper = run(FitSpec(kind="image", input=str(noisy), options={**flags, "protocol": "paper", "steps": steps,
                                                                  "lr": 1e-2}, out=str(out)))
    assert paper["config"]["patience"] == 0 and paper["config"]["batch"] == "full"
    assert paper["steps"] == steps and paper["stopped"] == "steps"
    assert "early_stopping" not in paper and "best_step" not in paper
    # --patience 0 is the same loop: the last state, bit for bit (the protocol also starts
    # from the paper's initialisation)
    off = run(FitSpec(kind="image", input=str(noisy), options=options(patience=0, steps=steps, batch="full",
                                                                      init="paper"),
                      out=str(tmp_path / "off")))
    assert off["steps"] == steps and off["metrics"] == paper["metrics"]


def test_patience_defaults_where_there_is_a_validation_set(noisy) -> None:
    cfg = merge_config({}, {}, kind="image")
    assert cfg.patience is None
    from nfit.train import patience_of

    assert patience_of(None, prepare_task("image", noisy, FitConfig(split="paper")).problem) == DEFAULT_PATIENCE
    assert patience_of(None, prepare_task("image", noisy, FitConfig(split="all")).problem) == 0
    with pytest.raises(UsageError, match="--patience"):
        prepare_task("image", noisy, FitConfig(split="all", patience=50))
    with pytest.raises(UsageError, match="--patience"):
        merge_config({}, {"patience": -1}, kind="image")
    assert merge_config({}, {"protocol": "paper"}, kind="sdf").patience == 0


def test_stack_members_keep_their_own_best_and_stop_together(noisy) -> None:
    cfg = merge_config({}, options(), kind="image")
    task = prepare_task("image", noisy, cfg)
    from nfit.signals import build_task_field

    seeds = [0, 1, 2]
    fields = [build_task_field(task, FitConfig(**{**cfg.to_dict(), "seed": s})) for s in seeds]
    result = train(fields, task.problem, cfg, seeds=seeds, device=torch.device("cpu"), precision="fp32")
    assert result.stopped == "plateau"
    bests = []
    for member in result.members:
        curve = val_curve(member.history)
        assert member.best_step == max(curve, key=lambda s: curve[s])
        assert member.metrics["val_psnr"] == pytest.approx(curve[member.best_step], abs=1e-3)
        bests.append(member.best_step)
    # the stack ran until its last member plateaued, at the first evaluation it could
    assert PATIENCE <= result.steps - max(bests) < PATIENCE + EVERY
    assert json.dumps(bests)  # plain ints
