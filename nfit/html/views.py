"""What each kind's result looks like on the page: the pictures of an image or a CT slice,
the slices of a volume, the meshes, each read from what the fit wrote and from its source.

Every function returns the HTML of one section, or "" when there is nothing to show."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from nfit.html.page import colormap, esc, png_uri

#: slices of a volume carried by its page at most (evenly spaced through z)
MAX_SLICES = 96
#: in-plane size of a volume's slices at most (larger ones are strided down)
MAX_SLICE_SIDE = 256
#: faces of a mesh the 3D viewer carries at most; a larger mesh is shown as rendered views
MAX_VIEWER_FACES = 400_000

ROLE_LABELS = {"truth": "ground truth", "recon": "reconstruction", "error": "|error|",
               "fbp": "filtered back-projection", "zerofill": "zero-filled inverse FFT"}


def _error_map(recon: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """|recon - truth| averaged over channels, and the value the colour scale tops out at
    (the 99.5th percentile, so one bad pixel does not wash the map out)."""
    err = np.abs(recon.astype(np.float32) - truth.astype(np.float32))
    if err.ndim == 3:
        err = err.mean(axis=2)
    top = float(np.percentile(err, 99.5)) if err.size else 0.0
    return err, (top if top > 0 else float(err.max()) or 1.0)


def comparison(roles: dict[str, list[str]], note: str = "", z_label: str = "") -> str:
    """The compare widget: two roles over each other with a split slider (drag or the range),
    zoom, and every role side by side below; ``roles`` maps a role to its slices' data URIs
    (one entry for a 2D picture; a z slider appears with more)."""
    names = list(roles)
    count = len(next(iter(roles.values())))
    left = "truth" if "truth" in roles else names[0]
    right = "recon" if "recon" in roles else names[-1]

    def options(chosen: str) -> str:
        return "".join(f"<option value=\"{esc(r)}\"{' selected' if r == chosen else ''}>"
                       f"{esc(ROLE_LABELS.get(r, r))}</option>" for r in names)

    z = ""
    if count > 1:
        z = (f"<label class=\"zpick\">{esc(z_label or 'slice')} <input type=\"range\" data-z min=\"0\" "
             f"max=\"{count - 1}\" value=\"{count // 2}\" aria-label=\"slice\"> <output data-zout></output></label>")
    on = ' class="on"'
    zoom = "".join(f"<button type=\"button\" data-zoom=\"{z_}\"{on if z_ == '0' else ''}>"
                   f"{'fit' if z_ == '0' else z_ + '×'}</button>" for z_ in ("0", "1", "2", "4", "8"))
    panels = "".join(f"<figure><div class=\"scroll\"><img data-panel=\"{esc(r)}\" alt=\"{esc(ROLE_LABELS.get(r, r))}\">"
                     f"</div><figcaption>{esc(ROLE_LABELS.get(r, r))}</figcaption></figure>" for r in names)
    data = json.dumps({"roles": roles, "labels": {r: ROLE_LABELS.get(r, r) for r in names}})
    return (f"<div class=\"viewer\" data-viewer>"
            f"<div class=\"controls\"><label>left <select data-left>{options(left)}</select></label>"
            f"<label>right <select data-right>{options(right)}</select></label>{z}"
            f"<span class=\"zoom\">zoom {zoom}</span></div>"
            f"<div class=\"scroll main\"><div class=\"compare\" data-compare>"
            f"<img class=\"base\" data-side=\"right\" alt=\"right\"><img class=\"top\" data-side=\"left\" alt=\"left\">"
            f"<div class=\"handle\" data-handle></div></div></div>"
            f"<input type=\"range\" class=\"split\" data-split min=\"0\" max=\"100\" step=\"0.5\" value=\"50\" "
            f"aria-label=\"split between left and right\">"
            f"<p class=\"note\">{esc(note)}</p>"
            f"<div class=\"side\">{panels}</div>"
            f"<script type=\"application/json\" data-slices>{_script_safe(data)}</script></div>")


def _script_safe(text: str) -> str:
    return text.replace("</", "<\\/")


# ------------------------------------------------------------------------------- images, CT


def _image_truth(report: dict[str, Any]) -> np.ndarray | None:
    """The ground truth the fit saw: the source image, cropped as the fit cropped it."""
    from nfit.formats.images import read_image

    meta = report.get("signal") or {}
    source = Path(str(meta.get("source", "")))
    if not source.is_file():
        return None
    values, _ = read_image(source)
    crop = meta.get("crop")
    if crop:
        top, left, h, w = (int(c) for c in crop)
        values = values[top:top + h, left:left + w]
    return values


def image_view(out_dir: Path, report: dict[str, Any]) -> str:
    from nfit.formats.images import read_image

    recon, _ = read_image(out_dir / "recon.png")
    truth = _image_truth(report)
    roles: dict[str, list[str]] = {}
    note = "Drag on the picture or move the slider to move the split; zoom shows pixels as squares."
    if truth is not None and truth.shape == recon.shape:
        err, top = _error_map(recon, truth)
        roles = {"truth": [png_uri(truth)], "recon": [png_uri(recon)], "error": [png_uri(colormap(err, top))]}
        note += f" |error|: mean over channels, black 0 to yellow {top:.3g} (99.5th percentile)."
    else:
        roles = {"recon": [png_uri(recon)]}
        note += " The source image is not at its recorded path, so only the reconstruction is shown."
    return comparison(roles, note)


def ct_view(out_dir: Path, report: dict[str, Any]) -> str:
    from nfit.formats.images import read_image

    recon, _ = read_image(out_dir / "recon.png")
    fbp, _ = read_image(out_dir / "fbp.png")
    meta = report.get("signal") or {}
    truth = None
    if meta.get("ground_truth"):
        from nfit.signals.ct import load_truth

        source = Path(str(meta.get("source", "")))
        try:
            truth = load_truth(source)[..., None] if source.is_file() else None
        except Exception:  # a source changed since the fit: show what the folder holds
            truth = None
    roles: dict[str, list[str]] = {}
    note = "The classical baseline (filtered back-projection of the same training views) is one of the choices."
    if truth is not None and truth.shape == recon.shape:
        err, top = _error_map(recon, truth)
        roles = {"truth": [png_uri(truth)], "recon": [png_uri(recon)], "fbp": [png_uri(fbp)],
                 "error": [png_uri(colormap(err, top))]}
        note += f" |error| of the field: black 0 to yellow {top:.3g}."
    else:
        roles = {"recon": [png_uri(recon)], "fbp": [png_uri(fbp)]}
        note += " No ground truth: the field against the baseline."
    return comparison(roles, note)


# ------------------------------------------------------------------------------- volumes, MRI


def _volume_array(path: Path) -> np.ndarray:
    from nfit.formats.volumes import read_volume

    return np.asarray(read_volume(path).data, dtype=np.float32)


def _slices(volume: np.ndarray, index: np.ndarray, stride: int, lo: float, hi: float) -> list[str]:
    """Axial slices (through the last spatial axis) shown the radiological way up: the
    first axis across, the second up the screen."""
    out = []
    scale = (hi - lo) if hi > lo else 1.0
    for k in index:
        plane = volume[::stride, ::stride, int(k)]
        plane = np.transpose(plane, (1, 0, 2))[::-1]
        if plane.shape[2] not in (1, 3):
            plane = plane.mean(axis=2, keepdims=True)
        out.append(png_uri((plane - lo) / scale))
    return out


def _resampled(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if volume.shape[:3] == shape[:3]:
        return volume
    from scipy.ndimage import zoom

    factors = [t / s for t, s in zip(shape[:3], volume.shape[:3])] + [1.0]
    return zoom(volume, factors, order=1)


def volume_view(out_dir: Path, report: dict[str, Any]) -> str:
    files = report.get("files", [])
    name = next((f for f in files if f.startswith("recon.") and not f.endswith(".png")), None)
    if name is None:
        return ""
    recon = _volume_array(out_dir / name)
    meta = report.get("signal") or {}
    source = Path(str(meta.get("source", "")))
    truth = None
    if source.is_file() and (report.get("kind") != "mri" or meta.get("ground_truth", True)):
        try:
            truth = _resampled(_volume_array(source), recon.shape)
        except Exception:  # a source changed since the fit: show what the folder holds
            truth = None
    ref = truth if truth is not None else recon
    if meta.get("range"):
        lo, hi = (float(v) for v in meta["range"])
    else:
        lo, hi = float(ref.min()), float(ref.max())
    nz = recon.shape[2]
    index = np.unique(np.linspace(0, nz - 1, min(nz, MAX_SLICES)).round().astype(int))
    stride = max(1, math.ceil(max(recon.shape[:2]) / MAX_SLICE_SIDE))
    roles: dict[str, list[str]] = {}
    note = (f"Axial slices through the last axis ({len(index)} of {nz}"
            f"{f', every {stride}th voxel in plane' if stride > 1 else ''}); intensities scaled to "
            f"[{lo:.4g}, {hi:.4g}].")
    if truth is not None and truth.shape == recon.shape:
        roles["truth"] = _slices(truth, index, stride, lo, hi)
    roles["recon"] = _slices(recon, index, stride, lo, hi)
    if "zerofill.nii.gz" in files and (out_dir / "zerofill.nii.gz").is_file():
        roles["zerofill"] = _slices(_volume_array(out_dir / "zerofill.nii.gz"), index, stride, lo, hi)
        note += " The classical baseline (zero-filled inverse FFT of the same k-space samples) is one of the choices."
    if "truth" in roles:
        assert truth is not None
        err = np.abs(recon - truth).mean(axis=3) / ((hi - lo) if hi > lo else 1.0)
        top = float(np.percentile(err, 99.5)) or float(err.max()) or 1.0
        roles["error"] = [png_uri(colormap(np.transpose(err[::stride, ::stride, int(k)])[::-1], top))
                          for k in index]
        note += f" |error| (fraction of the range): black 0 to yellow {top:.3g}."
    labels = json.dumps([int(k) for k in index])
    return comparison(roles, note, z_label="z") + f"<script type=\"application/json\" data-zindex>{labels}</script>"


# ------------------------------------------------------------------------------- meshes


def _mesh_arrays(vertices: np.ndarray, faces: np.ndarray, centre: np.ndarray,
                 scale: float) -> dict[str, Any]:
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    pos = ((np.asarray(vertices, dtype=np.float64) - centre) / scale).astype("<f4")
    normals = np.asarray(mesh.vertex_normals, dtype="<f4")

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")

    return {"pos": b64(pos), "nrm": b64(normals), "idx": b64(np.asarray(faces, dtype="<u4")),
            "vertices": len(vertices), "faces": len(faces)}


def mesh_view(out_dir: Path, report: dict[str, Any]) -> str:
    """The reconstruction and the ground truth in two linked 3D views (WebGL, drawn by a
    small script of this package: drag turns both, the wheel zooms both)."""
    import trimesh

    from nfit.formats.meshes import read_mesh

    loaded = trimesh.load(out_dir / "recon.ply", force="mesh", process=False)
    rec_v = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
    rec_f = np.asarray(getattr(loaded, "faces", np.zeros((0, 3), dtype=int)))
    meta = report.get("signal") or {}
    source = Path(str(meta.get("source", "")))
    truth = None
    if source.is_file():
        try:
            truth = read_mesh(source)
        except Exception:  # a source changed since the fit: show what the folder holds
            truth = None
    ref = truth.vertices if truth is not None else rec_v
    if len(ref) == 0:
        return "<p class=\"warn\">The reconstruction is empty (no zero crossing on the grid).</p>"
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    centre, scale = (lo + hi) / 2, float(max((hi - lo).max() / 2, 1e-12))
    meshes: dict[str, Any] = {}
    too_big = []
    pairs = [("recon", rec_v, rec_f)] + ([("truth", truth.vertices, truth.faces)] if truth is not None else [])
    for role, v, f in pairs:
        if len(f) == 0:
            continue
        if len(f) > MAX_VIEWER_FACES:
            too_big.append(f"{ROLE_LABELS[role]} ({len(f):,} faces)")
            continue
        meshes[role] = _mesh_arrays(v, f, centre, scale)
    if not meshes:
        return (f"<p class=\"note\">{esc(', '.join(too_big))}: above {MAX_VIEWER_FACES:,} faces, shown as "
                "rendered views below instead of in the 3D viewer.</p>")
    figures = "".join(
        f"<figure><canvas data-mesh=\"{role}\" width=\"440\" height=\"440\"></canvas><figcaption>"
        f"{esc(ROLE_LABELS[role])}: {m['vertices']:,} vertices, {m['faces']:,} faces</figcaption></figure>"
        for role, m in meshes.items())
    note = ("Drag to turn, wheel to zoom, double-click to reset; both views move together. "
            "Both meshes are centred and scaled by the ground truth's bounding box.")
    if too_big:
        note += f" Not in the viewer ({', '.join(too_big)}): see the rendered views."
    data = json.dumps({k: {kk: vv for kk, vv in m.items() if kk in ("pos", "nrm", "idx")} for k, m in meshes.items()})
    return (f"<div class=\"meshes\" data-meshes>{figures}</div><p class=\"note\">{note}</p>"
            f"<p class=\"warn\" data-nowebgl hidden>This browser has no WebGL: see the rendered views below.</p>"
            f"<script type=\"application/json\" data-mesh-data>{_script_safe(data)}</script>")
