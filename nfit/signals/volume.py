"""Volumes as signals: voxels on a 3D grid in [0, 1)^3, fitted per channel in [0, 1].

Values are normalised from the volume's own range, v01 = (v - lo) / (hi - lo) with lo,
hi the minimum and maximum over all voxels and channels; lo, hi and the dtype go into
the checkpoint so reconstructions come back in the file's units and type.

Volumes are large (197x233x189 is 8.7 M voxels; 512 Fourier features of all of them
would take 17 GB), so nothing per voxel is materialised beyond the volume itself:
training draws a fresh minibatch of ``--batch`` voxel indices each step and computes
their coordinates (``grid_coords`` of flat indices); held-out sets are ``PointSource``s
enumerated in chunks. Splits, as for images:

- ``paper``: train on voxels even on every axis ([::2, ::2, ::2]), test on voxels odd on
  every axis ([1::2, 1::2, 1::2]), validate on [::2, ::2, 1::2]. Each is a strided
  sub-grid, sampled and enumerated by arithmetic, with no index list.
- ``all``: every voxel trains and is scored (no held-out set).
- ``random:F``: each voxel is test with probability F, validation with probability F,
  train otherwise (a one-byte role per voxel, a quarter of the float32 volume).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.catalog import KINDS
from nfit.config import FitConfig
from nfit.errors import UsageError
from nfit.field import Field
from nfit.formats.volumes import (
    MAX_VOXELS,
    VOLUME_EXTENSIONS,
    from_unit,
    read_volume,
    scaled_affine,
    write_volume,
)
from nfit.metrics import ssim
from nfit.plots import _figure, _save
from nfit.problem import FitResult, Problem
from nfit.signals.base import KindFromFacts, Task
from nfit.signals.grid import grid_coords, parse_split, render_grid
from nfit.signals.image import parse_size

#: Voxels per step when --batch is 0 (the full batch of a volume would not fit).
VOLUME_BATCH = KINDS["volume"].defaults["batch"]
RECON_NAMES = {"nifti": "recon.nii.gz", "npy": "recon.npy", "tiff": "recon.tif"}
ROLE_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Lattice:
    """The strided sub-grid {start + step * j} of a grid of ``shape``: no index list.

    ``sub_shape``: points per axis; ``flat(j)`` maps (n,) sub-grid row-major indices to
    (n,) flat indices of the full grid.
    """

    shape: tuple[int, ...]
    start: tuple[int, ...]
    step: tuple[int, ...]

    @property
    def sub_shape(self) -> tuple[int, ...]:
        return tuple(-(-(n - s) // k)
                     for n, s, k in zip(self.shape, self.start, self.step, strict=True))

    def __len__(self) -> int:
        return math.prod(self.sub_shape)

    def flat(self, sub: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(sub)
        rest = sub
        stride = 1
        axes = zip(self.shape, self.sub_shape, self.start, self.step, strict=True)
        for n, m, s, k in reversed(list(axes)):  # last axis varies fastest
            out += (s + k * (rest % m)) * stride
            rest = rest // m
            stride *= n
        return out

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        sub = torch.randint(len(self), (n,), generator=generator, device=generator.device)
        return self.flat(sub)

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for begin in range(0, len(self), size):
            yield self.flat(torch.arange(begin, min(begin + size, len(self))))


class Masked:
    """The voxels whose role byte equals ``code``; sampled by rejection, enumerated by filtering."""

    def __init__(self, roles: torch.Tensor, code: int) -> None:
        self.roles, self.code = roles, code
        self.count = int((roles == code).sum())

    def __len__(self) -> int:
        return self.count

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        roles = self.roles.to(generator.device)
        accept = self.count / len(roles)
        found: list[torch.Tensor] = []
        have = 0
        while have < n:  # each round keeps about 1.2x what is still missing
            draw = torch.randint(len(roles), (int((n - have) / accept * 1.2) + 16,),
                                 generator=generator, device=generator.device)
            kept = draw[roles[draw] == self.code]
            found.append(kept)
            have += len(kept)
        return torch.cat(found)[:n]

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for begin in range(0, len(self.roles), size):
            idx = torch.arange(begin, min(begin + size, len(self.roles)))
            yield idx[self.roles[idx] == self.code]


def random_roles(n: int, fraction: float, seed: int, chunk: int = 1 << 20) -> torch.Tensor:
    """(n,) uint8: 2 (test) with probability F, 1 (validation) with probability F, else 0."""
    generator = torch.Generator().manual_seed(int(seed))
    roles = torch.empty(n, dtype=torch.uint8)
    for begin in range(0, n, chunk):
        u = torch.rand(min(chunk, n - begin), generator=generator)
        roles[begin:begin + len(u)] = (u < fraction).to(torch.uint8) * 2 + \
            ((u >= fraction) & (u < 2 * fraction)).to(torch.uint8)
    return roles


class VoxelPoints:
    """A set of voxels as a fitting PointSource: coordinates computed per batch or chunk.

    values: (n, C) float32 in [0, 1], flat row-major over ``shape``; voxels: a Lattice or
    Masked set. ``sample`` runs on the generator's device (the values are copied there
    once), so a GPU fit draws its minibatches without host round trips.
    """

    def __init__(self, values: torch.Tensor, shape: tuple[int, ...],
                 voxels: Lattice | Masked) -> None:
        self.values, self.shape, self.voxels = values, shape, voxels
        self._on: dict[str, torch.Tensor] = {"cpu": values}

    def __len__(self) -> int:
        return len(self.voxels)

    def _values(self, device: torch.device) -> torch.Tensor:
        if str(device) not in self._on:
            self._on[str(device)] = self.values.to(device)
        return self._on[str(device)]

    def take(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coords (n, 3), values (n, C)) of flat voxel indices."""
        return grid_coords(self.shape, flat), self._values(flat.device)[flat]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(self.voxels.sample(n, generator))

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for flat in self.voxels.chunks(size):
            yield self.take(flat)


def volume_split(shape: tuple[int, ...], text: str,
                 seed: int) -> tuple[str, dict[str, Lattice | Masked], bool]:
    """(split name, role -> voxel set, held_out) for ``paper``, ``all`` or ``random:F``."""
    kind, fraction = parse_split(text)
    ones = (1,) * len(shape)
    if kind == "paper":
        twos = (2,) * len(shape)
        return "paper", {"train": Lattice(shape, (0, 0, 0), twos),
                         "val": Lattice(shape, (0, 0, 1), twos),
                         "test": Lattice(shape, (1, 1, 1), twos)}, True
    if kind == "all":
        everything = Lattice(shape, (0, 0, 0), ones)
        return "all", {"train": everything, "test": everything}, False
    roles = random_roles(math.prod(shape), fraction, seed)
    sets = {role: Masked(roles, code) for role, code in ROLE_CODES.items()}
    if min(len(s) for s in sets.values()) < 1:
        raise UsageError(f"volume of {math.prod(shape)} voxels is too small for --split {text}")
    return f"random:{fraction:g}", dict(sets), True


@dataclass
class VolumeSignal:
    """values: (n_0, n_1, n_2, C) float32 in [0, 1] from the file's range [lo, hi]."""

    values: torch.Tensor
    lo: float
    hi: float
    dtype: str
    fmt: str
    source: str
    affine: np.ndarray | None
    units: str | None
    sform_code: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.values.shape[:3])  # type: ignore[return-value]

    @property
    def out_dim(self) -> int:
        return int(self.values.shape[3])


def load_volume(path: str | Path) -> VolumeSignal:
    """Read a volume file and normalise it to [0, 1] by its own min and max."""
    vol = read_volume(path)
    lo, hi = float(vol.data.min()), float(vol.data.max())
    # float32 in place of the file's dtype; the raw array is dropped when this returns.
    values = (vol.data.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return VolumeSignal(torch.from_numpy(values), lo, hi, str(vol.data.dtype), vol.fmt, str(path),
                        vol.affine, vol.units, vol.sform_code)


def volume_problem(signal: VolumeSignal, sets: dict[str, Lattice | Masked], held_out: bool) -> Problem:
    """A sampled problem: random training voxels each step (``VOLUME_BATCH`` under
    ``--batch auto``), held-out sets lazily."""
    flat = signal.values.reshape(-1, signal.out_dim)
    train = VoxelPoints(flat, signal.shape, sets["train"])
    evals: dict[str, Any] = {"test": VoxelPoints(flat, signal.shape, sets["test"])}
    if held_out:
        evals = {"val": VoxelPoints(flat, signal.shape, sets["val"]), **evals}
    return Problem(torch.zeros(0, 3), torch.zeros(0, signal.out_dim), evals, sampler=train.sample,
                   batch=VOLUME_BATCH, kind_name="volume")


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The three orthogonal mid-slices of (n_0, n_1, n_2, C): [axis-0 slice, axis-1, axis-2]."""
    return [np.take(volume, volume.shape[axis] // 2, axis=axis) for axis in range(3)]


def plot_volume_slices(path: Path, truth: list[np.ndarray], recon: list[np.ndarray],
                       title: str = "") -> None:
    """One row per orthogonal mid-slice: ground truth, reconstruction, |error|.

    Slices are (a, b, C) in [0, 1]; three channels show as RGB, others as their mean."""
    plt, fig = _figure(9.0, 9.0)
    for row, (t, r) in enumerate(zip(truth, recon, strict=True)):
        error = np.abs(r - t).mean(axis=2)
        shown = [t, r] if t.shape[2] == 3 else [t.mean(axis=2), r.mean(axis=2)]
        labels = ("truth", "reconstruction", "|error|")
        for col, (image, label) in enumerate(zip(shown + [error], labels, strict=True)):
            ax = fig.add_subplot(3, 3, 3 * row + col + 1)
            # Array axis 0 runs down the page; transposed so the slice reads like a scan viewer.
            view = np.swapaxes(image, 0, 1)[::-1]
            if col < 2:
                ax.imshow(view, cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(view, cmap="inferno", vmin=0.0, vmax=max(float(error.max()), 1e-6))
            ax.set_axis_off()
            ax.set_title(f"{label}, axis {row} mid-slice", fontsize=8)
    if title:
        fig.suptitle(title)
    _save(plt, fig, path)


@dataclass
class VolumeState:
    """What a volume fit's outputs read: the signal, its voxel sets, whether one is held out."""

    signal: VolumeSignal
    sets: dict[str, Lattice | Masked]
    held_out: bool


class VolumeKind(KindFromFacts):
    name = "volume"

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        signal = load_volume(path)
        split_name, sets, held_out = volume_split(signal.shape, cfg.split, cfg.seed)
        problem = volume_problem(signal, sets, held_out)
        meta = {"kind": self.name, "source": signal.source, "format": signal.fmt,
                "shape": list(signal.shape), "channels": signal.out_dim, "dtype": signal.dtype,
                "range": [signal.lo, signal.hi],
                "affine": signal.affine.tolist() if signal.affine is not None else None,
                "units": signal.units, "sform_code": signal.sform_code, "split": split_name,
                "train_points": len(sets["train"]),
                "test_points": len(sets["test"])}
        return Task(self.name, 3, signal.out_dim, problem, meta,
                    state=VolumeState(signal, sets, held_out))

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        state: VolumeState = task.state
        signal = state.signal
        device = next(result.field.parameters()).device
        recon = np.clip(render_grid(result.field, signal.shape, signal.out_dim,
                                    device=device).numpy(), 0.0, 1.0)
        truth = signal.values.numpy()
        name = RECON_NAMES[signal.fmt]
        write_volume(out_dir / name, from_unit(recon, signal.lo, signal.hi, signal.dtype),
                     affine=signal.affine, units=signal.units, sform_code=signal.sform_code)
        plot_volume_slices(out_dir / "slices.png", mid_slices(truth), mid_slices(recon),
                           title=Path(signal.source).name)
        test = state.sets["test"]
        if isinstance(test, Lattice) and state.held_out:
            # The test voxels form a sub-grid: SSIM on its mid-slices scores held-out voxels only.
            sub = tuple(slice(s, None, k) for s, k in zip(test.start, test.step, strict=True))
            pairs = zip(mid_slices(recon[sub]), mid_slices(truth[sub]), strict=True)
            ssim_on = "orthogonal mid-slices of the test sub-grid (held-out voxels only)"
        else:
            pairs = zip(mid_slices(recon), mid_slices(truth), strict=True)
            ssim_on = ("orthogonal mid-slices of the whole volume" +
                       (" (random split: test voxels are scattered, so slices mix train and test)"
                        if state.held_out else ""))
        ssim_value = float(np.mean([ssim(r, t) for r, t in pairs]))
        return {"test_ssim": ssim_value, "ssim_on": ssim_on, "channels": signal.out_dim,
                "psnr_on": "all test voxels, values normalised to [0, 1] by the volume's range",
                "files": [name, "slices.png"]}

    def render_extensions(self) -> tuple[str, ...]:
        return VOLUME_EXTENSIONS

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        old_shape = tuple(int(n) for n in meta["shape"])
        shape = parse_size(size, 3) if size else old_shape
        if math.prod(shape) * fld.out_dim > MAX_VOXELS:
            raise UsageError(f"--size {'x'.join(map(str, shape))} is more than "
                             f"{MAX_VOXELS:,} values")
        device = next(fld.parameters()).device
        values = np.clip(render_grid(fld, shape, fld.out_dim, device=device).numpy(), 0.0, 1.0)
        lo, hi = meta["range"]
        affine = np.asarray(meta["affine"]) if meta.get("affine") is not None else np.eye(4)
        new_affine = scaled_affine(affine, old_shape, shape)
        write_volume(out, from_unit(values, lo, hi, meta["dtype"]), affine=new_affine,
                     units=meta.get("units"), sform_code=int(meta.get("sform_code", 1)))
        return {"out": str(out), "size": list(shape),
                "voxel_size": [float(np.linalg.norm(new_affine[:3, k])) for k in range(3)]}


VOLUME = VolumeKind()

__all__ = ["VOLUME", "VolumeSignal", "VoxelPoints", "Lattice", "load_volume", "volume_split"]
