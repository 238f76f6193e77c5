"""The representation table: quality per parameter and per bit at equal time, whole images.

Two Kodak photographs (kodim05, kodim23; 768x512), every pixel fitted (--split all), each
model given the same time budget on this machine and sized with --params: gauss, posenc,
hashgrid, densegrid, mulfagrid and siren at 3e5 parameters, the best two (by mean PSNR)
also at 1e5, all with a cosine rate (5% warm-up) decaying over the budget, and gauss with
nfit's old defaults beside them (constant rate, full batch, the paper's 4x256 network).
Columns: PSNR and SSIM on every pixel, PSNR of the checkpoint as stored (--store fp16),
parameters, bits per pixel of the stored tensors, steps done.
Then the 2040x1356 DIV2K photograph, whole, with the best family at its default size and a
10-minute budget, with the fit's peak memory (resident set of its process).

Each fit runs in its own process (so its peak memory is its own); a time-budgeted fit's
steps depend on how busy the machine is, so the steps column says what each one got.

    python bench/bench_represent.py                  # 5-minute budget: about 105 minutes
    python bench/bench_represent.py --budget 3m      # the same table at 3 minutes a fit
    python bench/bench_represent.py --families gauss # old defaults and gauss 3e5 only
    python bench/bench_represent.py --quick          # 10 s a fit, one image, no DIV2K
    python bench/bench_represent.py --json runs/represent.json   # rows as they finish
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
IMAGES = ("kodim05", "kodim23")
DIV2K = "div2k-0131"
FAMILIES: dict[str, dict[str, Any]] = {
    "gauss": {"encoding": "gauss"},
    "geoposenc": {"encoding": "geoposenc"},
    "hashgrid": {"encoding": "hashgrid"},
    "densegrid": {"encoding": "densegrid"},
    "mulfagrid": {"encoding": "mulfagrid"},
    "siren": {"model": "siren"},
}
#: every row trains with a cosine rate decaying over its time budget unless it says otherwise
TABLE_SCHEDULE = {"schedule": "cosine", "warmup": 0.05}
OLD_DEFAULTS = {"encoding": "gauss", "schedule": "constant", "warmup": 0.0, "batch": "full",
                "lr": 1e-3}


def one_fit(spec_json: str) -> None:
    """Child process: run one spec, print its report, the stored checkpoint's PSNR and the
    peak resident memory as one JSON line."""
    import torch

    from nfit.api import prepare_task, run
    from nfit.checkpoint import load_checkpoint
    from nfit.config import FitConfig
    from nfit.field import predict
    from nfit.metrics import psnr
    from nfit.spec import spec_from_dict

    spec = spec_from_dict(json.loads(spec_json))
    spec.options = {**TABLE_SCHEDULE, **spec.options}
    report = run(spec)
    fld, _ = load_checkpoint(Path(report["out"]) / "model.safetensors")
    task = prepare_task("image", spec.input, FitConfig(split="all"))
    stored = psnr(predict(fld, task.problem.train_x).clamp(0, 1), task.problem.train_y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"report": {k: report[k] for k in ("test", "parameters", "steps", "checkpoint",
                                                          "wall_time_s", "stopped", "config")},
                      "stored_psnr": float(stored), "peak_rss": peak, "threads": torch.get_num_threads()}))


def fit(image: str, options: dict[str, Any], out: Path) -> dict[str, Any]:
    from nfit.spec import FitSpec

    spec = FitSpec(kind="image", input=str(DATA / f"{image}.png"), out=str(out), force=True,
                   options={"split": "all", "store": "fp16", **options})
    done = subprocess.run([sys.executable, __file__, "--one", spec.to_json()], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fit failed ({image}, {options}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, image: str, result: dict[str, Any]) -> dict[str, Any]:
    r = result["report"]
    return {"model": label, "image": image, "psnr": r["test"]["psnr"], "ssim": r["test"]["ssim"],
            "stored_psnr": result["stored_psnr"], "parameters": r["parameters"],
            "bpp": r["checkpoint"]["bits_per_pixel"], "steps": r["steps"],
            "wall_s": r["wall_time_s"], "peak_gib": result["peak_rss"] / 2**30}


def show(r: dict[str, Any]) -> None:
    print(f"{r['model']:24s} {r['image']:11s} {r['psnr']:7.2f} {r['ssim']:6.3f} {r['stored_psnr']:9.2f} "
          f"{r['parameters']:>10,d} {r['bpp']:6.2f} {r['steps']:6d} {r['wall_s']:7.0f} {r['peak_gib']:6.2f}",
          flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        one_fit(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s a fit, one image, no DIV2K")
    parser.add_argument("--budget", default=None, help="time budget per Kodak fit (default 5m)")
    parser.add_argument("--div2k-budget", default="10m", help="time budget of the DIV2K fit")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--families", default=None,
                        help="comma list of families to fit (with the old-defaults row; then no "
                             "DIV2K or 1e5 rows), e.g. gauss,mulfagrid")
    args = parser.parse_args()
    families = FAMILIES
    if args.families:
        chosen = [f.strip() for f in args.families.split(",") if f.strip()]
        unknown = [f for f in chosen if f not in FAMILIES]
        if unknown or not chosen:
            parser.error(f"--families: choose from {', '.join(FAMILIES)} (got {args.families!r})")
        families = {f: FAMILIES[f] for f in chosen}
    budget = args.budget or ("10s" if args.quick else "5m")
    images = IMAGES[:1] if args.quick else IMAGES
    rows: list[dict[str, Any]] = []

    def keep(r: dict[str, Any]) -> None:
        rows.append(r)
        show(r)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    print(f"--split all, {budget} per fit, weights stored as fp16; PSNR/SSIM of the fitted field, "
          "'stored' = PSNR of the fp16 checkpoint")
    print(f"{'model':24s} {'image':11s} {'PSNR':>7s} {'SSIM':>6s} {'stored':>9s} {'params':>10s} "
          f"{'bpp':>6s} {'steps':>6s} {'wall s':>7s} {'peak GiB':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit"
        for image in images:
            keep(row("gauss, old defaults", image, fit(image, {**OLD_DEFAULTS, "time_budget": budget}, out)))
            for name, options in families.items():
                keep(row(f"{name} 3e5", image, fit(image, {**options, "params": 3e5, "time_budget": budget}, out)))
        mean = {name: sum(r["psnr"] for r in rows if r["model"] == f"{name} 3e5") / len(images)
                for name in families}
        best = sorted(families, key=lambda n: -mean[n])[:2]
        print("mean PSNR at 3e5: " + ", ".join(f"{n} {mean[n]:.2f}" for n in sorted(mean, key=lambda n: -mean[n])))
        if args.families:
            return
        if not args.quick:
            options = FAMILIES[best[0]]
            result = fit(DIV2K, {**options, "time_budget": args.div2k_budget}, out)
            keep(row(f"{best[0]} (default size)", DIV2K, result))
        for name in best:
            for image in images:
                keep(row(f"{name} 1e5", image,
                         fit(image, {**FAMILIES[name], "params": 1e5, "time_budget": budget}, out)))


if __name__ == "__main__":
    main()
