"""Fit speed: nfit's fit against a plain reference loop, in one process, on the same data.

Data: the paper protocol on the bundled Kodak photograph (512x512 centre crop, training on
the 256x256 = 65,536 pixels [::2, ::2], testing on [1::2, 1::2]), gauss sigma=10, m=256,
MLP 4x256. The reference loop is what a user would write from the paper: Fourier features
recomputed every step, fp32, torch's standard Adam. Both start from identical weights.

Prints s/step, the speed ratio, held-out PSNR after the same number of steps, and nfit's
achieved FLOP/s as a fraction of the matmul peak measured in the same run (fp32 and bf16),
and the step's time against its ceiling: the same matmuls alone, on the same slices (a
2048-square matmul's peak is out of reach of 256-wide layers on some CPUs: on an AMX Xeon
the step's bf16 matmuls alone reach about 70% of it).

    python bench/bench_fit.py            # 200 steps each
    python bench/bench_fit.py --quick    # 30 steps each
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from nfit.api import build_task_field, prepare_task
from nfit.config import FitConfig
from nfit.device import compute_dtype, resolve_device, resolve_precision, slice_rows
from nfit.metrics import psnr
from nfit.train import fit

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 8) -> float:
    """Best achieved FLOP/s of a square matmul, a practical peak for this machine."""
    a = torch.randn(2 * n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * (2 * n) * n * n / best


def step_flops(n_points: int, dims: list[int]) -> float:
    """Matmul FLOPs of one training step: forward, weight gradients, and input gradients of
    every layer but the first (the encoded input needs none)."""
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    input_grads = sum(a * b for a, b in zip(dims[1:-1], dims[2:]))
    return 2.0 * n_points * (2 * macs + input_grads)


def step_matmuls(n_points: int, dims: list[int], rows: int, dtype: torch.dtype,
                 device: torch.device, reps: int = 3) -> float:
    """Best time of one step's matmuls alone (forward, weight and input gradients), on
    ``rows``-row slices as the fit takes them: the ceiling the fit's shapes allow, below
    the square-matmul peak where their inner dimensions are narrow."""
    rows = min(rows, n_points)
    hs = [torch.randn(rows, a, device=device).to(dtype) for a in dims[:-1]]
    gs = [torch.randn(rows, b, device=device).to(dtype) for b in dims[1:]]
    ws = [torch.randn(a, b, device=device).to(dtype) for a, b in zip(dims[:-1], dims[1:])]
    best = math.inf
    for _ in range(reps + 1):
        t = time.perf_counter()
        for _ in range(n_points // rows):
            for i, (h, g, w) in enumerate(zip(hs, gs, ws)):
                h @ w
                h.T @ g
                if i:
                    g @ w.T
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def reference_loop(train_x, train_y, test_x, test_y, B, steps: int, seed: int, lr: float):
    """The loop a user writes from the paper: encode every step, fp32, plain Adam."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [2 * B.shape[0], 256, 256, 256, 3]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        layers.append(nn.ReLU() if i < len(dims) - 2 else nn.Sigmoid())
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def encode(x):
        proj = 2 * math.pi * x @ B.T
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)

    start = time.perf_counter()
    for _ in range(steps):
        loss = ((model(encode(train_x)) - train_y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        test_psnr = psnr(model(encode(test_x)), test_y)
    return elapsed / steps, test_psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps instead of 200")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--image", default=str(ROOT / "samples" / "kodim23.png"))
    args = parser.parse_args()
    steps = args.steps or (30 if args.quick else 200)

    cfg = FitConfig(encoding="gauss", sigma=10.0, features=256, width=256, depth=4, steps=steps,
                    split="paper", eval_every=steps)
    task = prepare_task("image", args.image, cfg)
    device = resolve_device("auto")
    p = task.problem
    test_x, test_y = p.eval_sets["test"]
    n = len(p.train_x)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{n} training points, {steps} steps")

    peak32 = matmul_peak(torch.float32, device)
    peak16 = matmul_peak(torch.bfloat16, device)
    print(f"measured matmul peak: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")

    B = build_task_field(task, cfg).encoding.B.to(device)  # type: ignore[union-attr]
    ref_s, ref_psnr = reference_loop(p.train_x.to(device), p.train_y.to(device), test_x.to(device),
                                     test_y.to(device), B, steps, cfg.seed, cfg.lr)
    dims = [512, 256, 256, 256, 3]
    flops = step_flops(n, dims)
    rows = [("reference (fp32, features every step)", ref_s, ref_psnr, "fp32")]
    for precision in ("fp32", resolve_precision("auto", device)):
        if any(r[3] == precision and r[0].startswith("nfit") for r in rows):
            continue
        fld = build_task_field(task, cfg)
        result = fit(fld, p, cfg, device=device, precision=precision)
        # fit's wall time includes its one evaluation of the test set; charge it to nfit.
        rows.append((f"nfit ({precision})", result.wall_time / steps, result.metrics["test_psnr"], precision))

    print(f"\n{'loop':42s} {'s/step':>8s} {'speed-up':>9s} {'test PSNR':>10s} {'dPSNR':>7s} "
          f"{'GFLOP/s':>8s} {'%fp32 pk':>9s} {'%bf16 pk':>9s} {'%ceiling':>9s}")
    ceilings = {}
    for name, s, value, precision in rows:
        if precision not in ceilings:
            ceilings[precision] = step_matmuls(n, dims, slice_rows(1, device, 256, precision),
                                               compute_dtype(precision), device)
        achieved = flops / s
        print(f"{name:42s} {s:8.4f} {ref_s / s:8.2f}x {value:10.3f} {value - ref_psnr:+7.3f} "
              f"{achieved / 1e9:8.1f} {100 * achieved / peak32:8.1f}% {100 * achieved / peak16:8.1f}% "
              f"{100 * ceilings[precision] / s:8.1f}%")
    print(f"\nFLOPs per step (matmuls only): {flops / 1e9:.1f} GFLOP")
    for precision, s in ceilings.items():
        peak = peak16 if precision == "bf16" else peak32
        print(f"ceiling, {precision}: the step's matmuls alone on the fit's slices take {s:.4f} s "
              f"({100 * flops / s / peak:.1f}% of the {precision} peak); %ceiling = that time / the step's")


if __name__ == "__main__":
    main()
