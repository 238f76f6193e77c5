"""Computed tomography: a field on the N x N grid fitted to its parallel-beam projections.

    nfit ct phantom.png --views 20                     # simulate 20 projections, reconstruct
    nfit ct --sinogram scan.npy --angles 0:180:20      # measured projections (views x bins)
    nfit ct phantom.png --protocol paper --encoding gauss

The field is evaluated on the whole grid each step and projected (``nfit.operators``);
the loss is the mean squared error on the projections only (``nfit.signals.measure``).
Scores: "train" on the fitted projections, "val" on held-out views (``--held-out F``),
"test" on the image against the ground truth when it is known (the simulated image, or
PATH next to ``--sinogram``): the image-domain PSNR the paper reports. Filtered
back-projection of the same training views is the classical baseline in the report.

A square image is the detector's width, as in the paper (what lies outside its inscribed
circle is cut at oblique views). A non-square slice (H x W, as scanners write them) is
zero-padded to the square the detector must span, as ``skimage.transform.radon(image,
circle=False)`` pads it (side ceil(sqrt(2) max(H, W)), ``nfit.operators.detector_square``):
the field covers that square, the projections see the whole slice, the test score is
taken on the slice's own H x W pixels only and the reconstruction is written at H x W.

The paper protocol (Tancik et al. 2020, ``Experiments/2d_CT``, line for line): 512 x 512
perturbed Shepp-Logan phantoms (``nfit phantom shepp --paper``: the paper's own 8),
20 views at ``linspace(0, pi, 21)[:-1]``, the notebook's nearest-neighbour rotate-and-
mean projector (``--projector paper``, with the notebook's float32 angles), the loss
0.5 mean (A f - y)^2 over views and bins (the paper projector's measurements weigh 0.5
in the loss; the scores are not weighted), full-batch Adam at lr 1e-2
for none and basic, 1e-3 with posenc and gauss, the test PSNR on the clipped image
against the phantom; 976 steps, because the notebook runs 1000 updates but its table
reads the last evaluation, taken after update 976 (it evaluates after the update at
step i when i % 25 == 0): the last 24 updates never reach the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.catalog import CT_VIEWS
from nfit.config import FitConfig
from nfit.errors import DataError, UsageError
from nfit.field import Field
from nfit.formats.images import IMAGE_WRITE_EXTENSIONS, write_image
from nfit.io import atomic_path
from nfit.metrics import psnr_from_mse, ssim
from nfit.operators import PROJECTORS, RotationProjector, detector_square, fbp, paper_angles, paper_thetas, parse_angles
from nfit.plots import _figure, _save
from nfit.problem import FitResult
from nfit.signals.base import KindFromFacts, Task
from nfit.signals.grid import render_grid
from nfit.signals.image import IMAGE, load_image, parse_size
from nfit.signals.measure import Measurement, measurement_problem

DEFAULT_VIEWS = CT_VIEWS


def parse_noise(text: str | None, allowed: tuple[str, ...]) -> tuple[str, float] | None:
    """'poisson:I0' | 'gaussian:S' | 'none' -> (model, level) or None."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    model, _, level = text.strip().lower().partition(":")
    if model not in allowed:
        raise UsageError(f"bad --noise {text!r}: choose {', '.join(a + ':LEVEL' for a in allowed)} or none")
    try:
        value = float(level)
    except ValueError:
        raise UsageError(f"bad --noise {text!r}: the level after ':' must be a number") from None
    if not np.isfinite(value) or value <= 0:
        raise UsageError(f"bad --noise {text!r}: the level must be positive")
    return model, value


def held_out_count(total: int, fraction: float, what: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--held-out must be in [0, 1), got {fraction}")
    held = 0 if fraction == 0 else max(1, int(round(fraction * total)))
    if total - held < 1:
        raise UsageError(f"--held-out {fraction} leaves no {what} to fit ({total} in all)")
    return held


def load_sinogram(path: Path) -> np.ndarray:
    """A measured sinogram: (views, bins) real and finite, from .npy."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: a sinogram is read from .npy (views x bins)")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None
    if np.iscomplexobj(data):
        raise DataError(f"{path}: the sinogram holds complex values; projections are real line integrals")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise DataError(f"{path}: unsupported sinogram type {data.dtype}; need numbers")
    if data.ndim != 2 or min(data.shape) < 1:
        raise DataError(f"{path}: a sinogram is 2D (views x bins), got shape {data.shape}")
    data = data.astype(np.float32)
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise DataError(f"{path}: the sinogram holds {bad} NaN or infinite values")
    return data


def load_truth(path: Path, n: int | None = None) -> np.ndarray:
    """A grayscale image as (H, W) float32 in [0, 1]; with ``n`` (a sinogram's bins) its
    detector square must be n wide."""
    signal = load_image(path)
    if signal.out_dim != 1:
        raise DataError(f"{path}: CT reconstructs one channel; the image is {signal.channels} "
                        "(convert it to grayscale)")
    h, w = signal.shape
    if n is not None and detector_side(h, w) != n:
        if h == w:
            raise DataError(f"{path}: the ground truth is {w}x{h} but the sinogram has {n} bins")
        raise DataError(f"{path}: the ground truth is {w}x{h}, whose detector square (padded as radon(circle=False) "
                        f"pads it) is {detector_side(h, w)} wide, but the sinogram has {n} bins")
    return signal.pixels[..., 0].numpy()


def detector_side(h: int, w: int) -> int:
    """The detector's width in pixels: a square image's side; a non-square one's padded square."""
    return h if h == w else detector_square(h, w)[0]


def pad_to_detector(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W) -> (N, N) zero-padded as radon(circle=False) pads it, and (top, left); a square
    image is returned as it is."""
    h, w = image.shape
    if h == w:
        return image, (0, 0)
    side, top, left = detector_square(h, w)
    padded = np.zeros((side, side), dtype=image.dtype)
    padded[top:top + h, left:left + w] = image
    return padded, (top, left)


def add_ct_noise(sino: np.ndarray, noise: tuple[str, float] | None, projector: str, seed: int) -> np.ndarray:
    """Poisson photon counts (I0 per ray, through a domain of unit width) or Gaussian (std in
    image units) on simulated projections."""
    if noise is None:
        return sino
    n = sino.shape[1]
    unit = 1.0 if projector == "paper" else 1.0 / n  # bins -> line integrals over a unit width
    rng = np.random.default_rng(int(seed) + 1)
    model, level = noise
    if model == "gaussian":
        return (sino + rng.normal(0.0, level / unit, size=sino.shape)).astype(np.float32)
    counts = rng.poisson(level * np.exp(-sino.astype(np.float64) * unit))
    return (-np.log(np.maximum(counts, 1) / level) / unit).astype(np.float32)


@dataclass
class CTData:
    """Everything a CT fit reads: projections (V, N), angles (V,) degrees, the split of views."""

    n: int
    angles: np.ndarray
    sinogram: np.ndarray
    train_views: np.ndarray
    held_views: np.ndarray
    projector: str
    truth: np.ndarray | None   # (H, W): the slice, unpadded
    scale: float
    source: str
    shape: tuple[int, int]     # the slice's (H, W); (N, N) when it is square
    offset: tuple[int, int]    # where the slice sits in the N x N detector square
    thetas: np.ndarray | None  # the paper projector's float32 radians, the notebook's own

    def projector_for(self, views: np.ndarray) -> RotationProjector:
        thetas = None if self.thetas is None else self.thetas[views]
        return RotationProjector(self.n, self.angles[views], self.projector, thetas)

    def crop(self, image: np.ndarray) -> np.ndarray:
        (top, left), (h, w) = self.offset, self.shape
        return image[top:top + h, left:left + w]


def _prepare_data(path: Path, cfg: FitConfig) -> CTData:
    projector = cfg.projector or "standard"
    if projector not in PROJECTORS:
        raise UsageError(f"unknown --projector {projector!r}; choose {' or '.join(PROJECTORS)}")
    noise = parse_noise(cfg.noise, ("poisson", "gaussian"))
    truth: np.ndarray | None = None
    thetas: np.ndarray | None = None
    offset = (0, 0)
    if cfg.sinogram is not None:
        sino_path = Path(cfg.sinogram)
        sino = load_sinogram(sino_path)
        if cfg.angles is None:
            raise UsageError("--sinogram needs the angles of its projections: --angles START:END:N or a list")
        angles = parse_angles(cfg.angles)
        if len(angles) != sino.shape[0]:
            raise DataError(f"{sino_path}: {sino.shape[0]} projections (rows) but --angles gives "
                            f"{len(angles)} angles")
        if noise is not None:
            raise UsageError("--noise is added to simulated projections; a measured --sinogram has its own")
        n = sino.shape[1]
        shape = (n, n)
        if path.resolve() != sino_path.resolve():
            truth = load_truth(path, n)
            shape = truth.shape
            offset = pad_to_detector(truth)[1]
        source = str(sino_path)
    else:
        truth = load_truth(path)
        padded, offset = pad_to_detector(truth)
        n, shape = padded.shape[0], truth.shape
        views = cfg.views if cfg.views is not None else DEFAULT_VIEWS
        if views < 1:
            raise UsageError(f"--views must be at least 1, got {views}")
        angles = parse_angles(cfg.angles) if cfg.angles else paper_angles(views)
        if projector == "paper" and not cfg.angles:
            thetas = paper_thetas(views)  # the notebook's float32 angles, to the last bit
        clean = RotationProjector(n, angles, projector, thetas)(torch.from_numpy(padded).reshape(1, -1))[0]
        sino = add_ct_noise(clean.numpy(), noise, projector, cfg.seed)
        source = str(path)
    if n * n > 64_000_000:
        raise UsageError(f"the detector square is {n}x{n}: more than 64 megapixels to fit through the projector")
    held = held_out_count(len(angles), float(cfg.held_out or 0.0), "projections")
    order = np.random.default_rng(int(cfg.seed)).permutation(len(angles))
    held_views, train_views = np.sort(order[:held]), np.sort(order[held:])
    scale = 1.0
    if truth is None:
        # measured data in unknown units: the field's sigmoid covers [0, 1.1 x FBP's peak]
        peak = float(fbp(sino[train_views], angles[train_views], projector).max())
        scale = 1.1 * peak if peak > 1.0 else 1.0
    return CTData(n, angles, sino, train_views, held_views, projector, truth, scale, source,
                  (int(shape[0]), int(shape[1])), (int(offset[0]), int(offset[1])), thetas)


#: the paper's loss is 0.5 mean (A f - y)^2: the weight of its projector's measurements
PAPER_LOSS_FACTOR = 0.5


def _test_set(data: CTData) -> Measurement:
    """The image against the truth on the slice's own pixels, clipped to [0, 1] as the
    paper scores it (the sigmoid field is inside already; measured units are not)."""
    truth = torch.from_numpy(np.ascontiguousarray(data.truth).reshape(-1))  # type: ignore[arg-type]
    (top, left), (h, w), n = data.offset, data.shape, data.n
    if (h, w) == (n, n):
        return Measurement(lambda p: p.clamp(0.0, 1.0), truth)
    rows = torch.arange(top, top + h)[:, None] * n + torch.arange(left, left + w)[None, :]
    index = rows.reshape(-1)

    def crop(p: torch.Tensor) -> torch.Tensor:
        return p[:, index.to(p.device)].clamp(0.0, 1.0)

    return Measurement(crop, truth)


class CTKind(KindFromFacts):
    name = "ct"

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        data = _prepare_data(path, cfg)
        n = data.n
        train = data.projector_for(data.train_views)
        # scored in image units: a sum over N pixels is N times a mean
        score = 1.0 if data.projector == "paper" else 1.0 / n ** 2
        weight = PAPER_LOSS_FACTOR if data.projector == "paper" else 1.0

        def measure(proj: RotationProjector, views: np.ndarray) -> Measurement:
            return Measurement(proj, torch.from_numpy(data.sinogram[views] / data.scale), score, weight)

        sets = {"train": measure(train, data.train_views)}
        if len(data.held_views):
            sets["val"] = measure(data.projector_for(data.held_views), data.held_views)
        if data.truth is not None:
            sets["test"] = _test_set(data)
        problem = measurement_problem((n, n), sets, self.name)
        meta = {"kind": self.name, "source": data.source, "shape": [n, n], "channels": "L", "bit_depth": 16,
                "projector": data.projector, "angles": [float(a) for a in data.angles],
                "train_views": data.train_views.tolist(), "held_out_views": data.held_views.tolist(),
                "noise": cfg.noise, "scale": data.scale, "ground_truth": data.truth is not None,
                "train_points": n * n, "test_points": data.shape[0] * data.shape[1] if data.truth is not None else 0}
        if data.projector == "paper":
            meta["loss"] = "0.5 mean (A f - y)^2 over views and bins (the paper's)"
        if data.shape != (n, n):
            meta["image_shape"] = list(data.shape)
            meta["offset"] = list(data.offset)
            meta["padding"] = (f"the {data.shape[1]}x{data.shape[0]} slice zero-padded to the {n}x{n} square "
                               "the detector spans (as radon(circle=False)); scored and written at its own size")
        return Task(self.name, 2, 1, problem, meta, state=data)

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        data: CTData = task.state
        n = data.n
        device = next(result.field.parameters()).device
        grid = render_grid(result.field, (n, n), 1, device=device).numpy()[..., 0]
        recon = data.crop(grid)
        write_image(out_dir / "recon.png", np.clip(recon, 0, 1), 16)
        files = ["recon.png", "fbp.png", "sinogram.png"]
        if data.scale != 1.0:
            with atomic_path(out_dir / "recon.npy") as tmp:
                np.save(tmp, (recon * data.scale).astype(np.float32))
            files.append("recon.npy")
        full = RotationProjector(n, data.angles, data.projector, data.thetas)
        predicted = full(torch.from_numpy(grid).reshape(1, -1))[0].numpy() * data.scale
        baseline = data.crop(fbp(data.sinogram[data.train_views], data.angles[data.train_views], data.projector))
        write_image(out_dir / "fbp.png", np.clip(baseline / data.scale, 0, 1), 16)
        plot_sinograms(out_dir / "sinogram.png", data.sinogram, predicted, data.held_views)
        test_on = "the field on the whole N x N grid against the ground truth, clipped to [0, 1]"
        if data.shape != (n, n):
            test_on = (f"the field on the slice's own {data.shape[1]}x{data.shape[0]} pixels (inside the {n}x{n} "
                       "detector square) against the ground truth, clipped to [0, 1]")
        extra: dict[str, Any] = {
            "psnr_on": {"train": "training projections (image units)",
                        "val": "held-out projections (image units)",
                        "test": test_on},
            "baseline": {"method": "filtered back-projection (ramp filter) of the training views, clipped to [0, 1]"},
            "files": files}
        if data.truth is not None:
            clipped = np.clip(baseline, 0, 1)
            extra["baseline"]["psnr"] = psnr_from_mse(float(np.mean((clipped - data.truth) ** 2)))
            extra["baseline"]["ssim"] = ssim(clipped[..., None], data.truth[..., None])
            extra["test_ssim"] = ssim(np.clip(recon, 0, 1)[..., None], data.truth[..., None])
        return extra

    def render_extensions(self) -> tuple[str, ...]:
        return IMAGE_WRITE_EXTENSIONS

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        if "image_shape" not in meta:
            return IMAGE.render(fld, {"shape": meta["shape"], "bit_depth": meta.get("bit_depth", 16)}, out,
                                size=size)
        # a padded slice: the slice's own region of the detector square, at its size or --size
        n = int(meta["shape"][0])
        (h, w), (top, left) = meta["image_shape"], meta["offset"]
        out_w, out_h = parse_size(size, 2) if size else (w, h)
        if out_w * out_h > 400_000_000:
            raise UsageError(f"--size {out_w}x{out_h} is more than 400 megapixels")
        device = next(fld.parameters()).device
        scale = torch.tensor([w / n, h / n], device=device)
        shift = torch.tensor([left / n, top / n], device=device)
        values = render_grid(lambda c: fld(c * scale + shift), (out_h, out_w), 1, device=device).numpy()
        jpeg = out.suffix.lower() in (".jpg", ".jpeg")
        write_image(out, np.clip(values, 0, 1), 8 if jpeg else int(meta.get("bit_depth", 16)))
        return {"out": str(out), "size": [out_w, out_h]}


def plot_sinograms(path: Path, measured: np.ndarray, predicted: np.ndarray, held: np.ndarray) -> None:
    """Measured and predicted projections (views x bins) and their difference; held-out views marked."""
    plt, fig = _figure(12.0, 3.6)
    lo, hi = float(min(measured.min(), predicted.min())), float(max(measured.max(), predicted.max()))
    diff = np.abs(predicted - measured)
    for col, (image, label) in enumerate(((measured, "measured"), (predicted, "predicted by the field"),
                                          (diff, "|predicted - measured|"))):
        ax = fig.add_subplot(1, 3, col + 1)
        kwargs = {"vmin": lo, "vmax": hi, "cmap": "gray"} if col < 2 else {"cmap": "inferno"}
        ax.imshow(image, aspect="auto", interpolation="nearest", **kwargs)
        for v in held:
            ax.axhline(v, color="tab:orange", lw=0.6, alpha=0.7)
        ax.set_xlabel("bin")
        ax.set_ylabel("view")
        ax.set_title(label + (" (held-out views in orange)" if len(held) and col == 0 else ""), fontsize=8)
    _save(plt, fig, path)


CT = CTKind()

__all__ = ["CT", "CTData", "load_sinogram", "parse_noise", "held_out_count"]
