"""Image files: reading (8/16-bit, gray/RGB/RGBA, palette, CMYK) and writing PNG/JPEG/TIFF.

PNG is decoded and encoded with imagecodecs because Pillow silently truncates 16-bit
RGB PNGs to 8 bits; TIFF goes through tifffile for the same reason; everything else
through Pillow. Headers are checked for size before any pixel is decoded, so an image
that claims 100000x100000 is refused without allocating it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from nfit.errors import DataError, UsageError
from nfit.io import atomic_path

#: Largest image accepted (pixels). A decoded 16-bit RGBA image of this size is 3.2 GB.
MAX_PIXELS = 400_000_000
IMAGE_WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
CHANNEL_NAMES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
#: Formats refused for writing because no library nfit uses writes them faithfully.
UNFAITHFUL_EXTENSIONS = {
    ".exr": "EXR output is not supported: none of nfit's image libraries writes OpenEXR "
            "(imagecodecs has no EXR encoder, Pillow cannot write it); use .tif or .png, "
            "which keep 16 bits per channel",
    ".hdr": "Radiance HDR output is not supported; use .tif or .png (16 bits per channel)",
}


def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit_depth, color_type) from a PNG's IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise DataError("corrupt PNG: missing IHDR header")
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color


def _check_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DataError(f"{path}: image claims {width}x{height} pixels, more than the "
                        f"{MAX_PIXELS:,}-pixel limit (refused before decoding)")
    if width < 2 or height < 2:
        raise DataError(f"{path}: image is {width}x{height}; nfit needs at least 2x2 pixels")


#: Samples per pixel of each PNG colour type (palette: one index).
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Deflate expands at most 1032:1, so pixel data larger than this many times the file
#: cannot be stored in it: the header lies (corrupt, or a decompression bomb).
DEFLATE_MAX_RATIO = 1040


def _decode_png(path: Path, data: bytes) -> np.ndarray:
    import imagecodecs

    width, height, depth, color = _png_header(data)
    _check_size(path, width, height)
    if color not in PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        raise DataError(f"{path}: corrupt PNG header (colour type {color}, bit depth {depth})")
    raw = height * -(-width * PNG_SAMPLES[color] * depth // 8)
    if raw > DEFLATE_MAX_RATIO * len(data):
        raise DataError(f"{path}: PNG claims {width}x{height} pixels ({raw:,} bytes) but the file "
                        f"holds {len(data):,} bytes, more than deflate can expand; corrupt or a "
                        "decompression bomb (refused before decoding)")
    try:
        array = imagecodecs.png_decode(data)
    except Exception as exc:  # imagecodecs raises its own PngError and friends
        raise DataError(f"{path}: corrupt or truncated PNG ({exc})") from None
    return np.asarray(array)


def _decode_tiff(path: Path) -> np.ndarray:
    import logging

    import tifffile

    # tifffile logs each repair it attempts on a damaged file; the DataError says enough.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape  # type: ignore[union-attr]
            if len(shape) >= 2:
                _check_size(path, int(shape[1]), int(shape[0]))
            if len(tif.pages) > 1:
                raise DataError(f"{path}: multi-page TIFF ({len(tif.pages)} pages) looks like a "
                                "volume; use 'nfit volume'")
            array = page.asarray()  # type: ignore[union-attr]
            photometric = getattr(page, "photometric", None)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: corrupt or unreadable TIFF ({exc})") from None
    try:
        cmyk = photometric is not None and int(photometric) == 5  # separated (CMYK)
    except (TypeError, ValueError):
        raise DataError(f"{path}: corrupt or unreadable TIFF (bad photometric tag)") from None
    if cmyk:
        raise DataError(f"{path}: CMYK TIFF is not supported; convert it to RGB")
    return np.asarray(array)


def _decode_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as opened:
            im: Image.Image = opened
            _check_size(path, im.width, im.height)
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode in ("1",):
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")  # colour-managed conversion is out of scope; Pillow's is standard
            elif mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            elif mode in ("I", "F"):
                return np.asarray(im)
            return np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image nfit can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def _to_unit_float(path: Path, array: np.ndarray) -> tuple[np.ndarray, int]:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0, 8
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0, 16
    if array.dtype == bool:
        return array.astype(np.float32), 8
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{path}: image holds NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise DataError(f"{path}: floating-point image with values outside [0, 1] "
                            f"({array.min():g}..{array.max():g})")
        return array.astype(np.float32), 16
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.float32) / 65535.0, 16
    raise DataError(f"{path}: unsupported pixel type {array.dtype}")


def read_image(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an image file: ((H, W, C) float32 in [0, 1], bit depth 8 or 16).

    Raises DataError with one clear line for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an image")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not data:
        raise DataError(f"{path}: empty file")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        array = _decode_png(path, data)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        array = _decode_tiff(path)
    else:
        array = _decode_pillow(path)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in CHANNEL_NAMES:
        raise DataError(f"{path}: unsupported image layout {array.shape}")
    _check_size(path, array.shape[1], array.shape[0])
    return _to_unit_float(path, array)


def quantize(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] floats -> uint8 or uint16 with rounding."""
    top = 65535 if bit_depth == 16 else 255
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return np.round(np.clip(values, 0.0, 1.0) * top).astype(dtype)


def write_image(path: str | Path, values: np.ndarray, bit_depth: int = 8) -> None:
    """Write (H, W, C) floats in [0, 1] atomically, then read the file back to check it.

    PNG keeps 16 bits (imagecodecs); TIFF keeps 16 bits (tifffile); JPEG is 8-bit only,
    so a 16-bit request to JPEG is refused rather than silently truncated.
    """
    import imagecodecs

    path = Path(path)
    ext = path.suffix.lower()
    if ext in UNFAITHFUL_EXTENSIONS:
        raise UsageError(f"{path}: {UNFAITHFUL_EXTENSIONS[ext]}")
    if ext not in IMAGE_WRITE_EXTENSIONS:
        raise UsageError(f"unsupported image extension {ext!r}; use {', '.join(IMAGE_WRITE_EXTENSIONS)}")
    if ext in (".jpg", ".jpeg") and bit_depth == 16:
        raise UsageError(f"{path}: JPEG holds 8 bits per channel only; write .png or .tif for 16-bit")
    if values.ndim == 2:
        values = values[:, :, None]
    pixels = quantize(values, bit_depth)
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    with atomic_path(path) as tmp:
        if ext == ".png":
            tmp.write_bytes(imagecodecs.png_encode(pixels))
        elif ext in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, pixels)
        else:
            from PIL import Image

            Image.fromarray(pixels).save(tmp, quality=95)
        back, depth = read_image(tmp)
        if back.shape[:2] != pixels.shape[:2] or depth != bit_depth:
            raise DataError(f"{path}: written file did not read back as written "
                            f"({back.shape}, {depth}-bit)")
