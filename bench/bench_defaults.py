"""How the defaults were chosen: held-out PSNR per unit of work for schedules and batch sizes.

Images none of the tests use (kodim05 for the schedules, kodim08 for the batch size, from
../shared/data/images). The machine is shared, so work is counted in a form that does not
depend on how busy it is: steps of one size for the schedules (a schedule does not change
a step's cost), points evaluated for the batch sizes (a CPU step's time is linear in its
rows); each fit's wall time is printed beside it.

- schedules: the paper split (held-out PSNR on [1::2, 1::2]), gauss 4x256 and hashgrid,
  the same number of full-batch steps: the constant rate (the paper's recipe) against
  cosine with 5% warm-up at several peak rates;
- batch: the whole image (--split all, 393,216 pixels; PSNR on every pixel), the full batch
  against random minibatches of 2^16, 2^17 and 2^18 points, the same number of points
  evaluated (the full batch's --steps times 393,216);
- timed (``--only timed``, on a quiet machine): the same rates at equal time, each fit a
  ``--budget`` (60 s) with nfit's default batch rule: kodim08 and kodim19 on the paper
  split (held-out PSNR), gauss and hashgrid; the MNI152 brain volume (held-out voxels)
  and the spot mesh (near-surface IoU), the constant rate against cosine.

    python bench/bench_defaults.py               # 200 steps, 40 full-batch epochs
    python bench/bench_defaults.py --quick       # 30 steps, 6 epochs
    python bench/bench_defaults.py --only timed --budget 60s   # about 16 minutes
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nfit.api import run
from nfit.spec import FitSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED / "images"

SCHEDULES = [
    ("gauss constant 1e-3 (paper)", {"schedule": "constant", "warmup": 0.0, "lr": 1e-3}),
    ("gauss cosine 1e-3", {"schedule": "cosine", "lr": 1e-3}),
    ("gauss cosine 3e-3", {"schedule": "cosine", "lr": 3e-3}),
    ("gauss cosine 5e-3", {"schedule": "cosine", "lr": 5e-3}),
    ("hashgrid constant 1e-2", {"encoding": "hashgrid", "schedule": "constant", "warmup": 0.0}),
    ("hashgrid cosine 1e-2", {"encoding": "hashgrid", "schedule": "cosine"}),
]
BATCHES = [1 << 16, 1 << 17, 1 << 18, 0]
CONSTANT = {"schedule": "constant", "warmup": 0.0}
COSINE = {"schedule": "cosine", "warmup": 0.05}
TIMED = [
    *[(f"{image} gauss {label}", "image", DATA / f"{image}.png", {"split": "paper", **options})
      for image in ("kodim08", "kodim19")
      for label, options in (("constant 1e-3", CONSTANT), ("cosine 1e-3", COSINE),
                             ("cosine 2e-3", {**COSINE, "lr": 2e-3}))],
    *[(f"{image} hashgrid {label}", "image", DATA / f"{image}.png",
       {"split": "paper", "encoding": "hashgrid", **options})
      for image in ("kodim08", "kodim19") for label, options in (("constant", CONSTANT), ("cosine", COSINE))],
    *[(f"mni152 volume gauss {label}", "volume", SHARED / "volumes" / "mni152-t1-96.nii.gz", options)
      for label, options in (("constant", CONSTANT), ("cosine", COSINE))],
    *[(f"spot sdf gauss {label}", "sdf", SHARED / "meshes" / "spot.obj", options)
      for label, options in (("constant", CONSTANT), ("cosine", COSINE))],
]


def fit(image: str, options: dict, tmp: Path) -> dict:
    spec = FitSpec(kind="image", input=str(DATA / f"{image}.png"), out=str(tmp / "fit"),
                   force=True, options=options)
    return run(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps, 6 epochs")
    parser.add_argument("--only", choices=("schedule", "batch", "timed"), default=None)
    parser.add_argument("--budget", default="60s", help="time budget of each timed fit (60s)")
    parser.add_argument("--steps", type=int, default=None, help="schedule fits' steps (200)")
    parser.add_argument("--epochs", type=int, default=None, help="batch fits' epochs (40)")
    parser.add_argument("--rows", default=None, help="comma list: only the schedule rows containing one")
    args = parser.parse_args()
    steps, epochs = (30, 6) if args.quick else (200, 40)
    steps, epochs = args.steps or steps, args.epochs or epochs
    rows = [(n, o) for n, o in SCHEDULES
            if not args.rows or any(word in n for word in args.rows.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "schedule"):
            print(f"schedules: kodim05 --split paper, {steps} full-batch steps, held-out PSNR")
            for name, options in rows:
                r = fit("kodim05", {"split": "paper", "steps": steps, "eval_every": steps, **options},
                        Path(tmp))
                print(f"{name:30s} test {r['test']['psnr']:6.2f} dB  train {r['train']['psnr']:6.2f} dB "
                      f"({r['wall_time_s']:5.0f} s)", flush=True)
        if args.only in (None, "batch"):
            n = 768 * 512
            print(f"\nbatch: kodim08 --split all ({n:,} pixels), gauss cosine 1e-3, {epochs} epochs "
                  "of points, PSNR on every pixel")
            for batch in BATCHES:
                size = batch or n
                batch_steps = max(1, round(epochs * n / size))
                r = fit("kodim08", {"split": "all", "batch": str(batch or "full"), "steps": batch_steps,
                                    "eval_every": batch_steps}, Path(tmp))
                print(f"--batch {batch or 'full':>7}: {r['test']['psnr']:6.2f} dB after {batch_steps:4d} steps "
                      f"({r['wall_time_s']:5.0f} s)", flush=True)
        if args.only == "timed":
            print(f"\nschedules at equal time: {args.budget} a fit, default batch rule, held-out metrics")
            for name, kind, path, options in TIMED:
                spec = FitSpec(kind=kind, input=str(path), out=str(Path(tmp) / "fit"), force=True,
                               options={"time_budget": args.budget, **options})
                r = run(spec)
                iou = r["test"].get("iou_near_surface")
                extra = f"  IoU near surface {iou:.3f}" if iou is not None else ""
                print(f"{name:34s} test {r['test']['psnr']:6.2f} dB{extra}  ({r['steps']} steps)", flush=True)


if __name__ == "__main__":
    main()
