"""A stack of K members against K sequential single fits, per model family (CPU or GPU).

The paper's 2D protocol on kodim23 (65,536 training pixels, full batch), each family at
the settings `nfit image --encoding E` gives it, K members differing by seed, the same
steps for both. Rounds alternate the two (a slow spell on a shared machine hits both);
the figure is the median over rounds of stack wall time / sequential wall time (both
including the final scoring of every member).

    python bench/bench_stack.py                       # hashgrid, densegrid, siren, gauss; K=4
    python bench/bench_stack.py --families hashgrid --k 4 --steps 30 --rounds 3
    python bench/bench_stack.py --quick              # one round of 10 steps
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from nfit.api import build_task_field, prepare_task
from nfit.config import merge_config
from nfit.device import resolve_device, resolve_precision
from nfit.train import train

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "samples" / "kodim23.png"
FAMILIES = {"hashgrid": {"encoding": "hashgrid"}, "densegrid": {"encoding": "densegrid"},
            "siren": {"model": "siren"}, "gauss": {"encoding": "gauss", "sigma": 10.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round of 10 steps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = min(args.steps, 10), 1
    device = resolve_device("auto")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"K = {args.k}, {args.steps} steps, {args.rounds} rounds")
    for family in args.families.split(","):
        cfg = merge_config({}, {**FAMILIES[family], "steps": args.steps, "eval_every": args.steps},
                           kind="image")
        precision = resolve_precision(cfg.precision, device)
        task = prepare_task("image", IMAGE, cfg)
        cfgs = [replace(cfg, seed=s) for s in range(args.k)]
        ratios, stacked_s, sequential_s = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fields = [build_task_field(task, c) for c in cfgs]
            train(fields, task.problem, cfg, seeds=list(range(args.k)), device=device,
                  precision=precision)
            stacked = time.perf_counter() - t
            t = time.perf_counter()
            for c in cfgs:
                train([build_task_field(task, c)], task.problem, c, device=device, precision=precision)
            sequential = time.perf_counter() - t
            ratios.append(stacked / sequential)
            stacked_s.append(stacked)
            sequential_s.append(sequential)
        print(f"{family:10s} ({precision}): stack {statistics.median(stacked_s):7.2f} s, "
              f"{args.k} sequential fits {statistics.median(sequential_s):7.2f} s, "
              f"ratio {statistics.median(ratios):.3f} (rounds: "
              f"{', '.join(f'{r:.3f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    main()
