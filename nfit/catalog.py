"""What each signal kind, encoding and network is, importable without torch.

A kind: its name, the files it reads, the option values it implies, its published
recipes. An encoding: what it is, what --sigma means for it, the options it reads, what
it implies (a grid's small MLP), whether it learns. A network: the options it reads and
what it implies (SIREN: no encoding, its lr). Each names the module that implements it.

The command line builds its commands, help, option checks and `nfit encodings` from these
facts, so they answer without loading torch; the registries (``nfit.signals``,
``nfit.encodings.ENCODINGS``, ``nfit.networks.NETWORKS``) import the implementations, and
their classes take their facts from here: one place for each.
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
    #: the option naming measured data, which stands for PATH when PATH is not given
    input_option: str | None = None
    #: fitted through a measurement operator (the tangent-kernel study does not apply)
    through_operator: bool = False


#: the paper's CT views and MRI k-space fraction (its mask's: 111,130 of 96^3 entries)
CT_VIEWS = 20
MRI_FRACTION = 0.126
#: the CT and MRI notebooks run 1000 updates and report the evaluation after update 976
PAPER_REPORTED_STEP = 976


KINDS: dict[str, KindFacts] = {k.name: k for k in (
    KindFacts("image", "nfit.signals.image:IMAGE", IMAGE_EXTENSIONS, {},
              # Tancik et al. 2020, appendix E.1 (natural images): 2000 full-batch Adam
              # steps, lr 1e-3 for the Fourier mappings and 1e-2 for none and basic,
              # sigma_g = 10, posenc scale 6 (the notebook's natural images; 5 for its text
              # images); the notebooks' stax.Dense start (--init paper)
              {"paper": {"*": {"steps": 2000, "lr": 1e-3, "batch": "full", "split": "paper",
                               "schedule": "constant", "warmup": 0.0, "init": "paper", "patience": 0},
                         "none": {"lr": 1e-2}, "basic": {"lr": 1e-2}, "posenc": {"sigma": 6.0},
                         "gauss": {"sigma": 10.0}}}),
    # the full batch of a volume would not fit: random voxels per step
    # (the paper's notebooks fit with a constant-rate Adam, as nfit did before schedules)
    KindFacts("volume", "nfit.signals.volume:VOLUME", VOLUME_EXTENSIONS, {"batch": 1 << 16},
              # posenc: the scale of the MRI notebook, the paper's only 3D volumes
              {"paper": {"*": {"schedule": "constant", "warmup": 0.0, "init": "paper", "patience": 0},
                         "posenc": {"sigma": 4.0}}}),
    # sigma 10 overfits the sampled points on [-1, 1]^3 (spot, 300 steps: IoU 0.09 at
    # sigma 8, 0.96 at 2, 0.98 at 1; bench/bench_sdf.py); each step draws 16,384 points
    # The paper's protocol (Experiments/3d_shape_occupancy): occupancy, gauss sigma 12 on
    # [0, 1]^3 (6 on nfit's [-1, 1]^3), 8 layers of 256, 10,000 Adam steps of 32,768 points,
    # lr 5e-4 decayed continuously x0.1 every 5000 steps; posenc scale 6 (nfit's posenc maps
    # [-1, 1]^3 onto the notebook's [0, 1]^3, so its scale is the notebook's)
    KindFacts("sdf", "nfit.signals.mesh:SDF", MESH_EXTENSIONS, {"sigma": 2.0, "batch": 16_384},
              {"paper": {"*": {"target": "occupancy", "encoding": "gauss", "sigma": 6.0, "features": 256,
                               "width": 256, "depth": 8, "steps": 10_000, "batch": 32_768, "lr": 5e-4,
                               "schedule": "exp", "decay_steps": 5000, "warmup": 0.0, "init": "paper", "patience": 0},
                         "posenc": {"sigma": 6.0}}}),
    # tancik/fourier-feature-networks, Experiments/2d_CT: 20 parallel views of the notebook's
    # projector, 0.5 MSE on the sinogram, full-batch Adam at lr 1e-3 (posenc, gauss) or 1e-2
    # (none, basic), sigma 4 (gauss), 3 (posenc), no held-out views. 976 steps: the notebook
    # runs 1000 updates but its table reads its last evaluation, taken after update 976
    # (evaluations follow the update at step i when i % 25 == 0); the other 24 never reach it
    KindFacts("ct", "nfit.signals.ct:CT", IMAGE_EXTENSIONS, {"batch": "full", "steps": 1000, "sigma": 4.0},
              {"paper": {"*": {"steps": PAPER_REPORTED_STEP, "batch": "full", "lr": 1e-3, "projector": "paper",
                               "views": CT_VIEWS, "held_out": 0.0, "schedule": "constant", "warmup": 0.0,
                               "init": "paper", "patience": 0},
                         "none": {"lr": 1e-2}, "basic": {"lr": 1e-2},
                         "posenc": {"lr": 1e-3, "sigma": 3.0}, "gauss": {"lr": 1e-3, "sigma": 4.0}}},
              input_option="sinogram", through_operator=True),
    # Experiments/3d_MRI: 96^3 (local-mean resize, /255 of an 8-bit volume), the paper's own
    # mask (200,000 draws of PRNGKey(10): 12.56% of k-space) unless --fraction is given,
    # 0.5 MSE over the whole k-space grid, full-batch Adam at lr 2e-3 for every mapping,
    # sigma 5 (gauss), 4 (posenc); 976 steps as for CT (the reported evaluation)
    KindFacts("mri", "nfit.signals.mri:MRI", VOLUME_EXTENSIONS,
              {"batch": "full", "steps": 1000, "lr": 2e-3, "sigma": 5.0},
              {"paper": {"*": {"steps": PAPER_REPORTED_STEP, "batch": "full", "lr": 2e-3, "grid": "96x96x96",
                               "held_out": 0.0, "schedule": "constant", "warmup": 0.0, "init": "paper", "patience": 0},
                         "posenc": {"sigma": 4.0}, "gauss": {"sigma": 5.0}}},
              input_option="kspace", through_operator=True),
)}


def kind_facts(name: str) -> KindFacts:
    from nfit.errors import UsageError

    if name not in KINDS:
        raise UsageError(f"unknown signal kind {name!r}; choose from {', '.join(KINDS)}")
    return KINDS[name]


@dataclass(frozen=True)
class EncodingFacts:
    name: str
    implementation: str
    summary: str
    #: what --sigma means for this encoding
    sigma_meaning: str = "not used"
    #: the spec keys (FitConfig options) the encoding reads
    params: tuple[str, ...] = ()
    #: option values it implies unless given (a grid's small MLP and lr)
    defaults: dict[str, Any] = field(default_factory=dict)
    uses_sigma: bool = False
    #: learned parameters: its output cannot be cached across steps
    trainable: bool = False


_RANDOM = ("sigma", "features", "seed")
_GRID = ("levels", "features_per_level", "log2_table", "base_resolution", "finest_resolution", "bounds")
#: Instant-NGP's small MLP (2 hidden layers of 64) and its learning rate
_GRID_DEFAULTS = {"width": 64, "depth": 3, "lr": 1e-2}

ENCODING_FACTS: dict[str, EncodingFacts] = {e.name: e for e in (
    EncodingFacts("none", "nfit.encodings", "no mapping: the raw coordinates v"),
    EncodingFacts("basic", "nfit.encodings", "[cos 2 pi v, sin 2 pi v]: B is the identity"),
    EncodingFacts("posenc", "nfit.encodings",
                  "the paper's positional encoding: on each axis, frequencies 2^linspace(0, sigma, m) - 1, DC included",
                  "the paper's scale, in octaves: frequencies 0 to 2^sigma - 1 per axis (6 photographs, 3 CT, 4 MRI)",
                  # the notebooks' photographs' scale where the kind sets no sigma of its own: the
                  # shared default 10 would reach 1023 cycles per unit
                  ("sigma", "features", "bounds"), {"sigma": 6.0}, uses_sigma=True),
    EncodingFacts("geoposenc", "nfit.encodings",
                  "geometric positional encoding: on each axis, frequencies sigma^(j/m), j = 0..m-1 (no DC)",
                  "largest frequency: 1 up to sigma cycles per unit, geometric, per axis", ("sigma", "features"),
                  uses_sigma=True),
    EncodingFacts("gauss", "nfit.encodings", "Gaussian random Fourier features",
                  "standard deviation of B ~ N(0, sigma^2)", _RANDOM, uses_sigma=True),
    EncodingFacts("laplace", "nfit.encodings", "Laplacian random Fourier features",
                  "scale b of B ~ Laplace(0, b=sigma) (std = sqrt(2) sigma)", _RANDOM, uses_sigma=True),
    EncodingFacts("uniform", "nfit.encodings", "uniform random Fourier features",
                  "upper bound of B ~ sigma * U[0, 1) (std = sigma / sqrt(12))", _RANDOM, uses_sigma=True),
    EncodingFacts("loguniform", "nfit.encodings", "log-uniform random Fourier features",
                  "base of B ~ sigma^U, U ~ U[0, 1): frequencies from 1 to sigma, log-uniform", _RANDOM,
                  uses_sigma=True),
    EncodingFacts("hashgrid", "nfit.grids",
                  "multiresolution hash grid (Instant-NGP): L levels x F features, table 2^log2_table",
                  "not used (see --levels, --log2-table, --finest-resolution)", _GRID, _GRID_DEFAULTS,
                  trainable=True),
    EncodingFacts("densegrid", "nfit.grids", "multiresolution dense grids (no hashing): the baseline grid model",
                  "not used (see --levels, --finest-resolution)",
                  tuple(p for p in _GRID if p != "log2_table"), _GRID_DEFAULTS, trainable=True),
    EncodingFacts("mulfagrid", "nfit.grids",
                  "MulFAGrid: grid features blended by a learned multiplicative-filter kernel on Fourier features",
                  "not used (see --levels, --kernel-width, --finest-resolution)",
                  (*_GRID, "kernel_width", "kernel_layers", "frequencies", "seed", "kernel_form"), _GRID_DEFAULTS,
                  trainable=True),
)}


@dataclass(frozen=True)
class NetworkFacts:
    name: str
    implementation: str
    params: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)


#: how an MLP's layers start (``--init``; ``nfit.networks.initialise_linear``)
INITS = ("paper", "torch")

NETWORK_FACTS: dict[str, NetworkFacts] = {n.name: n for n in (
    NetworkFacts("mlp", "nfit.networks", ("init",)),
    # Sitzmann et al. 2020: sine layers on the raw coordinates, 5 layers, lr 1e-4
    NetworkFacts("siren", "nfit.networks", ("omega0",), {"encoding": "none", "depth": 5, "lr": 1e-4}),
    # the grid's features summed: the readout of the GTK analysis (Zhao et al. 2024)
    NetworkFacts("sum", "nfit.networks", (), {"encoding": "densegrid"}),
)}
