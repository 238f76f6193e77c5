"""What `nfit batch` costs per job, beside the same fits run by `nfit image` one after another.

The same N small fits (so the per-job cost is not hidden under long fits) run three ways,
in interleaved rounds: N `nfit image` processes in turn, `nfit batch` with the local
executor (one worker), and `nfit batch --executor ray` (a local Ray started for the run).
For each it reports the wall time and the overhead per job: (wall - the fits' own wall
times, from their reports) / N.

    python bench/bench_batch.py            # 4 jobs, 3 rounds
    python bench/bench_batch.py --quick    # 2 jobs, 1 round
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = ["--steps", "50", "--width", "64", "--depth", "3", "--features", "64", "--quiet"]


def images(folder: Path, n: int) -> list[Path]:
    import numpy as np

    from nfit.formats.images import write_image

    y, x = np.mgrid[0:64, 0:64] / 64.0
    paths = []
    for i in range(n):
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (i + 1) * x), 0.5 + 0.4 * np.cos(6 * y),
                        0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
        paths.append(folder / f"img{i}.png")
        write_image(paths[-1], img)
    return paths


def fit_walls(out: Path) -> float:
    return sum(json.loads(p.read_text())["wall_time_s"] for p in out.rglob("report.json"))


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    quick = "--quick" in sys.argv
    n, rounds = (2, 1) if quick else (4, 3)
    nfit = [sys.executable, "-m", "nfit"]
    have_ray = subprocess.run([sys.executable, "-c", "import ray"], capture_output=True).returncode == 0
    ways = ["nfit image x N", "batch local", *(["batch ray"] if have_ray else [])]
    results: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory() as tmp:
        paths = images(Path(tmp), n)
        for r in range(rounds):
            for way in ways:
                out = Path(tmp) / f"{way.replace(' ', '_')}-{r}"
                if way == "nfit image x N":
                    wall = sum(run([*nfit, "image", str(p), *FIT, "--out", str(out / p.stem)]) for p in paths)
                else:
                    extra = ["--executor", "ray"] if way == "batch ray" else []
                    wall = run([*nfit, "batch", *map(str, paths), *FIT, "--out", str(out), *extra])
                results[way].append((wall, (wall - fit_walls(out)) / n))
    print(f"{n} fits of 50 steps on 64x64 images, {rounds} interleaved round(s); medians")
    print(f"{'way':<16} {'wall (s)':>9} {'overhead/job (s)':>17}")
    for way, rows in results.items():
        print(f"{way:<16} {statistics.median(w for w, _ in rows):>9.2f} "
              f"{statistics.median(o for _, o in rows):>17.2f}")
    if not have_ray:
        print("(Ray not installed: pip install 'nfit[ray]' to measure the Ray executor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
