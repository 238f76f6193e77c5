"""`make bench`: run every bench/bench_*.py in turn, each within a time limit, then say
which finished, which were cut short and why. It finishes on any CPU.

    python bench/run.py                    # every benchmark, at most 600 s each
    python bench/run.py --quick            # passed on to each: shorter runs
    python bench/run.py --limit 300        # seconds per benchmark
    python bench/run.py --fp32-only        # as on a CPU without fast bf16 (NFIT_CPU_BF16=0)

On a CPU without fast bf16 (no AMX, no AMD AVX512-BF16: ``nfit.device.cpu_has_fast_bf16``)
the benchmarks measure fp32 only, as ``--precision auto`` fits; ``--fp32-only`` forces that
path on any CPU. Other arguments go to every benchmark.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT_S = 600.0


def run_one(script: Path, args: list[str], env: dict[str, str], limit: float) -> tuple[str, float]:
    """Run one benchmark in its own process group; stop the group at ``limit`` seconds."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return f"stopped at the {limit:g} s limit (its figures above are partial)", time.monotonic() - start
    return ("finished" if rc == 0 else f"failed (exit {rc})"), time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=LIMIT_S, help=f"seconds per benchmark (default {LIMIT_S:g})")
    parser.add_argument("--fp32-only", action="store_true", help="measure as on a CPU without fast bf16")
    ours, rest = parser.parse_known_args()
    # unbuffered, so a benchmark stopped at the limit has printed what it measured
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ours.fp32_only:
        env["NFIT_CPU_BF16"] = "0"
    sys.path.insert(0, str(HERE.parent))
    from nfit.device import cpu_has_fast_bf16

    if ours.fp32_only:
        print("fp32 only (--fp32-only: NFIT_CPU_BF16=0)", flush=True)
    elif not cpu_has_fast_bf16():
        print("this CPU has no fast bf16 (no AMX, no AMD AVX512-BF16): fp32 only, as --precision auto "
              "fits here; bf16 would be emulated at a few percent of fp32's speed", flush=True)
    results = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        outcome, took = run_one(script, rest, env, ours.limit)
        results.append((script.name, outcome, took))
    print("\n=== summary ===")
    for name, outcome, took in results:
        print(f"{name:22s} {took:7.1f} s  {outcome}")
    return 1 if any(o.startswith("failed") for _, o, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
