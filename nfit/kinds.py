"""What each signal kind is, importable without torch: its name, the files it reads, the
option values it implies, its published recipes, and the module that implements it.

The command line builds its commands and help from these facts, so ``nfit --help`` and
argument errors answer without loading torch; ``nfit.signals.signal_kind`` imports the
implementation when a job needs it. The kind classes read their facts from here: one
place for each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".npy", ".tif", ".tiff")
MESH_EXTENSIONS = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")


@dataclass(frozen=True)
class KindFacts:
    name: str
    #: "module:attribute" of the kind's implementation (a ``nfit.signals.SignalKind``)
    implementation: str
    extensions: tuple[str, ...]
    #: option values this kind implies unless given (under the YAML file and the flags)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: published recipes (``--protocol NAME``): {name: {"*": options, encoding: options}}
    protocols: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


KINDS: dict[str, KindFacts] = {k.name: k for k in (
    KindFacts("image", "nfit.signals.image:IMAGE", IMAGE_EXTENSIONS, {},
              # Tancik et al. 2020, appendix E.1 (natural images): 2000 full-batch Adam
              # steps, lr 1e-3 for the Fourier mappings and 1e-2 for none and basic,
              # sigma_g = 10; the notebook's posenc scale 6 means frequencies up to 2^6,
              # which is sigma 64 in nfit's posenc
              {"paper": {"*": {"steps": 2000, "lr": 1e-3, "batch": 0, "split": "paper"},
                         "none": {"lr": 1e-2}, "basic": {"lr": 1e-2}, "posenc": {"sigma": 64.0},
                         "gauss": {"sigma": 10.0}}}),
    # the full batch of a volume would not fit: random voxels per step
    KindFacts("volume", "nfit.signals.volume:VOLUME", VOLUME_EXTENSIONS, {"batch": 1 << 16}),
    # sigma 10 overfits the sampled points on [-1, 1]^3 (spot, 300 steps: IoU 0.09 at
    # sigma 8, 0.96 at 2, 0.98 at 1; bench/bench_sdf.py); each step draws 16,384 points
    KindFacts("sdf", "nfit.signals.mesh:SDF", MESH_EXTENSIONS, {"sigma": 2.0, "batch": 16_384}),
)}


def kind_facts(name: str) -> KindFacts:
    from nfit.errors import UsageError

    if name not in KINDS:
        raise UsageError(f"unknown signal kind {name!r}; choose from {', '.join(KINDS)}")
    return KINDS[name]
