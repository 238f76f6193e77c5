"""A K = 8 sweep as one batched ensemble against one fit and 8 sequential fits (CPU).

The paper's 2D protocol: kodim23's 512x512 centre crop, training pixels [::2, ::2]
(65,536 points), Gaussian features (256 frequencies), a 4-layer MLP of width 256.
Members: 4 sigmas x 2 seeds. Few steps, because only throughput is measured; the
first step of each run is a warm-up and not timed separately (it is in every figure).

    python bench/bench_sweep.py            # 8 steps
    python bench/bench_sweep.py --quick    # 3 steps

Figures are wall-clock on a shared machine: noisy, compare them within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from nfit.api import build_task_field, prepare_task
from nfit.config import FitConfig
from nfit.device import resolve_precision
from nfit.fit import fit
from nfit.sweep import parse_sigmas, run_sweep

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "samples" / "kodim23.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 steps instead of 8")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 8)

    device = torch.device("cpu")
    base = FitConfig(encoding="gauss", sigma=10.0, steps=steps, eval_every=10**9, device="cpu",
                     split="paper")
    precision = resolve_precision(base.precision, device)
    task = prepare_task("image", IMAGE, base)
    sigmas = parse_sigmas("3,6,12,24")
    members = [(s, seed) for s in sigmas.values for seed in (0, 1)]

    # One fit, then the 8 sequential fits the sweep replaces.
    sequential: list[float] = []  # whole fit() calls, final metrics included
    loops: list[float] = []  # their training loops alone
    seq_test: dict[tuple[float, int], float] = {}
    for sigma, seed in members:
        cfg = replace(base, sigma=sigma, seed=seed)
        fld = build_task_field(task, cfg)
        start = time.perf_counter()
        result = fit(fld, task.problem, cfg, device=device, precision=precision)
        sequential.append(time.perf_counter() - start)
        loops.append(result.wall_time)
        seq_test[(sigma, seed)] = result.metrics["test_psnr"]
    # The median fit: the first one also pays the kernels' warm-up.
    one_fit = statistics.median(loops)

    start = time.perf_counter()
    sweep = run_sweep(task, base, ["gauss"], sigmas, seeds=2)
    ensemble_wall = time.perf_counter() - start
    train_wall = sum(g["wall_time_s"] for g in sweep.groups)
    k = len(members)
    drift = max(abs(m.metrics["test_psnr"] - seq_test[(m.sigma, m.seed)]) for m in sweep.members)

    single_rate = steps / one_fit
    ensemble_rate = k * steps / train_wall
    print(f"paper 2D protocol, {len(task.problem.train_x)} training pixels, width 256, depth 4, "
          f"256 Gaussian features; {steps} steps; cpu, {precision}, "
          f"{torch.get_num_threads()} threads; groups: {[g['members'] for g in sweep.groups]}")
    print(f"{'':46s}{'value':>12s}")
    rows = [
        ("one fit (median): training loop (s)", one_fit),
        ("one fit: steps/s", single_rate),
        (f"ensemble K={k}: training loop (s)", train_wall),
        ("ensemble: per-model steps/s", ensemble_rate),
        ("per-model throughput, ensemble / one fit", ensemble_rate / single_rate),
        (f"{k} sequential training loops (s)", sum(loops)),
        (f"loops: {k} sequential / ensemble", sum(loops) / train_wall),
        (f"{k} sequential fit() calls, with metrics (s)", sum(sequential)),
        ("whole sweep, with metrics (s)", ensemble_wall),
        (f"whole: {k} sequential / sweep", sum(sequential) / ensemble_wall),
        ("max |test PSNR ensemble - single| (dB)", drift),
    ]
    for name, value in rows:
        print(f"{name:46s}{value:12.4g}")


if __name__ == "__main__":
    main()
