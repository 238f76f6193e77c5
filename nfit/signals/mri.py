"""MRI: a field on the volume's grid fitted to Cartesian k-space samples.

    nfit mri brain.nii.gz --fraction 0.126          # simulate a variable-density mask, reconstruct
    nfit mri --kspace data.npy --mask mask.npy      # measured complex k-space
    nfit mri brain.nii.gz --protocol paper --encoding gauss

Forward model (``nfit.operators.KSpaceOperator``): the unnormalised 3D DFT of the field
on the grid at the mask's entries; loss: the mean squared complex magnitude of the
residual over the whole k-space grid (unsampled entries count 0), as in Tancik et al.
2020, ``Experiments/3d_MRI``. The field is real and in [0, 1] (sigmoid), so a measured
scan's phase is not modelled: it fits the real image whose spectrum matches the samples.

Scores: "train" (fitted samples), "val" (held-out samples, ``--held-out F``), "test"
(the volume against the ground truth when known), each scored MSE in image units (the
orthonormal DFT: divided by N). The zero-filled inverse FFT of the training samples is
the classical baseline.

The loss is the paper's, 0.5 mean over the whole k-space grid of |F(f) mask - y|^2
(unsampled entries count 0): the training set's weight is 0.5 M / N (M sampled of N);
the scores are per sample.

The paper protocol (``Experiments/3d_MRI``, line for line where the data allow): an 8-bit
volume divided by 255 (the notebook's ``/255.0`` on ATLAS; other types keep nfit's
min-max scaling to [0, 1]), area-resized to 96^3 (the notebook's local-mean ``resize``);
the paper's own mask (``nfit.operators.paper_mri_mask``: its 200,000 draws from
``PRNGKey(10)``, truncated, 12.56% of k-space) unless ``--fraction`` asks for another;
full-batch Adam at lr 2e-3 for every mapping; sigma 5 (gauss), 4 (posenc); the test PSNR
on the clipped volume; 976 steps, the update after which the notebook takes the
evaluation its table reports (1000 updates, evaluated when i % 25 == 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.catalog import MRI_FRACTION
from nfit.config import FitConfig
from nfit.errors import DataError, UsageError
from nfit.field import Field
from nfit.formats.volumes import MAX_VOXELS, VOLUME_EXTENSIONS, from_unit, scaled_affine, write_volume
from nfit.metrics import psnr_from_mse, ssim
from nfit.operators import PAPER_KEY, PAPER_MASK_DRAWS, KSpaceOperator, paper_mri_mask, variable_density_mask
from nfit.plots import _figure, _save
from nfit.problem import FitResult
from nfit.signals.base import KindFromFacts, Task
from nfit.signals.ct import parse_noise
from nfit.signals.grid import render_grid
from nfit.signals.image import parse_size
from nfit.signals.measure import Measurement, measurement_problem
from nfit.signals.volume import VOLUME, load_volume, mid_slices, plot_volume_slices

DEFAULT_FRACTION = MRI_FRACTION


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: {what} is read from .npy")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None


def load_kspace(kspace_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Measured k-space (a, b, c) complex64 and its mask (a, b, c) bool, checked."""
    kspace = _load_npy(kspace_path, "k-space")
    if not np.iscomplexobj(kspace):
        raise DataError(f"{kspace_path}: k-space must be complex (got {kspace.dtype}); save the complex array")
    if kspace.ndim != 3:
        raise DataError(f"{kspace_path}: k-space must be 3D (a x b x c), got shape {kspace.shape}")
    bad = int((~np.isfinite(kspace)).sum())
    if bad:
        raise DataError(f"{kspace_path}: k-space holds {bad} NaN or infinite values")
    mask = _load_npy(mask_path, "a mask")
    if mask.shape != kspace.shape:
        raise DataError(f"{mask_path}: mask shape {mask.shape} differs from the k-space's {kspace.shape}")
    if np.iscomplexobj(mask) or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        raise DataError(f"{mask_path}: a mask holds 0/1 (or booleans), got {mask.dtype}")
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise DataError(f"{mask_path}: the mask holds NaN or infinite values")
    mask = mask != 0
    if not mask.any():
        raise DataError(f"{mask_path}: the mask samples nothing (every entry is 0)")
    return kspace.astype(np.complex64), mask


def resample(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(a, b, c) -> shape by linear interpolation over the same domain (scipy.ndimage.zoom)."""
    from scipy.ndimage import zoom

    factors = [n / o for n, o in zip(shape, values.shape, strict=True)]
    out = zoom(values, factors, order=1, grid_mode=True, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def area_resize(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize by the local mean (each new cell averages the old cells it overlaps, by
    overlap): the resize of the paper's notebooks (non-reflecting), axis by axis."""
    out = values.astype(np.float64)
    for axis, (old, new) in enumerate(zip(values.shape, shape, strict=True)):
        old_edges = np.linspace(0, old, old + 1)
        new_edges = np.linspace(0, old, new + 1)
        upper = np.minimum(new_edges[1:, None], old_edges[None, 1:])
        lower = np.maximum(new_edges[:-1, None], old_edges[None, :-1])
        weights = np.maximum(upper - lower, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        out = np.moveaxis(np.tensordot(out, weights, axes=([axis], [1])), -1, axis)
    return out.astype(np.float32)


@dataclass
class MRIData:
    shape: tuple[int, int, int]
    samples: np.ndarray        # (M,) complex64 measured values at mask entries, in flat order
    index: np.ndarray          # (M,) flat indices of the sampled entries
    train: np.ndarray          # positions into samples/index of the fitted ones
    held: np.ndarray
    truth: np.ndarray | None   # (a, b, c) in [0, 1]
    scale: float
    source: str
    meta: dict[str, Any]
    points_drawn: int = 0


def _mask_of(shape: tuple[int, ...], flat: np.ndarray) -> np.ndarray:
    mask = np.zeros(math.prod(shape), dtype=bool)
    mask[flat] = True
    return mask.reshape(shape)


def _prepare_data(path: Path, cfg: FitConfig) -> MRIData:
    noise = parse_noise(cfg.noise, ("gaussian",))
    truth: np.ndarray | None = None
    drawn = 0
    volume_meta: dict[str, Any] = {"affine": None, "units": None, "sform_code": 1, "range": [0.0, 1.0],
                                   "dtype": "float32"}
    if (cfg.kspace is None) != (cfg.mask is None):
        raise UsageError("--kspace and --mask go together: the measured samples and where they are")
    if cfg.kspace is not None:
        if cfg.fraction is not None:
            raise UsageError("--fraction sets a simulated mask; measured --kspace comes with its --mask")
        if noise is not None:
            raise UsageError("--noise is added to simulated k-space; measured --kspace has its own")
        kspace, mask = load_kspace(Path(cfg.kspace), Path(cfg.mask or ""))
        shape = tuple(int(s) for s in kspace.shape)
        if cfg.grid is not None:
            raise UsageError("--grid resamples a volume before simulating; measured k-space fixes the grid")
        index = np.flatnonzero(mask.ravel())
        samples = kspace.ravel()[index]
        if path.resolve() != Path(cfg.kspace).resolve():
            signal = load_volume(path)
            if signal.shape != shape or signal.out_dim != 1:
                raise DataError(f"{path}: the ground truth is {signal.shape} x {signal.out_dim} channels but "
                                f"the k-space is {shape}")
            truth = signal.values.numpy()[..., 0]
            volume_meta = _volume_meta(signal)
        source = str(cfg.kspace)
    else:
        signal = load_volume(path)
        if signal.out_dim != 1:
            raise DataError(f"{path}: MRI reconstructs one channel; the volume has {signal.out_dim}")
        paper = cfg.protocol == "paper"
        truth = signal.values.numpy()[..., 0]
        volume_meta = _volume_meta(signal)
        if paper and signal.dtype == "uint8":
            # the notebook's data / 255.0: the 8-bit range, not the scan's own min and max
            truth = ((truth * np.float32(signal.hi - signal.lo) + np.float32(signal.lo)) / np.float32(255.0))
            volume_meta["range"] = [0.0, 255.0]
            volume_meta["scaling"] = "/255 (the paper's, an 8-bit volume)"
        if cfg.grid is not None:
            new_shape = parse_size(cfg.grid, 3)
            if math.prod(new_shape) > MAX_VOXELS:
                raise UsageError(f"--grid {cfg.grid} is more than {MAX_VOXELS:,} voxels")
            if volume_meta["affine"] is not None:
                volume_meta["affine"] = scaled_affine(np.asarray(volume_meta["affine"]), truth.shape,
                                                      new_shape).tolist()
            # the paper's local-mean resize; linear interpolation otherwise
            truth = area_resize(truth, new_shape) if paper else resample(truth, new_shape)  # type: ignore[arg-type]
            volume_meta["resampled"] = "local mean (the paper's)" if paper else "linear"
        shape = tuple(int(s) for s in truth.shape)
        if paper and cfg.fraction is None:
            mask, drawn = paper_mri_mask(shape), PAPER_MASK_DRAWS
            volume_meta["mask"] = (f"the paper's: {PAPER_MASK_DRAWS:,} draws of JAX's PRNGKey({PAPER_KEY}), "
                                   "truncated, duplicates collapsed")
        else:
            fraction = DEFAULT_FRACTION if cfg.fraction is None else float(cfg.fraction)
            mask, drawn = variable_density_mask(shape, fraction, cfg.seed)
        index = np.flatnonzero(mask.ravel())
        spectrum = np.fft.fftn(truth.astype(np.float64)).ravel()[index]
        if noise is not None:
            rng = np.random.default_rng(int(cfg.seed) + 1)
            # std S per voxel in image units is S sqrt(N) per entry of the unnormalised DFT
            std = noise[1] * math.sqrt(math.prod(shape) / 2.0)
            spectrum = spectrum + std * (rng.normal(size=len(index)) + 1j * rng.normal(size=len(index)))
        samples = spectrum.astype(np.complex64)
        source = str(path)
    held_count = _held(len(index), float(cfg.held_out or 0.0))
    order = np.random.default_rng(int(cfg.seed)).permutation(len(index))
    held, train = np.sort(order[:held_count]), np.sort(order[held_count:])
    scale = 1.0
    if truth is None:
        peak = float(np.abs(zero_filled(shape, index[train], samples[train])).max())
        scale = 1.1 * peak if peak > 1.0 else 1.0
    return MRIData(shape, samples, index, train, held, truth, scale, source,  # type: ignore[arg-type]
                   volume_meta, drawn)


def _held(total: int, fraction: float) -> int:
    from nfit.signals.ct import held_out_count

    return held_out_count(total, fraction, "k-space samples")


def _volume_meta(signal: Any) -> dict[str, Any]:
    return {"affine": signal.affine.tolist() if signal.affine is not None else None, "units": signal.units,
            "sform_code": signal.sform_code, "range": [signal.lo, signal.hi], "dtype": signal.dtype}


def zero_filled(shape: tuple[int, ...], index: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The real part of the inverse DFT of the samples with zeros elsewhere: (a, b, c) float32."""
    full = np.zeros(math.prod(shape), dtype=np.complex128)
    full[index] = samples
    return np.fft.ifftn(full.reshape(shape)).real.astype(np.float32)


class MRIKind(KindFromFacts):
    name = "mri"

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        data = _prepare_data(path, cfg)
        n = math.prod(data.shape)

        def measure(positions: np.ndarray) -> Measurement:
            op = KSpaceOperator(_mask_of(data.shape, data.index[positions]))
            return Measurement(op, torch.from_numpy(data.samples[positions] / data.scale), 1.0 / n)

        # The paper's loss: 0.5 x the mean over the whole k-space grid, unsampled entries counting 0.
        sets = {"train": _whole_grid_mean(measure(data.train), len(data.train), n)}
        if len(data.held):
            sets["val"] = _whole_grid_mean(measure(data.held), len(data.held), n)
        if data.truth is not None:
            # scored on the clipped volume, as the paper scores it
            sets["test"] = Measurement(lambda p: p.clamp(0.0, 1.0), torch.from_numpy(data.truth.reshape(-1)))
        problem = measurement_problem(data.shape, sets, self.name)
        meta = {"kind": self.name, "source": data.source, "shape": list(data.shape), "channels": 1,
                "loss": "0.5 mean over the whole k-space grid of |F(f) mask - y|^2 (the paper's)",
                **data.meta, "samples": len(data.index), "sampled_fraction": len(data.index) / n,
                "mask_points_drawn": data.points_drawn, "train_samples": len(data.train),
                "held_out_samples": len(data.held), "noise": cfg.noise, "scale": data.scale,
                "ground_truth": data.truth is not None, "train_points": n,
                "test_points": n if data.truth is not None else 0}
        if data.scale != 1.0:
            meta["range"] = [0.0, data.scale]
        return Task(self.name, 3, 1, problem, meta, state=data)

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        data: MRIData = task.state
        meta = task.meta
        device = next(result.field.parameters()).device
        recon = np.clip(render_grid(result.field, data.shape, 1, device=device).numpy()[..., 0], 0, 1)
        affine = np.asarray(meta["affine"]) if meta.get("affine") is not None else None
        lo, hi = meta["range"]

        def save(name: str, values: np.ndarray) -> None:
            write_volume(out_dir / name, from_unit(values[..., None], lo, hi, meta["dtype"]), affine=affine,
                         units=meta.get("units"), sform_code=int(meta.get("sform_code", 1)))

        save("recon.nii.gz", recon)
        baseline = np.clip(zero_filled(data.shape, data.index[data.train], data.samples[data.train]) / data.scale,
                           0, 1)
        save("zerofill.nii.gz", baseline)
        predicted = np.fft.fftn(recon.astype(np.float64) * data.scale)
        plot_kspace(out_dir / "kspace.png", data, predicted)
        if data.truth is not None:
            plot_volume_slices(out_dir / "slices.png", mid_slices(data.truth[..., None]),
                               mid_slices(recon[..., None]), title=Path(data.source).name)
        files = ["recon.nii.gz", "zerofill.nii.gz", "kspace.png"]
        extra: dict[str, Any] = {
            "psnr_on": {"train": "fitted k-space samples (image units: orthonormal DFT)",
                        "val": "held-out k-space samples (image units)",
                        "test": "the field on the whole grid against the ground truth, values in [0, 1]"},
            "baseline": {"method": "zero-filled inverse FFT of the training samples (real part, clipped to [0, 1])"},
            "files": files + (["slices.png"] if data.truth is not None else [])}
        if data.truth is not None:
            extra["baseline"]["psnr"] = psnr_from_mse(float(np.mean((baseline - data.truth) ** 2)))
            pairs = zip(mid_slices(recon[..., None]), mid_slices(data.truth[..., None]), strict=True)
            extra["test_ssim"] = float(np.mean([ssim(r, t) for r, t in pairs]))
            extra["ssim_on"] = "orthogonal mid-slices of the whole volume"
        return extra

    def render_extensions(self) -> tuple[str, ...]:
        return VOLUME_EXTENSIONS

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        return VOLUME.render(fld, meta, out, size=size, resolution=resolution)


#: the paper's loss is half the mean squared magnitude
PAPER_LOSS_FACTOR = 0.5


def _whole_grid_mean(m: Measurement, sampled: int, n: int) -> Measurement:
    """The paper's loss, 0.5 x the residual's mean over all N grid entries = its mean over
    the sampled ones weighted by 0.5 sampled / N; scores stay per sample (in image units)."""
    return Measurement(m.forward, m.data, m.score_scale, weight=PAPER_LOSS_FACTOR * sampled / n)


def plot_kspace(path: Path, data: MRIData, predicted: np.ndarray) -> None:
    """log(1 + |k|) of the measured (zero-filled) and predicted k-space, central slices, fftshifted."""
    measured = np.zeros(math.prod(data.shape), dtype=np.complex64)
    measured[data.index] = data.samples
    shown = [np.fft.fftshift(measured.reshape(data.shape)), np.fft.fftshift(predicted)]
    plt, fig = _figure(9.0, 6.0)
    for row, (volume, label) in enumerate(zip(shown, ("measured (zero-filled)", "predicted by the field"),
                                              strict=True)):
        logs = np.log1p(np.abs(volume))
        top = float(logs.max()) or 1.0
        for axis in range(3):
            ax = fig.add_subplot(2, 3, 3 * row + axis + 1)
            ax.imshow(np.take(logs, logs.shape[axis] // 2, axis=axis).T[::-1], cmap="magma", vmin=0, vmax=top)
            ax.set_axis_off()
            ax.set_title(f"{label}, axis {axis}", fontsize=8)
    _save(plt, fig, path)


MRI = MRIKind()

__all__ = ["MRI", "MRIData", "load_kspace", "zero_filled", "resample"]
