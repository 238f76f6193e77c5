"""Grid models against the Fourier-feature MLPs on the paper's 2D protocol, and hash-grid speed.

Table 1: for each Kodak image in ../shared/data/images (``--split paper``: 512 centre
crop, train [::2, ::2], test [1::2, 1::2]) and each model, held-out (test) PSNR,
training PSNR, wall time and parameter count. Every model uses its registry defaults
(grids: 2 hidden layers of 64 and Instant-NGP's Adam; siren: no encoding, lr 1e-4);
the Fourier MLPs use sigma 10 as in Tancik et al. Each image's first row, "bilinear", is
no model: the held-out PSNR of bilinear interpolation of the training pixels, a reference
for the grids (a level whose vertices are the training pixels predicts a held-out pixel
by interpolating the four trained vertices around it).

Table 2: forward + backward throughput (points/s) on 2^18 random points of the hash
grid (16 levels, T = 2^19) alone, of its whole field (grid + MLP 64x2), and of the
Gaussian Fourier-feature MLP (256x3) on the same points.

    python bench/bench_grids.py            # 4 images, 2000 steps (hours on a small CPU)
    python bench/bench_grids.py --quick    # 1 image, 100 steps
    python bench/bench_grids.py --quick --steps 30 --models hashgrid,gauss
    python bench/bench_grids.py --images kodim23 --steps 300 --skip-throughput
    python bench/bench_grids.py --skip-throughput --skip-images --sdf-steps 300

Table 3 (``--sdf-steps N``): ``nfit sdf`` on the meshes in ../shared/data/meshes with
gauss (sigma 2), hashgrid and mulfagrid at their defaults: IoU on uniform and
near-surface held-out points, Chamfer distance (marching cubes at resolution 128) and
wall time.

Timings are wall-clock on a shared machine and noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfit.api import build_task_field, fit_task, prepare_task  # noqa: E402
from nfit.config import merge_config  # noqa: E402
from nfit.field import build_field  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "images"
MESHES = ROOT.parent / "shared" / "data" / "meshes"
SDF_MODELS = {
    "gauss": {"encoding": "gauss", "sigma": 2.0},
    "hashgrid": {"encoding": "hashgrid"},
    "mulfagrid": {"encoding": "mulfagrid"},
}
MODELS = {
    "none": {"encoding": "none"},
    "basic": {"encoding": "basic"},
    "geoposenc": {"encoding": "geoposenc", "sigma": 10.0},
    "gauss": {"encoding": "gauss", "sigma": 10.0},
    "hashgrid": {"encoding": "hashgrid"},
    "densegrid": {"encoding": "densegrid"},
    "mulfagrid": {"encoding": "mulfagrid"},
    "siren": {"model": "siren"},
}
#: Variants, run only when named in --models: the hash grid with its finest level at the
#: training lattice's resolution (256 per axis: at 512, held-out pixels sit on vertices
#: that no training pixel touches), and MulFAGrid's published kernel form.
VARIANTS = {
    "hashgrid-256": {"encoding": "hashgrid", "finest_resolution": 256},
    "mulfagrid-paper": {"encoding": "mulfagrid", "kernel_form": "paper"},
}


def throughput(points: int, repeats: int) -> list[tuple[str, float, int]]:
    """(name, points/s of forward+backward, parameters) on ``points`` random 2D points."""
    x = torch.rand(points, 2)
    rows = []
    fields = {
        "hashgrid encoding": None,
        "hashgrid field (grid + MLP 64x2)": merge_config({}, {"encoding": "hashgrid"}),
        "gauss MLP (features cached, 256x3)": merge_config({}, {"encoding": "gauss"}),
    }
    for name, cfg in fields.items():
        if cfg is None:
            cfg = merge_config({}, {"encoding": "hashgrid"})
            module = build_field({"in_dim": 2, "out_dim": 3, "encoding": cfg.encoding_spec(),
                                  "network": cfg.network_spec()}).encoding
            inputs = x
        else:
            fld = build_field({"in_dim": 2, "out_dim": 3, "encoding": cfg.encoding_spec(),
                               "network": cfg.network_spec()})
            if fld.encoding.trainable:
                module, inputs = fld, x
            else:  # fit caches a fixed encoding's features: only the network trains
                module = fld.network
                with torch.no_grad():
                    inputs = fld.encoding(x)
        module(inputs[:1024]).sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            module.zero_grad(set_to_none=True)
            module(inputs).sum().backward()
        elapsed = (time.perf_counter() - start) / repeats
        rows.append((name, points / elapsed, sum(p.numel() for p in module.parameters())))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one image, 100 steps")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset; variants: {', '.join(VARIANTS)}")
    parser.add_argument("--images", default=None,
                        help="comma-separated image stems (e.g. kodim23); default all")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-images", action="store_true", help="no Kodak table")
    parser.add_argument("--sdf-steps", type=int, default=0,
                        help="steps of the mesh table (default 0: no mesh table)")
    parser.add_argument("--meshes", default="spot,stanford-bunny,teapot")
    parser.add_argument("--sdf-models", default=",".join(SDF_MODELS))
    parser.add_argument("--precision", default="auto",
                        help="auto (the CLI's default: bf16 where the CPU has it) or fp32")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    if not args.skip_throughput:
        points = 1 << 18
        print(f"\nforward+backward throughput on {points} points (CPU, "
              f"{torch.get_num_threads()} threads)")
        print(f"{'what':38s} {'points/s':>12s} {'params':>10s}")
        for name, rate, params in throughput(points, 1 if args.quick else 3):
            print(f"{name:38s} {rate:12.3g} {params:10d}", flush=True)

    if not args.skip_images:
        image_table(args)
    if args.sdf_steps > 0:
        sdf_table(args)
    return 0


def sdf_table(args: argparse.Namespace) -> None:
    import tempfile

    from nfit.api import run
    from nfit.spec import FitSpec

    steps = args.sdf_steps
    print(f"\nnfit sdf, {steps} steps, resolution 128, precision {args.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mesh':15s} {'model':10s} {'IoU unif':>9s} {'IoU near':>9s} {'Chamfer':>9s} "
          f"{'wall s':>7s} {'params':>10s}")
    for mesh in [m.strip() for m in args.meshes.split(",") if m.strip()]:
        for name in [m.strip() for m in args.sdf_models.split(",") if m.strip()]:
            cfg = merge_config({}, {**SDF_MODELS[name], "steps": steps, "eval_every": steps,
                                    "device": "cpu", "precision": args.precision,
                                    "resolution": 128})
            with tempfile.TemporaryDirectory() as tmp:
                report = run(FitSpec.of("sdf", MESHES / f"{mesh}.obj", cfg, out=str(Path(tmp) / "run")))
            r = report["test"]
            print(f"{mesh:15s} {name:10s} {r['iou_uniform']:9.3f} {r['iou_near_surface']:9.3f} "
                  f"{r['chamfer']:9.4f} {report['wall_time_s']:7.0f} {report['parameters']:10d}",
                  flush=True)


def bilinear_baseline(image: Path) -> float:
    """Held-out PSNR of bilinear interpolation of the training pixels (paper split): each
    test pixel (2i+1, 2j+1) is the mean of its four diagonal training neighbours (edge
    pixels repeated): the reference for grid levels whose vertices are the training pixels."""
    import imageio.v3 as iio
    import numpy as np

    from nfit.signals.image import PAPER_CROP

    raw = iio.imread(image)
    scale = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else 1.0
    im = raw.astype(np.float64) / scale
    im = im[..., None] if im.ndim == 2 else im[..., :3]
    top, left = (im.shape[0] - PAPER_CROP) // 2, (im.shape[1] - PAPER_CROP) // 2
    crop = im[top:top + PAPER_CROP, left:left + PAPER_CROP]
    train, test = crop[::2, ::2], crop[1::2, 1::2]
    padded = np.pad(train, ((0, 1), (0, 1), (0, 0)), mode="edge")
    interp = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4
    return float(-10 * np.log10(((interp - test) ** 2).mean()))


def image_table(args: argparse.Namespace) -> None:
    if not IMAGES.is_dir():
        print(f"no images at {IMAGES}; skipping the fit table")
        return
    images = sorted(IMAGES.glob("kodim*.png"))
    if args.images:
        wanted = {stem.strip() for stem in args.images.split(",")}
        images = [image for image in images if image.stem in wanted]
    images = images[: 1 if args.quick else None]
    steps = args.steps or (100 if args.quick else 2000)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"\npaper protocol (512 crop, train [::2,::2], test [1::2,1::2]), {steps} steps, "
          f"precision {args.precision}, {torch.get_num_threads()} threads")
    print(f"{'image':10s} {'model':15s} {'test PSNR':>9s} {'train PSNR':>10s} "
          f"{'wall s':>8s} {'params':>9s}")
    totals: dict[str, list[float]] = {}
    for image in images:
        base = bilinear_baseline(image)
        totals.setdefault("bilinear", []).append(base)
        print(f"{image.stem:10s} {'bilinear':15s} {base:9.2f} {'exact':>10s} {'-':>8s} {0:9d}",
              flush=True)
        for name in names:
            cfg = merge_config({}, {**{**MODELS, **VARIANTS}[name], "steps": steps, "split": "paper",
                                    "eval_every": steps, "device": "cpu",
                                    "precision": args.precision})
            task = prepare_task("image", image, cfg)
            result = fit_task(task, cfg)
            params = build_task_field(task, cfg).parameter_count()
            test, train = result.metrics["test_psnr"], result.metrics["train_psnr"]
            totals.setdefault(name, []).append(test)
            print(f"{image.stem:10s} {name:15s} {test:9.2f} {train:10.2f} "
                  f"{result.wall_time:8.1f} {params:9d}", flush=True)
    print("\nmean held-out PSNR: " + ", ".join(
        f"{k} {sum(v) / len(v):.2f}" for k, v in totals.items()))


if __name__ == "__main__":
    sys.exit(main())
