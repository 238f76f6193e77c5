"""Signals on standard input and outputs on standard output (``nfit image -``,
``nfit render model.safetensors --out - --format png``), for pipelines.

A signal read from stdin is recognised by its first bytes (PNG, JPEG, TIFF, BMP, GIF,
WebP, NumPy, NIfTI, PLY, OBJ, STL, OFF, GLB), written to a private temporary file with
the matching extension for the kind's reader, and removed when the job ends.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nfit.errors import DataError, UsageError

STDIO = "-"
#: (leading bytes, extension), tried in order
MAGIC = [(b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
         (b"MM\x00*", ".tif"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"\x93NUMPY", ".npy"),
         (b"\x1f\x8b", ".nii.gz"), (b"ply", ".ply"), (b"glTF", ".glb"), (b"OFF", ".off"),
         (b"solid", ".stl")]


def sniff(data: bytes) -> str | None:
    """The file extension the bytes' format has, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return ".nii"
    for magic, suffix in MAGIC:
        if data.startswith(magic):
            return suffix
    head = data[:65536].decode("utf-8", errors="ignore")
    if re.search(r"^\s*v\s+[-+0-9.eE]+\s+[-+0-9.eE]+\s+[-+0-9.eE]+", head, re.MULTILINE):
        return ".obj"
    if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return ".stl"  # binary STL: a header, a count, 50 bytes per triangle
    return None


@contextlib.contextmanager
def stdin_signal(kind: str, extensions: tuple[str, ...],
                 stream: BinaryIO | None = None) -> Iterator[Path]:
    """Standard input as a temporary file the kind's reader takes."""
    if (stream or sys.stdin).isatty():
        raise UsageError("-: standard input is a terminal; pipe a file into it (nfit image - < photo.png)")
    data = (stream or sys.stdin.buffer).read()
    if not data:
        raise UsageError("-: standard input is empty")
    suffix = sniff(data)
    if suffix is None or suffix not in extensions:
        what = f"a {suffix} file" if suffix else "not a format nfit recognises"
        raise DataError(f"standard input: {what}, not a {kind} signal ({', '.join(extensions)})")
    with tempfile.TemporaryDirectory(prefix="nfit-stdin-") as folder:
        tmp = Path(folder) / f"stdin{suffix}"  # a private temporary copy
        tmp.write_bytes(data)
        yield tmp


def copy_to_stdout(path: Path) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
