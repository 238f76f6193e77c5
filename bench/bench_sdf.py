"""Signed distances per second on the Stanford bunny (69k faces) for the method nfit uses and
the alternatives measured, their error on a fine sphere, and a short fit's IoU/Chamfer on
spot and the teapot. Timings are noisy on a shared machine. ``--quick`` shortens it."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"


def methods():
    import igl

    from nfit.geometry import signed_distance

    def igl_type(kind):
        return lambda p, v, f: igl.signed_distance(p, v, f, sign_type=kind)[0]

    yield "nfit: AABB distance + fast winding number sign", signed_distance
    yield "igl.signed_distance FAST_WINDING_NUMBER", igl_type(igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
    yield "igl.signed_distance WINDING_NUMBER", igl_type(igl.SIGNED_DISTANCE_TYPE_WINDING_NUMBER)
    try:
        import point_cloud_utils as pcu

        yield "pcu.signed_distance_to_mesh", lambda p, v, f: pcu.signed_distance_to_mesh(p, v, f)[0]
    except ImportError:
        pass


def bench_distance(n: int) -> None:
    import trimesh

    from nfit.formats.meshes import Normalisation, read_mesh

    mesh = read_mesh(DATA / "stanford-bunny.obj")
    v, f = Normalisation.of(mesh).to_domain(mesh.vertices), mesh.faces
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (n, 3))
    sphere = trimesh.creation.icosphere(subdivisions=6)
    sp = rng.uniform(-1.5, 1.5, (2000, 3))
    exact = np.linalg.norm(sp, axis=1) - 1
    diag = np.linalg.norm(np.ptp(sphere.vertices, axis=0))
    print(f"{'method':48s} {'bunny pts/s':>12s} {'sphere max err / diag':>22s}")
    for name, fn in methods():
        t = time.perf_counter()
        fn(pts, v, f)
        rate = n / (time.perf_counter() - t)
        err = np.abs(fn(sp, sphere.vertices, sphere.faces) - exact).max() / diag
        print(f"{name:48s} {rate:12.0f} {err:22.2e}", flush=True)


def bench_fit(steps: int, quick: bool) -> None:
    from nfit.api import run
    from nfit.config import FitConfig
    from nfit.spec import FitSpec

    print(f"\nshort fits ({steps} steps, sigma 2, 256 features, width 256, depth 4, resolution 128)")
    print(f"{'mesh':12s} {'target':10s} {'IoU unif':>9s} {'IoU near':>9s} {'Chamfer':>9s} "
          f"{'F@1%':>6s} {'NC':>6s} {'s':>6s}")
    for name in ("spot", "teapot"):
        for target in ("sdf", "occupancy"):
            cfg = FitConfig(sigma=2.0, steps=steps, eval_every=max(steps // 4, 1),
                            **{"target": target, "resolution": 128,
                                   "pool": 50_000 if quick else 200_000,
                                   "metric_points": 50_000})
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                r = run(FitSpec.of("sdf", DATA / f"{name}.obj", cfg, out=str(Path(tmp) / "run")))["test"]
                wall = time.perf_counter() - t
            print(f"{name:12s} {target:10s} {r['iou_uniform']:9.3f} {r['iou_near_surface']:9.3f} "
                  f"{r['chamfer']:9.4f} {r['fscore_1pct']:6.3f} {r['normal_consistency']:6.3f} "
                  f"{wall:6.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    bench_distance(20_000 if args.quick else 100_000)
    bench_fit(200 if args.quick else 1000, args.quick)


if __name__ == "__main__":
    main()
