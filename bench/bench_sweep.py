"""A K = 8 sweep as one batched ensemble against one fit and 8 sequential fits (CPU).

The paper's 2D protocol: kodim23's 512x512 centre crop, training pixels [::2, ::2]
(65,536 points), Gaussian features (256 frequencies), a 4-layer MLP of width 256.
Members: 4 sigmas x 2 seeds. Few steps, because only throughput is measured; the
first step of each run is a warm-up and not timed separately (it is in every figure).

    python bench/bench_sweep.py            # 8 steps, 3 interleaved steady-state rounds
    python bench/bench_sweep.py --quick    # 3 steps, 1 round

Figures are wall-clock on a shared machine: noisy, compare them within one run. The
steady-state section alternates one fit and the ensemble round by round (so a slow spell
on the machine hits both) and compares their median step times, timed through the
step hooks: the per-model throughput of the training step itself, without the warm-up
and the final metrics that the whole-loop figures include.
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
from nfit.sweep import parse_sigmas, run_sweep
from nfit.train import fit, train

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "samples" / "kodim23.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 steps instead of 8")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved steady-state rounds (default 3, 1 with --quick)")
    args = parser.parse_args()
    steps = args.steps or (3 if args.quick else 8)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)

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
    if rounds > 0:
        steady_state(task, base, members, precision, max(steps, 4), rounds)


def step_seconds(run) -> float:
    """Mean seconds per step of one training run, from its first step hook to its last
    but one: the warm-up step and the last step (which also scores the held-out sets)
    are left out."""
    stamps: list[float] = []
    run(lambda *_: stamps.append(time.perf_counter()))
    return (stamps[-2] - stamps[0]) / (len(stamps) - 2)


def steady_state(task, base: FitConfig, members, precision: str, steps: int, rounds: int) -> None:
    """One fit and the ensemble alternated, each timed over about the same wall time
    (the single fit runs K times as many steps), so that the machine's slow spells
    weigh on both alike."""
    device = torch.device("cpu")
    k = len(members)
    ens_cfg = replace(base, steps=steps)
    one_cfg = replace(base, steps=k * (steps - 2) + 2)
    ratios = []
    print(f"\nsteady state: mean step time after the first step; one fit ({one_cfg.steps} steps) "
          f"and the K={k} ensemble ({steps} steps) alternated for {rounds} round(s)")
    print(f"{'round':>6s}{'one fit s/step':>16s}{'ensemble s/step':>17s}{'per-model ratio':>17s}")
    for r in range(rounds):
        single = step_seconds(lambda hook: fit(build_task_field(task, one_cfg), task.problem, one_cfg,
                                               device=device, precision=precision, on_step=hook))
        fields = [build_task_field(task, replace(ens_cfg, sigma=s, seed=seed)) for s, seed in members]
        batched = step_seconds(lambda hook, fields=fields: train(
            fields, task.problem, ens_cfg, seeds=[seed for _, seed in members], device=device,
            precision=precision, on_step=hook))
        ratios.append(k * single / batched)
        print(f"{r + 1:6d}{single:16.4f}{batched:17.4f}{ratios[-1]:17.3f}", flush=True)
    print(f"per-model throughput, ensemble / one fit (median of rounds): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
