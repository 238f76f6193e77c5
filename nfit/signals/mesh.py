"""Meshes as signals: a signed distance (or occupancy) field in [-1, 1]^3.

The mesh is normalised into [-1, 1]^3 (``nfit.formats.meshes``: bounding box centred,
longest side spanning [-0.9, 0.9]); reconstructions are mapped back to the file's units.

Training points. A pool of ``pool`` points (default 200,000) is drawn once and labelled
with the exact signed distance (``nfit.geometry``), because the label is the costly
part; every step draws a fresh random batch (``batch``, default 16,384) from the pool,
so the field is never fitted to one fixed set. The pool mixes, by default:

- 40 % surface samples + N(0, 0.01^2) jitter (fine detail near the surface),
- 40 % surface samples + N(0, 0.1^2) jitter (the field's shape around it),
- 20 % uniform in [-1, 1]^3 (the far field, and no spurious surfaces),

set with ``mix: [fine, coarse, uniform]`` and ``jitter: [fine, coarse]`` (domain units)
in ``--config`` (``FitConfig.mix``, ``FitConfig.jitter``).

Targets. ``sdf`` (default): MSE on the signed distance in domain units, negative inside;
with ``--clamp C`` the target is the truncated distance clamp(s, -C, C) (DeepSDF), which
spends the capacity near the surface. ``occupancy``: inside (w > 1/2) = 1, outside = 0,
binary cross-entropy on logits, as in Tancik et al.'s 3D shape task. The network's output
is linear ("identity") in both cases; the surface is its zero level set.

Metrics on points never trained on: IoU of inside/outside on uniform points and on
near-surface points (surface + N(0, 0.01^2)), and Chamfer distance, F-score at 1 % of the
bounding-box diagonal and normal consistency between the marching-cubes reconstruction and
the input surface (``nfit.geometry.surface_metrics``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfit.catalog import KINDS
from nfit.config import FitConfig
from nfit.errors import DataError, UsageError
from nfit.field import Field
from nfit.formats.meshes import (
    MESH_WRITE_EXTENSIONS,
    Mesh,
    Normalisation,
    read_mesh,
    write_mesh,
)
from nfit.geometry import inside, iou, sample_surface, signed_distance, surface_metrics
from nfit.objectives import BCEObjective, EikonalObjective, Objective
from nfit.problem import FitResult, Problem
from nfit.signals.base import KindFromFacts, Task

TARGETS = ("sdf", "occupancy")
DEFAULTS: dict[str, Any] = {"target": "sdf", "resolution": 256, "clamp": 0.0, "pool": 200_000,
                            "eikonal": 0.0, "mix": (0.4, 0.4, 0.2), "jitter": (0.01, 0.1),
                            "eval_points": 20_000, "metric_points": 100_000}
#: near-surface IoU points: surface samples jittered by this standard deviation (domain units)
NEAR_SURFACE_JITTER = 0.01
#: F-score threshold as a fraction of the bounding-box diagonal
FSCORE_FRACTION = 0.01
MAX_RESOLUTION = 1024


def mesh_options(cfg: FitConfig) -> dict[str, Any]:
    """The mesh options of ``cfg`` over DEFAULTS, checked (UsageError on bad values)."""
    opts = {**DEFAULTS, **cfg.given("mesh")}
    target = str(opts["target"]).lower()
    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {opts['target']!r}")
    opts["target"] = target
    try:
        for key in ("resolution", "pool", "eval_points", "metric_points"):
            opts[key] = int(opts[key])
        opts["clamp"] = float(opts["clamp"])
        opts["eikonal"] = float(opts["eikonal"])
        mix = tuple(float(x) for x in opts["mix"])
        jitter = tuple(float(x) for x in opts["jitter"])
    except (TypeError, ValueError):
        raise UsageError("mesh options: resolution, pool, batch and clamp must be numbers, "
                         "mix a list of 3 and jitter a list of 2 numbers") from None
    if not 8 <= opts["resolution"] <= MAX_RESOLUTION:
        raise UsageError(f"--resolution must be in 8..{MAX_RESOLUTION}, got {opts['resolution']}")
    if not (math.isfinite(opts["eikonal"]) and opts["eikonal"] >= 0):
        raise UsageError(f"--eikonal must be 0 (off) or a positive weight, got {opts['eikonal']}")
    if opts["eikonal"] > 0 and target != "sdf":
        raise UsageError("--eikonal applies to --target sdf (an occupancy has no unit gradient)")
    if not (math.isfinite(opts["clamp"]) and opts["clamp"] >= 0):
        raise UsageError(f"--clamp must be 0 (off) or a positive distance, got {opts['clamp']}")
    if (opts["pool"] < 1000 or opts["eval_points"] < 100
            or opts["metric_points"] < 100):
        raise UsageError("mesh options need pool >= 1000, "
                         "eval_points and metric_points >= 100")
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise UsageError("mix must be 3 non-negative fractions [fine, coarse, uniform], "
                         f"got {list(mix)}")
    if len(jitter) != 2 or min(jitter) <= 0:
        raise UsageError(f"jitter must be 2 positive scales [fine, coarse], got {list(jitter)}")
    opts["mix"] = [x / sum(mix) for x in mix]
    opts["jitter"] = list(jitter)
    return opts


def sample_points(vertices: np.ndarray, faces: np.ndarray, n: int, mix: list[float],
                  jitter: list[float], rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points in [-1, 1]^3: surface samples jittered at two scales, plus uniform ones."""
    n_fine, n_coarse = int(round(n * mix[0])), int(round(n * mix[1]))
    n_uniform = n - n_fine - n_coarse
    surface, _ = sample_surface(vertices, faces, n_fine + n_coarse, rng)
    scale = np.repeat(np.asarray(jitter), [n_fine, n_coarse])[:, None]
    near = surface + rng.normal(size=surface.shape) * scale
    points = np.concatenate([near, rng.uniform(-1, 1, (n_uniform, 3))])
    return np.clip(points, -1, 1)


def label(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, target: str,
          clamp: float) -> np.ndarray:
    """(N, 1) float32 targets: signed distance (clamped when clamp > 0) or occupancy in {0, 1}."""
    if target == "occupancy":
        values = inside(points, vertices, faces).astype(np.float64)
    else:
        values = signed_distance(points, vertices, faces)
        if clamp > 0:
            values = np.clip(values, -clamp, clamp)
    return values.astype(np.float32)[:, None]


def pool_sampler(pool_x: torch.Tensor, pool_y: torch.Tensor):
    """A ``Problem.sampler``: n random points of the pool (at most the pool's size), on the
    generator's device (the pool is moved there once)."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def sample(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(generator.device)
        if key not in cache:
            cache[key] = (pool_x.to(generator.device), pool_y.to(generator.device))
        x, y = cache[key]
        idx = torch.randint(len(x), (min(n, len(x)),), device=generator.device,
                            generator=generator)
        return x[idx], y[idx]

    return sample


def grid_axis(resolution: int) -> np.ndarray:
    """The marching-cubes grid along one axis: ``resolution`` points spanning [-1, 1]."""
    return np.linspace(-1.0, 1.0, resolution)


def evaluate_grid(fld: Field, resolution: int, *, chunk: int = 1 << 16) -> np.ndarray:
    """The field's first output on the resolution^3 grid, (R, R, R) float32, indexed [x, y, z].

    Evaluated in chunks of ``chunk`` points (one z-slab at a time when it fits), so peak
    memory is the grid itself plus one chunk.
    """
    device = next(fld.parameters()).device
    axis = torch.from_numpy(grid_axis(resolution)).float()
    out = np.empty((resolution,) * 3, dtype=np.float32)
    plane = resolution * resolution
    rows = max(chunk // plane, 1)
    with torch.no_grad():
        for i0 in range(0, resolution, rows):
            xs = axis[i0:i0 + rows]
            pts = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
            values = torch.cat([fld(pts[j:j + chunk].to(device))[:, 0].float().cpu()
                                for j in range(0, len(pts), chunk)])
            out[i0:i0 + len(xs)] = values.reshape(len(xs), resolution, resolution).numpy()
    return out


def extract_surface(grid: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image) of the zero level set; vertices in [-1, 1]^3, faces
    oriented with normals pointing outside. Empty arrays when the grid never crosses zero."""
    from skimage.measure import marching_cubes

    if not (np.nanmin(grid) < 0 < np.nanmax(grid)):
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    spacing = 2.0 / (grid.shape[0] - 1)
    # scikit-image's "descent" orients faces for values increasing outwards (an SDF);
    # logits grow inwards, so occupancy needs the other winding (checked by a test)
    direction = "descent" if target == "sdf" else "ascent"
    verts, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(spacing,) * 3,
                                        gradient_direction=direction)
    return verts.astype(np.float64) - 1.0, faces.astype(np.int64)


def predicted_inside(values: Any, target: str) -> Any:
    """The one inside/outside rule (numpy or torch values): a signed distance below 0, an
    occupancy logit (or a 0/1 target) above 0."""
    return values < 0 if target == "sdf" else values > 0


def mesh_objective(target: str, eikonal: float = 0.0) -> Objective:
    """MSE on the signed distance (plus ``eikonal`` times the eikonal term) or BCE on
    occupancy logits; both score (and sweeps select on) the IoU of the inside/outside sign
    through ``predicted_inside``."""
    rule = functools.partial(predicted_inside, target=target)
    if target != "sdf":
        return BCEObjective(inside=rule)
    return EikonalObjective(eikonal, inside=rule) if eikonal > 0 else Objective(inside=rule)


@dataclass
class MeshState:
    """What a mesh fit's outputs read: the mesh, its vertices in [-1, 1]^3, the mesh options
    and the seed of the final metrics' points."""

    mesh: Mesh
    vertices: np.ndarray
    options: dict[str, Any]
    seed: int


class SdfKind(KindFromFacts):
    name = "sdf"

    def prepare(self, path: Path, cfg: FitConfig) -> Task:
        opts = mesh_options(cfg)
        mesh = read_mesh(path)
        norm = Normalisation.of(mesh)
        vertices = norm.to_domain(mesh.vertices)
        rng = np.random.default_rng(int(cfg.seed))
        target, clamp = opts["target"], opts["clamp"]
        pool = sample_points(vertices, mesh.faces, opts["pool"], opts["mix"], opts["jitter"], rng)
        evals = {}
        for role in ("val", "test"):
            pts = sample_points(vertices, mesh.faces, opts["eval_points"], opts["mix"],
                                opts["jitter"], rng)
            evals[role] = (torch.from_numpy(pts).float(),
                           torch.from_numpy(label(pts, vertices, mesh.faces, target, clamp)))
        pool_x = torch.from_numpy(pool).float()
        pool_y = torch.from_numpy(label(pool, vertices, mesh.faces, target, clamp))
        problem = Problem(pool_x, pool_y, evals, objective=mesh_objective(target, opts["eikonal"]),
                          sampler=pool_sampler(pool_x, pool_y), batch=KINDS["sdf"].defaults["batch"], kind_name="sdf")
        meta = {"kind": self.name, "source": str(path), "target": target,
                "normalisation": norm.to_dict(), "vertices": len(mesh.vertices),
                "faces": len(mesh.faces), "bounds": mesh.bounds.tolist(),
                "diagonal": mesh.diagonal, "resolution": opts["resolution"], "clamp": clamp,
                "pool": opts["pool"], "mix": opts["mix"],
                "jitter": opts["jitter"], "domain": [-1.0, 1.0]}  # per axis: [-1, 1]^3
        # sweeps choose on the IoU of the sign on the held-out points, for both targets
        return Task(self.name, 3, 1, problem, meta, output="identity",
                    state=MeshState(mesh, vertices, opts, int(cfg.seed)))

    def write_outputs(self, task: Task, result: FitResult, out_dir: Path) -> dict[str, Any]:
        state: MeshState = task.state
        mesh, vertices, opts = state.mesh, state.vertices, state.options
        target = opts["target"]
        norm = Normalisation.from_dict(task.meta["normalisation"])
        fld = result.field
        device = next(fld.parameters()).device

        grid = evaluate_grid(fld, opts["resolution"])
        rec_v, rec_f = extract_surface(grid, target)
        report: dict[str, Any] = {"files": ["recon.ply", "preview.png"]}
        if len(rec_f) == 0:
            report["warning"] = "the field has no zero crossing on the grid: recon.ply is empty"

        # held-out point sets, drawn from a seed the training pool never used
        rng = np.random.default_rng(state.seed + 7919)
        n = opts["metric_points"]
        uniform = rng.uniform(-1, 1, (n, 3))
        surface, _ = sample_surface(vertices, mesh.faces, n, rng)
        near = np.clip(surface + rng.normal(size=surface.shape) * NEAR_SURFACE_JITTER, -1, 1)
        scores: dict[str, float] = {}
        for name, pts in (("iou_uniform", uniform), ("iou_near_surface", near)):
            values = predict_points(fld, pts, device)
            scores[name] = iou(predicted_inside(values, target), inside(pts, vertices, mesh.faces))
        diag = mesh.diagonal / norm.scale  # the bounding-box diagonal in domain units
        surf = surface_metrics((rec_v, rec_f), (vertices, mesh.faces),
                               threshold=FSCORE_FRACTION * diag, n=n, seed=state.seed)
        scores["chamfer"] = surf["chamfer"] / diag
        scores["chamfer_file_units"] = surf["chamfer"] * norm.scale
        scores["fscore_1pct"] = surf["fscore"]
        scores["normal_consistency"] = surf["normal_consistency"]

        write_mesh(out_dir / "recon.ply", norm.to_file(rec_v), rec_f)
        plot_preview(out_dir / "preview.png", grid, vertices, mesh.faces, target,
                     title=f"{Path(mesh.source).name}: {target} field, zero level")
        report["test_metrics"] = scores
        report["surface"] = {"recon_vertices": len(rec_v), "recon_faces": len(rec_f),
                             "resolution": opts["resolution"],
                             "chamfer_is": "mean nearest-sample distance, both ways averaged, "
                                           "as a fraction of the bounding-box diagonal",
                             "fscore_threshold": f"{FSCORE_FRACTION:g} x bounding-box diagonal",
                             "iou_points": n}
        return report

    def render_extensions(self) -> tuple[str, ...]:
        return MESH_WRITE_EXTENSIONS

    def render(self, fld: Field, meta: dict[str, Any], out: Path, *, size: str | None = None,
               resolution: int | None = None) -> dict[str, Any]:
        if size:
            raise UsageError("--size is for images and volumes; use --resolution for SDF fields")
        res = int(resolution or meta.get("resolution", DEFAULTS["resolution"]))
        if not 8 <= res <= MAX_RESOLUTION:
            raise UsageError(f"--resolution must be in 8..{MAX_RESOLUTION}, got {res}")
        norm = Normalisation.from_dict(meta["normalisation"])
        target = meta.get("target", "sdf")
        rec_v, rec_f = extract_surface(evaluate_grid(fld, res), target)
        if len(rec_f) == 0:
            raise DataError("the field has no surface (no zero crossing) on the grid")
        write_mesh(out, norm.to_file(rec_v), rec_f)
        return {"out": str(out), "resolution": res, "vertices": len(rec_v), "faces": len(rec_f)}


def predict_points(fld: Field, points: np.ndarray, device: torch.device,
                   chunk: int = 1 << 16) -> np.ndarray:
    """(N,) first output of the field at points (N, 3) in [-1, 1]^3."""
    x = torch.from_numpy(np.asarray(points, dtype=np.float32))
    with torch.no_grad():
        return torch.cat([fld(x[i:i + chunk].to(device))[:, 0].float().cpu()
                          for i in range(0, len(x), chunk)]).numpy()


def plot_preview(path: Path, grid: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                 target: str, title: str = "") -> None:
    """Top row: the field on the three centre slices, its zero contour (black) and the true
    surface's (winding number 1/2, dashed red). Bottom row: the reconstructed shape seen
    along each axis as a shaded depth map (first inside voxel along the axis)."""
    from nfit.plots import _figure, _save

    res = grid.shape[0]
    axis = grid_axis(res)
    mid = res // 2
    plt, fig = _figure(12.0, 8.0)
    inside_grid = predicted_inside(grid, target)
    # slice k fixes coordinate k at the centre; shown with the other two as (horizontal, vertical)
    names = ("x", "y", "z")
    slice_res = min(res, 128)
    s_axis = np.linspace(-1, 1, slice_res)
    for k in range(3):
        a, b = [i for i in range(3) if i != k]
        values = np.take(grid, mid, axis=k)  # indexed [a, b]
        ax = fig.add_subplot(2, 3, k + 1)
        limit = float(np.nanmax(np.abs(values))) or 1.0
        ax.imshow(values.T, origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu",
                  vmin=-limit, vmax=limit)
        if values.min() < 0 < values.max():
            ax.contour(axis, axis, values.T, levels=[0.0], colors="k", linewidths=1.0)
        uu, vv = np.meshgrid(s_axis, s_axis, indexing="ij")
        pts = np.zeros((slice_res * slice_res, 3))
        pts[:, a], pts[:, b] = uu.ravel(), vv.ravel()
        truth = inside(pts, vertices, faces).reshape(slice_res, slice_res).astype(float)
        if 0 < truth.mean() < 1:
            ax.contour(s_axis, s_axis, truth.T, levels=[0.5], colors="r", linewidths=1.0,
                       linestyles="dashed")
        ax.set_title(f"{names[k]} = 0 slice")
        ax.set_xlabel(names[a])
        ax.set_ylabel(names[b])
        view = fig.add_subplot(2, 3, k + 4)
        hit = inside_grid.any(axis=k)
        depth = np.argmax(np.moveaxis(inside_grid, k, -1)[..., ::-1], axis=-1).astype(float)
        gy, gx = np.gradient(np.where(hit, depth, np.nan))
        shade = np.clip(0.6 + 0.4 * (gx - gy) / (1 + np.sqrt(gx ** 2 + gy ** 2)), 0, 1)
        image = np.where(hit, shade * (1 - 0.5 * depth / res), 1.0)
        view.imshow(np.nan_to_num(image, nan=0.8).T, origin="lower", extent=(-1, 1, -1, 1),
                    cmap="gray", vmin=0, vmax=1)
        view.set_title(f"reconstruction seen from +{names[k]}")
        view.set_axis_off()
    if title:
        fig.suptitle(title)
    _save(plt, fig, path)


SDF = SdfKind()

__all__ = ["SDF", "SdfKind", "evaluate_grid", "extract_surface", "mesh_options", "sample_points"]
