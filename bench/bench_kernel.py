"""Time and peak memory of the empirical tangent kernel of the default field.

The default field is Tancik et al.'s: Gaussian Fourier features (256 frequencies,
sigma 10) into a 4-layer ReLU MLP of width 256 with 3 outputs (RGB), 263,683
parameters. The kernel is the mean over outputs of <df_c/dtheta, df_c/dtheta'> on N
random points of [0, 1)^2, by the structured route (nfit.analysis.ntk) and, for a small
N, by dense torch.func Jacobians for comparison. Peak memory is the process's resident
set maximum (ru_maxrss), measured in a fresh subprocess per row so rows do not mix.
Timings are noisy on a shared machine.

    python bench/bench_kernel.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from nfit.analysis.ntk import make_ntk_fn
from nfit.field import build_field
n, impl = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
fld = build_field({"in_dim": 2, "out_dim": 3,
                   "encoding": {"type": "gauss", "sigma": 10.0, "features": 256},
                   "network": {"type": "mlp", "width": 256, "depth": 4}})
x = torch.rand(n, 2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
k = make_ntk_fn(fld, implementation=impl)(x)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "added_mib": (peak - base) / 1024,
                  "params": sum(p.numel() for p in fld.parameters())}))
"""


def run(n: int, impl: str, threads: int) -> dict:
    env_cmd = [sys.executable, "-c", CHILD, str(n), impl]
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(env_cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 points only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = [(512, "structured"), (64, "jacobian")] if args.quick else \
        [(512, "structured"), (2048, "structured"), (4096, "structured"), (128, "jacobian")]
    print(f"{'points':>7} {'route':>11} {'seconds':>9} {'peak RSS MiB':>13} {'added MiB':>10}")
    for n, impl in rows:
        r = run(n, impl, args.threads)
        print(f"{n:>7} {impl:>11} {r['seconds']:>9.2f} {r['peak_mib']:>13.0f} "
              f"{r['added_mib']:>10.0f}")
    print(f"default field: {r['params']} parameters; {args.threads} thread(s); "
          "timings are noisy on a shared machine")


if __name__ == "__main__":
    main()
