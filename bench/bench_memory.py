"""The memory model (``nfit.memory.member_bytes``) against measured peak RSS, per kind.

Each case runs in a fresh process: it loads the signal and builds the problem, reads its
RSS (the baseline the model does not count), fits, and reports the growth of peak RSS
(ru_maxrss) over that baseline next to the estimate.

    python bench/bench_memory.py            # image, volume, sdf, ct and mri
    python bench/bench_memory.py ct mri     # chosen cases

CT fits a 512^2 perturbed Shepp-Logan phantom (written to a temporary folder) and MRI the
shared 96^3 volume under ``--protocol paper``: both through the whole-grid step, whose
estimate charges the grid's values, one slice's graph and the operators.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CASES = {
    "image": ("image", ROOT / "samples" / "kodim23.png", {"steps": 20}),
    "volume": ("volume", next(iter(sorted((DATA / "volumes").glob("*.nii*"))), None), {"steps": 20}),
    "sdf": ("sdf", DATA / "meshes" / "spot.obj", {"steps": 20, "resolution": 64}),
    "ct": ("ct", "phantom:512", {"steps": 3}),
    "mri": ("mri", DATA / "volumes" / "mni152-t1-96.nii.gz", {"steps": 3, "protocol": "paper"}),
}


def phantom(size: int) -> Path:
    """A perturbed Shepp-Logan phantom of size^2 as a 16-bit PNG in a temporary folder."""
    import tempfile

    from nfit.formats.images import write_image
    from nfit.phantoms import perturbed_shepp_logan

    path = Path(tempfile.mkdtemp(prefix="nfit-bench-")) / f"shepp-{size}.png"
    write_image(path, perturbed_shepp_logan(1, size, 0)[0], 16)
    return path


def child(kind: str, path: str, options: dict) -> None:
    import torch

    from nfit.api import fit_task, prepare_task
    from nfit.device import resolve_device, resolve_precision
    from nfit.job import member_bytes
    from nfit.spec import FitSpec

    cfg = FitSpec(kind=kind, input=path, options=options).config()
    task = prepare_task(kind, path, cfg)
    device = resolve_device(cfg.device)
    estimate = member_bytes(task, cfg, resolve_precision(cfg.precision, device), device=device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fit_task(task, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"estimate": estimate, "measured": peak - base, "threads": torch.get_num_threads()}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return
    chosen = sys.argv[1:] or list(CASES)
    print(f"{'kind':8s}{'estimate MB':>14s}{'measured MB':>14s}{'est/meas':>10s}")
    for name in chosen:
        kind, path, options = CASES[name]
        if isinstance(path, str) and path.startswith("phantom:"):
            path = phantom(int(path.split(":")[1]))
        if path is None or not Path(path).exists():
            print(f"{name:8s}  (no data)")
            continue
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), json.dumps(options)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{name:8s}{r['estimate'] / 2**20:14.0f}{r['measured'] / 2**20:14.0f}"
              f"{r['estimate'] / max(r['measured'], 1):10.2f}", flush=True)


if __name__ == "__main__":
    main()
