"""Images as signals: pixels on a 2D grid in [0, 1)^2, fitted per channel in [0, 1].

The paper split (Tancik et al. 2020, Sec. 6 / 2D images) takes the 512x512 centre
crop, trains on pixels [::2, ::2] and tests on [1::2, 1::2]; pixels [::2, 1::2] serve
as the validation set that sweeps select on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.config import FitConfig
from nfit.errors import UsageError
from nfit.field import Field
from nfit.formats.images import CHANNEL_NAMES, IMAGE_WRITE_EXTENSIONS, read_image, write_image
from nfit.metrics import ssim
from nfit.plots import plot_error_map
from nfit.problem import FitResult, PointSource, Problem
from nfit.signals.base import KindFromFacts, Task
from nfit.signals.grid import Split, grid_coords, make_split, render_grid

PAPER_CROP = 512


@dataclass(frozen=True)
class ImageSignal:
    """pixels: (H, W, C) float32 in [0, 1]; channels: 'L', 'LA', 'RGB' or 'RGBA'."""

    pixels: torch.Tensor
    channels: str
    bit_depth: int
    source: str
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) in the file

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.pixels.shape[2])

    def center_crop(self, size: int) -> ImageSignal:
        """The largest centred square of side <= size, made even so the paper split is balanced."""
        h, w = self.shape
        side = min(size, h, w)
        side -= side % 2
        top, left = (h - side) // 2, (w - side) // 2
        return replace(self, pixels=self.pixels[top:top + side, left:left + side].contiguous(),
                       crop=(top, left, side, side))


def load_image(path: str | Path) -> ImageSignal:
    values, depth = read_image(path)
    return ImageSignal(torch.from_numpy(np.ascontiguousarray(values)),
                       CHANNEL_NAMES[values.shape[2]], depth, str(path))


def grid_problem(values: torch.Tensor, shape: tuple[int, ...], split: Split) -> Problem:
    """Training and held-out sets of a grid signal. values: (n, C) flat, row-major."""
    coords = grid_coords(shape)
    evals: dict[str, tuple[torch.Tensor, torch.Tensor] | PointSource] = {
        "test": (coords[split.test], values[split.test])}
    if split.held_out:
        evals = {"val": (coords[split.val], values[split.val]), **evals}
    return Problem(coords[split.train], values[split.train], evals)


def parse_size(text: str, dims: int) -> tuple[int, ...]:
    """'2048x1536' -> (1536, 2048) for images (WIDTHxHEIGHT), 'AxBxC' for volumes (array order)."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad --size {text!r}: expected {'x'.join(['N'] * dims)}") from None
    if len(numbers) != dims or min(numbers) < 1:
        raise UsageError(f"bad --size {text!r}: expected {dims} positive sizes like "
                         f"{'x'.join(['256'] * dims)}")
    return numbers


@dataclass
class ImageState:
    """What an image fit's outputs read: the signal and its split."""

    signal: ImageSignal
    split: Split


class ImageKind(KindFromFacts):
    name = "image"

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        signal = load_image(path)
        if cfg.split.strip().lower() == "paper":
            signal = signal.center_crop(PAPER_CROP)
        split = make_split(signal.shape, cfg.split, cfg.seed)
        problem = grid_problem(signal.pixels.reshape(-1, signal.out_dim), signal.shape, split)
        h, w = signal.shape
        meta = {"kind": self.name, "source": signal.source, "shape": [h, w],
                "channels": signal.channels, "bit_depth": signal.bit_depth,
                "crop": list(signal.crop) if signal.crop else None, "split": split.name,
                "train_points": len(split.train), "test_points": len(split.test)}
        return Task(self.name, 2, signal.out_dim, problem, meta,
                    state=ImageState(signal, split))

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        state: ImageState = task.state
        signal, split = state.signal, state.split
        device = next(result.field.parameters()).device
        recon = render_grid(result.field, signal.shape, signal.out_dim, device=device).numpy()
        truth = signal.pixels.numpy()
        write_image(out_dir / "recon.png", recon, signal.bit_depth)
        error = np.abs(np.clip(recon, 0, 1) - truth).mean(axis=2)
        plot_error_map(out_dir / "error.png", error,
                       title=f"mean |error| per pixel ({signal.channels})")
        if "test" in split.shapes:
            test_shape = split.shapes["test"]
            flat_r = recon.reshape(-1, signal.out_dim)[split.test.numpy()]
            flat_t = truth.reshape(-1, signal.out_dim)[split.test.numpy()]
            ssim_value = ssim(flat_r.reshape(*test_shape, -1), flat_t.reshape(*test_shape, -1))
            ssim_on = "test pixels" if split.held_out else "all pixels"
        else:
            ssim_value, ssim_on = ssim(recon, truth), "whole image (random split: test pixels are scattered)"
        return {"test_ssim": ssim_value, "ssim_on": ssim_on, "channels": signal.channels,
                "files": ["recon.png", "error.png"]}

    def render_extensions(self) -> tuple[str, ...]:
        return IMAGE_WRITE_EXTENSIONS

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        h, w = meta["shape"]
        if size:
            w, h = parse_size(size, 2)
        if h * w > 400_000_000:
            raise UsageError(f"--size {w}x{h} is more than 400 megapixels")
        device = next(fld.parameters()).device
        values = render_grid(fld, (h, w), fld.out_dim, device=device).numpy()
        jpeg = out.suffix.lower() in (".jpg", ".jpeg")
        write_image(out, values, 8 if jpeg else int(meta.get("bit_depth", 8)))
        return {"out": str(out), "size": [w, h]}


IMAGE = ImageKind()

__all__ = ["IMAGE", "ImageSignal", "load_image", "grid_problem", "parse_size"]
