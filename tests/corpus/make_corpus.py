"""Write the corpus of hostile and odd input files, and manifest.json describing each.

    python tests/corpus/make_corpus.py        # rewrites the files beside this script

Every file is small (the largest is a few kilobytes) and made from synthetic content,
deterministically, so the committed corpus is reproducible. manifest.json maps each
file to the command that reads it ("image", "volume", "sdf") and what must happen:
"error" (exit 1 with one ``nfit: error:`` line, nothing written) or "ok" (a documented
treatment: the fields "channels" and "bit_depth" say what the image becomes).
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _gradient(h: int = 24, w: int = 24) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)],
                    axis=-1).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rgb: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.png_encode(rgb))


def _pillow(mode_image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    mode_image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _tiff(rgb: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgb)
    return buffer.getvalue()


def _tiff_with_size(rgb: np.ndarray, width: int, height: int) -> bytes:
    """A little-endian TIFF whose ImageWidth/ImageLength tags are patched to lie."""
    data = bytearray(_tiff(rgb))
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd:ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", data[at:at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:  # SHORT: switch to LONG so the lie fits
                data[at + 2:at + 4] = struct.pack("<H", 4)
            data[at + 8:at + 12] = struct.pack("<I", value)
    return bytes(data)


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the SOF0 marker's height and width."""
    data = bytearray(jpeg)
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _nifti(volume: np.ndarray, gz: bool = False) -> bytes:
    import nibabel as nib

    raw = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _nifti_claiming(shape: tuple[int, int, int]) -> bytes:
    """A NIfTI-1 header whose dim field claims ``shape`` (float32) over 8 bytes of data."""
    raw = bytearray(_nifti(np.zeros((2, 2, 2), np.float32)))
    raw[40:56] = struct.pack("<8h", 3, *shape, 1, 1, 1, 1)
    return bytes(raw[:352]) + b"\0" * 8


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


TETRA_V = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
TETRA_F = [(1, 3, 2), (1, 2, 4), (1, 4, 3), (2, 3, 4)]  # OBJ: 1-based


def _obj(vertices, faces) -> bytes:
    lines = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a} {b} {c}" for a, b, c in faces]
    return ("\n".join(lines) + "\n").encode()


def _ply_ascii(vertices, faces) -> bytes:
    head = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x",
            "property float y", "property float z", f"element face {len(faces)}",
            "property list uchar int vertex_indices", "end_header"]
    body = [f"{x} {y} {z}" for x, y, z in vertices]
    body += [f"3 {a - 1} {b - 1} {c - 1}" for a, b, c in faces]
    return ("\n".join(head + body) + "\n").encode()


def _ply_binary_truncated() -> bytes:
    head = (b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n"
            b"property float y\nproperty float z\nelement face 4\n"
            b"property list uchar int vertex_indices\nend_header\n")
    return head + struct.pack("<6f", 0, 0, 0, 1, 0, 0)  # 2 of 4 vertices, no faces


def _stl_ascii(vertices, faces) -> bytes:
    out = ["solid t"]
    for a, b, c in faces:
        out += ["facet normal 0 0 0", "outer loop"]
        out += [f"vertex {x} {y} {z}" for x, y, z in (vertices[i - 1] for i in (a, b, c))]
        out += ["endloop", "endfacet"]
    return ("\n".join(out + ["endsolid t"]) + "\n").encode()


def _stl_binary_claiming(n: int) -> bytes:
    tri = struct.pack("<12fH", *([0.0] * 3), 0, 0, 0, 1, 0, 0, 0, 1, 0, 0)
    return b"\0" * 80 + struct.pack("<I", n) + tri


def build() -> dict[str, tuple[bytes, dict]]:
    """name -> (bytes, manifest entry)."""
    from PIL import Image

    rgb = _gradient()
    png, tif = _png(rgb), _tiff(rgb)
    jpg = _pillow(Image.fromarray(rgb), "JPEG", quality=90)
    text = b"this is a text file, not an image\n"
    bad_png = bytearray(png)
    idat = bad_png.find(b"IDAT")
    bad_png[idat + 8:idat + 40] = b"\xa5" * 32  # mangled deflate data, stale CRC
    bad_jpg = bytearray(jpg)
    sos = bad_jpg.find(b"\xff\xda")
    bad_jpg[sos + 20:sos + 200] = bytes(range(180))
    bad_tif = bytearray(tif)
    bad_tif[4:8] = struct.pack("<I", 10_000_000)  # first IFD far beyond the end
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb_png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    rgb16 = (_gradient().astype(np.uint16) * 257 + np.arange(24, dtype=np.uint16)[None, :, None])
    gray = Image.fromarray(rgb).convert("L")
    la = Image.merge("LA", (gray, gray.point(lambda v: 255 - v)))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    cmyk = Image.fromarray(rgb).convert("CMYK")

    err = {"expect": "error"}
    image = {"command": "image"}
    rgb8, rgba8 = {"expect": "ok", "channels": 3, "bit_depth": 8}, {"expect": "ok", "bit_depth": 8}
    cases: dict[str, tuple[bytes, dict]] = {
        "image-truncated.png": (png[: len(png) * 6 // 10], {**image, **err}),
        "image-corrupt.png": (bytes(bad_png), {**image, **err}),
        "image-truncated.jpg": (jpg[: len(jpg) // 2], {**image, **err}),
        "image-corrupt.jpg": (bytes(bad_jpg[: sos + 200]), {**image, **err}),
        "image-truncated.tif": (tif[: len(tif) // 2], {**image, **err}),
        "image-corrupt.tif": (bytes(bad_tif), {**image, **err}),
        "image-empty.png": (b"", {**image, **err}),
        "image-empty.jpg": (b"", {**image, **err}),
        "image-empty.tif": (b"", {**image, **err}),
        "image-text.png": (text, {**image, **err}),
        "image-text.jpg": (text, {**image, **err}),
        "image-text.tif": (text, {**image, **err}),
        "image-bomb.png": (bomb_png, {**image, **err, "bomb": True}),
        "image-bomb.jpg": (_jpeg_with_size(jpg, 65_000, 65_000), {**image, **err, "bomb": True}),
        "image-bomb.tif": (_tiff_with_size(rgb, 100_000, 100_000), {**image, **err, "bomb": True}),
        "image-1x1.png": (_png(rgb[:1, :1]), {**image, **err}),
        "image-rgb16.png": (_png(rgb16), {**image, "expect": "ok", "channels": 3, "bit_depth": 16}),
        "image-palette.png": (_pillow(palette, "PNG"), {**image, **rgb8}),
        "image-palette-transparent.png": (_pillow(palette_t, "PNG", transparency=0),
                                          {**image, **rgba8, "channels": 4}),
        "image-cmyk.jpg": (_pillow(cmyk, "JPEG", quality=90), {**image, **rgb8}),
        "image-gray-alpha.png": (_pillow(la, "PNG"), {**image, **rgba8, "channels": 2}),
    }
    vol = np.linspace(0, 1, 512, dtype=np.float32).reshape(8, 8, 8)
    nan_vol, inf_vol = vol.copy(), vol.copy()
    nan_vol[2, 3, 4] = np.nan
    inf_vol[5, 5, 5] = np.inf
    nii = _nifti(vol)
    volume = {"command": "volume", "expect": "error"}
    cases.update({
        "volume-empty.nii": (b"", volume),
        "volume-text.nii": (text, volume),
        "volume-truncated.nii": (nii[: len(nii) - 1000], volume),
        "volume-truncated.nii.gz": (_nifti(vol, gz=True)[:300], volume),
        "volume-bomb.nii": (_nifti_claiming((30_000, 30_000, 30_000)), {**volume, "bomb": True}),
        "volume-nan.nii": (_nifti(nan_vol), {**volume, "nonfinite": True}),
        "volume-inf.nii.gz": (_nifti(inf_vol, gz=True), {**volume, "nonfinite": True}),
        "volume-nan.npy": (_npy(nan_vol), {**volume, "nonfinite": True}),
    })
    nan_v = [TETRA_V[0], (float("nan"), 0, 0), TETRA_V[2], TETRA_V[3]]
    bad_f = TETRA_F[:3] + [(2, 3, 99)]
    sdf = {"command": "sdf", "expect": "error"}
    cases.update({
        "mesh-empty.obj": (b"", sdf),
        "mesh-text.obj": (b"this is not a mesh\nat all\n", sdf),
        "mesh-nan.obj": (_obj(nan_v, TETRA_F), sdf),
        "mesh-badface.obj": (_obj(TETRA_V, bad_f), sdf),
        "mesh-truncated.ply": (_ply_binary_truncated(), sdf),
        "mesh-nan.ply": (_ply_ascii(nan_v, TETRA_F), sdf),
        "mesh-badface.ply": (_ply_ascii(TETRA_V, bad_f), sdf),
        "mesh-empty.stl": (b"", sdf),
        "mesh-truncated.stl": (_stl_binary_claiming(1_000_000), sdf),
        "mesh-nan.stl": (_stl_ascii(nan_v, TETRA_F), sdf),
    })
    return cases


def main() -> None:
    cases = build()
    for name, (data, _) in cases.items():
        (HERE / name).write_bytes(data)
    manifest = {name: entry for name, (_, entry) in sorted(cases.items())}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(len(d) for d, _ in cases.values())
    print(f"wrote {len(cases)} files ({total:,} bytes) and manifest.json to {HERE}")


if __name__ == "__main__":
    main()
