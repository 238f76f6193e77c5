"""Triangle meshes: reading (through trimesh), checking, normalising, writing.

Domain: a mesh is fitted in [-1, 1]^3. ``normalise`` centres the bounding box at the
origin and scales uniformly so the longest side spans [-(1 - PADDING), 1 - PADDING]:

    v_norm = (v_file - center) / scale,   scale = max(bbox extent) / (2 (1 - PADDING))

The padding (0.1) leaves room for the near-surface samples and for marching cubes to
close the surface inside the grid. ``to_file`` inverts the map, so exported meshes
come back in the file's own coordinates and units.

Real files come with vertices duplicated along texture seams (OBJ writes one vertex per
(position, uv) pair); ``read_mesh`` merges vertices by position so the surface is
connected again, and refuses what no signed distance can be computed for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from nfit.catalog import MESH_EXTENSIONS
from nfit.errors import DataError

MESH_WRITE_EXTENSIONS = (".ply", ".obj", ".stl", ".glb")
#: fraction of the half-width of [-1, 1]^3 kept free around the mesh's bounding box
PADDING = 0.1
#: a bounding box whose shortest side is below this fraction of its longest is flat
FLAT_RATIO = 1e-6


@dataclass(frozen=True)
class Mesh:
    """A checked triangle mesh in the file's coordinates.

    vertices: (V, 3) float64; faces: (F, 3) int64 indices into vertices, F >= 1.
    """

    vertices: np.ndarray
    faces: np.ndarray
    source: str

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3): the bounding box's min and max corners."""
        return np.stack([self.vertices.min(axis=0), self.vertices.max(axis=0)])

    @property
    def diagonal(self) -> float:
        lo, hi = self.bounds
        return float(np.linalg.norm(hi - lo))


@dataclass(frozen=True)
class Normalisation:
    """v_norm = (v_file - center) / scale. center: (3,), scale > 0 (file units per domain unit)."""

    center: tuple[float, float, float]
    scale: float

    @classmethod
    def of(cls, mesh: Mesh, padding: float = PADDING) -> Normalisation:
        lo, hi = mesh.bounds
        center = (lo + hi) / 2
        scale = float((hi - lo).max()) / (2 * (1 - padding))
        return cls((float(center[0]), float(center[1]), float(center[2])), scale)

    def to_domain(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.center)) / self.scale

    def to_file(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.scale + np.asarray(self.center)

    def to_dict(self) -> dict[str, object]:
        return {"center": list(self.center), "scale": self.scale, "padding": PADDING}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Normalisation:
        c = [float(x) for x in cast("list[float]", data["center"])]
        return cls((c[0], c[1], c[2]), float(data["scale"]))  # type: ignore[arg-type]


def read_mesh(path: str | Path) -> Mesh:
    """Load a triangle mesh (OBJ, PLY, STL, OFF, GLB/GLTF; scenes are concatenated).

    Vertices are merged by position (texture seams, normals) and unreferenced vertices
    dropped. Raises DataError, with one line, for an unreadable file, a point cloud,
    no faces, NaN/Inf vertices, face indices out of range, or a flat mesh.
    """
    import trimesh

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a mesh file")
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise DataError(f"{path}: unsupported mesh format {path.suffix or '(none)'!r}; "
                        f"use one of: {', '.join(MESH_EXTENSIONS)}")
    try:
        # process=False: check the raw arrays before trimesh silently drops NaN vertices
        # or bad faces; force="mesh" concatenates a scene's geometries with their transforms.
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read as a mesh ({detail})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = getattr(loaded, "faces", None)
    faces = np.zeros((0, 3), dtype=np.int64) if faces is None else np.asarray(faces)
    if len(faces) == 0:
        if not len(vertices):
            # force="mesh" drops the points of a point cloud; look again to name it
            with contextlib.suppress(Exception):
                vertices = np.asarray(getattr(trimesh.load(str(path)), "vertices", vertices))
        if len(vertices):
            raise DataError(f"{path}: is a point cloud ({len(vertices)} points, no faces); "
                            "a signed distance needs a triangle mesh")
        raise DataError(f"{path}: the mesh has no faces")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise DataError(f"{path}: expected triangles in 3D, got vertices {vertices.shape} "
                        f"and faces {faces.shape}")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise DataError(f"{path}: {bad} vertices have NaN or infinite coordinates")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{path}: face indices out of range (vertex count {len(vertices)}, "
                        f"indices {int(faces.min())}..{int(faces.max())})")
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    # merge_tex/merge_norm: merge by position alone, so UV seams do not open the surface
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    mesh.remove_unreferenced_vertices()
    out = Mesh(np.asarray(mesh.vertices, dtype=np.float64),
               np.asarray(mesh.faces, dtype=np.int64), str(path))
    extent = out.bounds[1] - out.bounds[0]
    if extent.max() <= 0 or extent.min() <= FLAT_RATIO * extent.max():
        box = " x ".join(f"{e:.3g}" for e in extent)
        raise DataError(f"{path}: the mesh is flat (bounding box {box}); it encloses no volume")
    return out


def write_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh atomically; the extension (PLY, OBJ, STL, GLB) picks the format."""
    import trimesh

    from nfit.io import atomic_write_bytes

    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), process=False)
    file_type = Path(path).suffix.lower().lstrip(".")
    # With no file object, trimesh returns the encoded mesh (bytes or str) in a buffer.
    buffer = mesh.export(file_type=file_type)
    if isinstance(buffer, str):
        buffer = buffer.encode("utf-8")
    if not isinstance(buffer, bytes):
        raise DataError(f"{path}: trimesh could not encode a {file_type} file")
    atomic_write_bytes(Path(path), buffer)


__all__ = ["MESH_EXTENSIONS", "MESH_WRITE_EXTENSIONS", "PADDING", "Mesh", "Normalisation",
           "read_mesh", "write_mesh"]
