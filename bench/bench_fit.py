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

    python bench/bench_fit.py               # 200 steps each
    python bench/bench_fit.py --quick       # 30 steps each
    python bench/bench_fit.py --fp32-only   # as on a CPU without fast bf16 (or NFIT_CPU_BF16=0)

It finishes on any CPU: bf16 is measured only where the hardware runs it (the rule of
``--precision auto``, ``nfit.device.cpu_has_fast_bf16``; elsewhere bf16 is emulated at a
few percent of fp32's speed), and every measurement stops at ``--limit`` seconds (the
matmul peaks on a smaller product, the loops after fewer steps); what was skipped or
bounded is printed, and why.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from nfit.api import build_task_field, prepare_task
from nfit.config import FitConfig
from nfit.device import CPU_BF16_ENV, compute_dtype, cpu_has_fast_bf16, resolve_device, slice_rows
from nfit.metrics import psnr
from nfit.train import fit

ROOT = Path(__file__).resolve().parents[1]
#: seconds one measurement may take (--limit): a matmul peak, the reference loop, a fit
LIMIT_S = 120.0


def bf16_native(device: torch.device, fp32_only: bool) -> tuple[bool, str]:
    """Whether bf16 runs natively here (what ``--precision auto`` reads), and if not, why."""
    if fp32_only:
        return False, "--fp32-only"
    if device.type == "cuda":
        return (True, "") if torch.cuda.is_bf16_supported() else (False, "this GPU has no bf16")
    if device.type != "cpu":
        return False, f"bf16 is not measured on {device.type}"
    if cpu_has_fast_bf16():
        return True, ""
    if os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("0", "no", "off", "false"):
        return False, f"{CPU_BF16_ENV}=0"
    return False, ("this CPU has neither AMX nor AMD's AVX512-BF16, so bf16 matmuls are emulated "
                   "(at a few percent of fp32's speed) and --precision auto uses fp32")


def _matmul_time(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 8,
                limit_s: float = LIMIT_S) -> tuple[float, int]:
    """(best achieved FLOP/s of a 2n x n by n x n matmul, n): a practical peak for this
    machine. Probes from n = 256 up, doubling while the next product (8x the work) would
    take at most a tenth of ``limit_s``, so where the arithmetic is slow (emulated bf16)
    the peak is taken on a smaller product; repetitions stop at ``limit_s``."""
    def flops(m: int) -> float:
        return 2.0 * (2 * m) * m * m

    target, n = n, min(256, n)
    while True:
        a = torch.randn(2 * n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        took = min(_matmul_time(a, b, device) for _ in range(2))
        if n >= target or 8 * took > limit_s / 10:
            break
        n *= 2
    a = torch.randn(2 * n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best, start = math.inf, time.perf_counter()
    for _ in range(reps):
        best = min(best, _matmul_time(a, b, device))
        if time.perf_counter() - start > limit_s:
            break
    return flops(n) / best, n


def step_flops(n_points: int, dims: list[int]) -> float:
    """Matmul FLOPs of one training step: forward, weight gradients, and input gradients of
    every layer but the first (the encoded input needs none)."""
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    input_grads = sum(a * b for a, b in zip(dims[1:-1], dims[2:]))
    return 2.0 * n_points * (2 * macs + input_grads)


def step_matmuls(n_points: int, dims: list[int], rows: int, dtype: torch.dtype,
                 device: torch.device, reps: int = 3, limit_s: float = LIMIT_S) -> float:
    """Best time of one step's matmuls alone (forward, weight and input gradients), on
    ``rows``-row slices as the fit takes them: the ceiling the fit's shapes allow, below
    the square-matmul peak where their inner dimensions are narrow."""
    rows = min(rows, n_points)
    hs = [torch.randn(rows, a, device=device).to(dtype) for a in dims[:-1]]
    gs = [torch.randn(rows, b, device=device).to(dtype) for b in dims[1:]]
    ws = [torch.randn(a, b, device=device).to(dtype) for a, b in zip(dims[:-1], dims[1:])]
    best, start = math.inf, time.perf_counter()
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
        if time.perf_counter() - start > limit_s:
            break
    return best


def reference_loop(train_x, train_y, test_x, test_y, B, steps: int, seed: int, lr: float,
                   limit_s: float = LIMIT_S):
    """The loop a user writes from the paper: encode every step, fp32, plain Adam. Stops
    after ``limit_s`` seconds; returns (s/step, test PSNR, steps run)."""
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

    start, done = time.perf_counter(), 0
    for _ in range(steps):
        loss = ((model(encode(train_x)) - train_y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if time.perf_counter() - start > limit_s:
            break
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        test_psnr = psnr(model(encode(test_x)), test_y)
    return elapsed / done, test_psnr, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps instead of 200")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--image", default=str(ROOT / "samples" / "kodim23.png"))
    parser.add_argument("--fp32-only", action="store_true",
                        help=f"measure only fp32, as on a CPU without fast bf16 (also: {CPU_BF16_ENV}=0)")
    parser.add_argument("--limit", type=float, default=LIMIT_S,
                        help=f"seconds one measurement may take (default {LIMIT_S:g})")
    args = parser.parse_args()
    steps = args.steps or (30 if args.quick else 200)
    limit = args.limit

    # the loop's own speed: early stopping off, a time budget as the bound
    cfg = FitConfig(encoding="gauss", sigma=10.0, features=256, width=256, depth=4, steps=steps,
                    split="paper", eval_every=steps, patience=0, time_budget=f"{limit:g}s")
    task = prepare_task("image", args.image, cfg)
    device = resolve_device("auto")
    p = task.problem
    test_x, test_y = p.eval_sets["test"]
    n = len(p.train_x)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{n} training points, {steps} steps, at most {limit:g} s a measurement")
    native, why = bf16_native(device, args.fp32_only)
    precisions = ["fp32", "bf16"] if native else ["fp32"]
    notes = [] if native else [f"bf16 not measured: {why}"]

    peaks = {}
    for precision in precisions:
        peak, size = matmul_peak(compute_dtype(precision), device, limit_s=limit)
        peaks[precision] = peak
        if size != 2048:
            notes.append(f"{precision} matmul peak measured on a {2 * size}x{size} by {size}x{size} product "
                         f"(the 2048 one would pass the {limit:g} s limit)")
    print("measured matmul peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))

    B = build_task_field(task, cfg).encoding.B.to(device)  # type: ignore[union-attr]
    ref_s, ref_psnr, ref_steps = reference_loop(p.train_x.to(device), p.train_y.to(device), test_x.to(device),
                                                test_y.to(device), B, steps, cfg.seed, cfg.lr, limit)
    if ref_steps < steps:
        notes.append(f"reference loop bounded: {ref_steps} of {steps} steps in {limit:g} s")
    dims = [512, 256, 256, 256, 3]
    flops = step_flops(n, dims)
    rows = [("reference (fp32, features every step)", ref_s, ref_psnr, "fp32")]
    for precision in precisions:
        fld = build_task_field(task, cfg)
        result = fit(fld, p, cfg, device=device, precision=precision)
        if result.steps < steps:
            notes.append(f"nfit ({precision}) bounded: {result.steps} of {steps} steps in {limit:g} s")
        # fit's wall time includes its one evaluation of the test set; charge it to nfit.
        rows.append((f"nfit ({precision})", result.wall_time / result.steps, result.metrics["test_psnr"],
                     precision))

    print(f"\n{'loop':42s} {'s/step':>8s} {'speed-up':>9s} {'test PSNR':>10s} {'dPSNR':>7s} "
          f"{'GFLOP/s':>8s} {'%fp32 pk':>9s} {'%bf16 pk':>9s} {'%ceiling':>9s}")
    ceilings = {}
    for name, s, value, precision in rows:
        if precision not in ceilings:
            ceilings[precision] = step_matmuls(n, dims, slice_rows(1, device, 256, precision),
                                               compute_dtype(precision), device, limit_s=limit)
        achieved = flops / s
        pct = {k: f"{100 * achieved / v:8.1f}%" if k in peaks else f"{'-':>9s}" for k, v in
               (("fp32", peaks.get("fp32", 0.0)), ("bf16", peaks.get("bf16", 0.0)))}
        print(f"{name:42s} {s:8.4f} {ref_s / s:8.2f}x {value:10.3f} {value - ref_psnr:+7.3f} "
              f"{achieved / 1e9:8.1f} {pct['fp32']} {pct['bf16']} {100 * ceilings[precision] / s:8.1f}%")
    print(f"\nFLOPs per step (matmuls only): {flops / 1e9:.1f} GFLOP")
    for precision, s in ceilings.items():
        print(f"ceiling, {precision}: the step's matmuls alone on the fit's slices take {s:.4f} s "
              f"({100 * flops / s / peaks[precision]:.1f}% of the {precision} peak); %ceiling = that time / "
              "the step's")
    if any(r[0].startswith("nfit") for r in rows) and (ref_steps < steps or any("bounded" in x for x in notes)):
        notes.append("test PSNRs after different step counts are not comparable")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
