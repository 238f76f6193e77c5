"""Rendering speed: a default gauss field (4x256, m = 256) evaluated on a full grid, as
``nfit render`` does, in fp32 (before) and in the fit's precision (bf16 autocast for the
network, fp32 features: ``nfit.train.InPrecision``), in interleaved rounds.

    python bench/bench_render.py                 # 2048x2048, two rounds
    python bench/bench_render.py --quick         # 512x512
    python bench/bench_render.py --size 4096
"""

from __future__ import annotations

import argparse
import time

import torch

from nfit.device import resolve_device, resolve_precision
from nfit.field import InPrecision, build_field
from nfit.signals.grid import render_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512x512")
    parser.add_argument("--size", type=int, default=None, help="side of the square grid (2048)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    side = args.size or (512 if args.quick else 2048)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    fld = build_field({"in_dim": 2, "out_dim": 3,
                       "encoding": {"type": "gauss", "sigma": 10.0, "features": 256, "seed": 0},
                       "network": {"type": "mlp", "width": 256, "depth": 4, "output": "sigmoid"}})
    fld.to(device).eval()
    fast = InPrecision(fld, device, precision)
    n = side * side
    print(f"{side}x{side} = {n:,} points, device {device}, threads {torch.get_num_threads()}, "
          f"fit precision {precision}")
    outputs = {}
    for round_ in range(args.rounds):
        for name, fn in (("fp32", fld), (precision, fast)):
            start = time.perf_counter()
            outputs[name] = render_grid(fn, (side, side), 3, device=device)
            seconds = time.perf_counter() - start
            print(f"round {round_ + 1} {name:5s}: {seconds:7.1f} s, {n / seconds:12,.0f} points/s", flush=True)
    if len(outputs) == 2:
        a, b = outputs.values()
        print(f"max |difference| {float((a - b).abs().max()):.2e} (8-bit level: {1 / 255:.2e})")


if __name__ == "__main__":
    main()
