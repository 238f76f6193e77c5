"""Volume files: NIfTI (nibabel), NumPy .npy and multi-page TIFF stacks (tifffile).

A volume is a 3D array in the file's own axis order, optionally with a trailing
channel axis of at most ``MAX_CHANNELS`` entries: (n_0, n_1, n_2[, C]). NIfTI keeps its
voxel-to-world affine and spatial units; values keep their dtype (NIfTI scaling
``scl_slope``/``scl_inter`` is applied on reading, which makes them floating point).

Everything a fit cannot use is refused with one DataError line before any output:
2D arrays, 4D series whose last axis is too long to be channels, NaN or infinite
voxels (no silent fill: the user knows whether NaN means background or a hole),
a volume of one value, and unreadable or truncated files. Shapes are checked from
headers before any voxel is decoded.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfit.catalog import VOLUME_EXTENSIONS
from nfit.errors import DataError, UsageError
from nfit.io import atomic_path, atomic_write_bytes

#: Largest volume accepted (voxels x channels): its float32 copy is 2 GB.
MAX_VOXELS = 1 << 29
MAX_CHANNELS = 4


@dataclass
class VolumeFile:
    """data: (n_0, n_1, n_2, C) in the file's dtype; affine: (4, 4) voxel -> world, or None;
    units: NIfTI spatial unit name ('mm', 'micron', ...) or None; fmt: 'nifti'|'npy'|'tiff'."""

    data: np.ndarray
    fmt: str
    affine: np.ndarray | None = None
    units: str | None = None
    sform_code: int = 1


def volume_format(path: Path) -> str | None:
    """'nifti' | 'npy' | 'tiff' from the file name, or None."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    return None


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse layouts that are not one 3D volume (with at most MAX_CHANNELS channels)."""
    if len(shape) < 3:
        raise DataError(f"{path}: array of shape {shape} is {len(shape)}D; nfit volume needs a "
                        "3D volume (use nfit image for 2D images)")
    if len(shape) > 4:
        raise DataError(f"{path}: array of shape {shape} has {len(shape)} axes; nfit volume needs "
                        f"3D, or 3D with a trailing channel axis of at most {MAX_CHANNELS}")
    if len(shape) == 4 and shape[3] > MAX_CHANNELS:
        raise DataError(f"{path}: 4D array of shape {shape} looks like a series of {shape[3]} "
                        f"volumes, not channels (at most {MAX_CHANNELS}); fit one volume at a time")
    if min(shape[:3]) < 2:
        raise DataError(f"{path}: volume of shape {shape} is flat (an axis of size "
                        f"{min(shape[:3])}); nfit volume needs at least 2 voxels per axis")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise DataError(f"{path}: volume of shape {shape} holds more than {MAX_VOXELS:,} values "
                        "(refused before decoding)")


def _read_nifti(path: Path) -> VolumeFile:
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        # NIfTI stores vectors/channels in the 5th axis with a singleton 4th (time) axis.
        if len(shape) == 5 and shape[3] == 1:
            shape = shape[:3] + shape[4:]
        _check_shape(path, shape)
        data = np.asanyarray(img.dataobj).reshape(shape)
        affine = np.asarray(img.affine, dtype=np.float64)
        units = img.header.get_xyzt_units()[0]
        sform_code = int(img.header["sform_code"]) or int(img.header["qform_code"]) or 1
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib each raise their own types
        raise DataError(f"{path}: unreadable or corrupt NIfTI ({_first_line(exc)})") from None
    return VolumeFile(data, "nifti", affine, None if units == "unknown" else units, sform_code)


def _read_npy(path: Path) -> VolumeFile:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: not a plain NumPy array ({_first_line(exc)})") from None
    except Exception as exc:
        raise DataError(f"{path}: unreadable or corrupt .npy file ({_first_line(exc)})") from None
    if not isinstance(mapped, np.ndarray):
        raise DataError(f"{path}: holds several arrays; save one volume with np.save")
    _check_shape(path, tuple(mapped.shape))
    try:
        data = np.array(mapped)
    except Exception as exc:
        raise DataError(f"{path}: truncated .npy file ({_first_line(exc)})") from None
    return VolumeFile(data, "npy")


def _read_tiff(path: Path) -> VolumeFile:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            _check_shape(path, shape)
            data = series.asarray()
    except DataError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable or corrupt TIFF ({_first_line(exc)})") from None
    return VolumeFile(np.asarray(data), "tiff")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_volume(path: str | Path) -> VolumeFile:
    """Read a volume file; data comes back as (n_0, n_1, n_2, C), C >= 1, finite, not constant."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a volume")
    fmt = volume_format(path)
    if fmt is None:
        raise DataError(f"{path}: unknown volume format; use {', '.join(VOLUME_EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    vol = {"nifti": _read_nifti, "npy": _read_npy, "tiff": _read_tiff}[fmt](path)
    data = vol.data
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise DataError(f"{path}: unsupported voxel type {data.dtype}; need integers or floats")
    if data.ndim == 3:
        data = data[..., None]
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            nan = int(np.isnan(data).sum())
            raise DataError(f"{path}: {nan} NaN and {int(bad.sum()) - nan} infinite voxels; "
                            "replace them (for example with the background value) before fitting")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise DataError(f"{path}: every voxel holds the same value ({lo}); nothing to fit")
    vol.data = data
    return vol


def from_unit(values: np.ndarray, lo: float, hi: float, dtype: str) -> np.ndarray:
    """Values in [0, 1] back to the original units ``lo + v (hi - lo)`` and dtype.

    Integer dtypes are rounded and clipped to the dtype's range (the fit may overshoot)."""
    target = np.dtype(dtype)
    out = lo + np.clip(values, 0.0, 1.0).astype(np.float64) * (hi - lo)
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        return np.clip(np.round(out), info.min, info.max).astype(target)
    return out.astype(target)


def scaled_affine(affine: np.ndarray, old_shape: tuple[int, ...],
                  new_shape: tuple[int, ...]) -> np.ndarray:
    """The affine of a grid of ``new_shape`` covering the same domain as ``old_shape``.

    The field's coordinate of index i on an axis of n voxels is i / n, so new index j sits
    at old index j n / n': A' = A diag(n_0/n'_0, n_1/n'_1, n_2/n'_2, 1).
    """
    scale = np.diag([o / n for o, n in zip(old_shape[:3], new_shape[:3], strict=True)] + [1.0])
    return np.asarray(affine, dtype=np.float64) @ scale


def write_volume(path: str | Path, data: np.ndarray, *, affine: np.ndarray | None = None,
                 units: str | None = None, sform_code: int = 1) -> None:
    """Write (n_0, n_1, n_2, C) ``data`` atomically as NIfTI, .npy or TIFF (by extension).

    NIfTI gets ``affine`` (identity when None) as both qform and sform, and ``units``.
    A single channel is written as a 3D array.
    """
    path = Path(path)
    fmt = volume_format(path)
    if fmt is None:
        raise UsageError(f"unsupported volume extension for {path}; "
                         f"use {', '.join(VOLUME_EXTENSIONS)}")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if fmt == "nifti":
        import nibabel as nib

        img = nib.Nifti1Image(np.ascontiguousarray(data),
                              np.eye(4) if affine is None else np.asarray(affine, np.float64))
        img.set_data_dtype(data.dtype)
        img.header.set_xyzt_units(xyz=units or "unknown")
        img.set_sform(img.affine, code=int(sform_code))
        img.set_qform(img.affine, code=int(sform_code))
        raw = img.to_bytes()
        # nibabel picks the format from the name, and the temporary name is not *.nii.gz.
        atomic_write_bytes(path, gzip.compress(raw, compresslevel=6)
                           if path.name.lower().endswith(".gz") else raw)
    elif fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(data), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        import tifffile

        photometric = "rgb" if data.ndim == 4 and data.shape[3] in (3, 4) else "minisblack"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(data), photometric=photometric)
