"""Volume fitting: steps/s and peak memory for the 96x112x96 MRI and a 256^3 synthetic volume.

Each case runs in its own process. The table shows what the process holds once the
volume is loaded (interpreter, torch, the volume), the peak resident memory during the
fit (Linux VmHWM, reset after loading; else ``ru_maxrss``) and the difference: the fit's own
working memory, which must depend on --batch, not on the volume's size. On CUDA the
peak GPU allocation is reported too. Timings are noisy on a shared machine.

    python bench/bench_volume.py [--quick] [--batch N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MRI = ROOT.parent / "shared" / "data" / "volumes" / "mni152-t1-96.nii.gz"

CHILD = r"""
import json, resource, sys, time
import torch
from nfit.api import fit_task, prepare_task
from nfit.config import FitConfig

path, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
def reset_peak():
    # Linux: writing 5 to clear_refs resets VmHWM (the peak), so loading does not count.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cfg = FitConfig(encoding="gauss", sigma=5, features=256, width=256, depth=4, steps=steps,
                batch=batch, eval_every=steps, precision="fp32")
task = prepare_task("volume", path, cfg)
loaded = status_mb("VmRSS")
reset = reset_peak()
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
result = fit_task(task, cfg)
total = time.perf_counter() - start
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
peak = status_mb("VmHWM") if reset else rss_mb()
print(json.dumps({"before_mb": loaded, "peak_mb": peak, "steps_per_s": result.steps_per_s,
                  "fit_s": total, "test_psnr": result.metrics.get("test_psnr"),
                  "voxels": int(torch.tensor(task.meta["shape"]).prod()),
                  "device": result.device, "gpu_peak_mb": gpu}))
"""


def synthetic(path: Path, n: int) -> Path:
    """An (n, n, n) float32 volume of smooth waves plus a sphere, written as .npy."""
    import numpy as np

    axis = np.linspace(0, 1, n, endpoint=False, dtype=np.float32)
    x = axis[None, None, :]
    y = axis[None, :, None]
    z = axis[:, None, None]
    vol = np.sin(6 * x) * np.cos(5 * y) + np.sin(7 * z + 3 * x)
    vol += (((x - 0.5) ** 2 + (y - 0.5) ** 2 + (z - 0.5) ** 2) < 0.1).astype(np.float32)
    np.save(path, vol.astype(np.float32))
    return path


def run_case(path: Path, steps: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(steps), str(batch)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"bench case {path.name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, a smaller batch")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    steps = args.steps or (10 if args.quick else 50)
    batch = args.batch or (1 << 13 if args.quick else 1 << 16)
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        if MRI.exists():
            cases.append(("MRI 96x112x96 uint8", MRI))
        cases.append(("synthetic 256^3 float32", synthetic(Path(tmp) / "synthetic256.npy", 256)))
        rows = [(name, run_case(path, steps, batch)) for name, path in cases]
    print(f"\nvolume fit: gauss 256 features, MLP 256x4, batch {batch}, {steps} steps "
          "(timings noisy on a shared machine)")
    header = (f"{'case':26} {'voxels':>10} {'steps/s':>8} {'RSS before fit':>15} "
              f"{'RSS peak':>9} {'fit working set':>16} {'GPU peak':>9} {'test PSNR':>9}")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        gpu = f"{r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] is not None else "-"
        print(f"{name:26} {r['voxels']:>10,} {r['steps_per_s']:>8.2f} {r['before_mb']:>12.0f} MB "
              f"{r['peak_mb']:>6.0f} MB {r['peak_mb'] - r['before_mb']:>13.0f} MB {gpu:>9} "
              f"{r['test_psnr']:>9.2f}")
    print(f"device: {rows[0][1]['device']}; 'fit working set' = peak RSS minus RSS once the "
          "volume is loaded; it should not grow with the voxel count.")


if __name__ == "__main__":
    main()
