"""Every fit option, defined once: typed fields whose docstrings are the ``--help`` text.

Values come, in order, from the defaults (Tancik et al. 2020), the signal kind's own
defaults (``SignalKind.defaults``: sdf sigma 2, its batch), what the chosen model and
encoding imply (``defaults`` in their registries: a grid's small MLP, SIREN's lr), a YAML
file, and the flags or spec entries given. An unknown key anywhere is a usage error that
names the closest valid one; an option that applies to nothing in the job (``--levels``
with a Fourier encoding, ``--target`` on an image) is one too.

Options of a group (``metadata["group"]``) are read only by what that group names: grid
encodings read theirs through ``encoding_spec``, SIREN through ``network_spec``, the mesh
kind through ``nfit.signals.mesh.mesh_options``. ``None`` means "that reader's default".
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nfit.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "tf32")
STORES = ("fp32", "fp16", "bf16")
#: --steps when a --time-budget is given without one: the budget decides
BUDGET_STEP_CAP = 1_000_000
#: --patience by default, in steps, where the fit has a validation set (see README,
#: "Early stopping", for the measurement that chose it)
DEFAULT_PATIENCE = 200
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """'300', '90s', '5m', '1h30m', '2.5m' -> seconds (> 0)."""
    value = str(text).strip().lower()
    match = _DURATION.fullmatch(value)
    if not value or not match or not any(match.groups()):
        raise UsageError(f"bad --time-budget {text!r}: expected seconds or a duration like 90s, 5m, 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise UsageError(f"--time-budget must be positive, got {text!r}")
    return seconds


def parse_batch(text: str | int) -> int | None:
    """``--batch`` as a number: None for auto, 0 for the full batch, else points per step."""
    value = str(text).strip().lower()
    if value in ("auto", "0"):
        return None
    if value == "full":
        return 0
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (number >= 1 and number == int(number)):
        raise UsageError(f"--batch must be auto, full or a positive number of points, got {text!r}")
    return int(number)


def _group(name: str, cli: bool = True, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Field metadata: the option's group, whether it is a flag, the signal kinds that read it."""
    return {"group": name, "cli": cli, "kinds": kinds}


MESH = ("sdf",)
CT = ("ct",)
MRI = ("mri",)


@dataclass
class FitConfig:
    """Everything that decides a fit's result. Written as ``config.yaml`` next to the results."""

    encoding: str = "gauss"
    """input encoding: none, basic, posenc (the paper's), geoposenc, gauss, laplace, uniform, loguniform, hashgrid, densegrid, mulfagrid (see `nfit encodings`)"""
    sigma: float = 10.0
    """bandwidth: the scale of the encoding's frequencies (posenc: octaves, frequencies up to 2^sigma - 1; see `nfit encodings`)"""
    features: int = 256
    """number of Fourier frequencies m (the encoding gives 2m features)"""
    model: str = "mlp"
    """network: mlp, siren or sum (siren implies --encoding none; sum, the grid's features summed, implies --encoding densegrid)"""
    width: int = 256
    """hidden width of the network (64 after a grid encoding)"""
    depth: int = 4
    """number of linear layers (3 after a grid encoding, 5 for siren)"""
    init: str = field(default="torch", metadata=_group("mlp"))
    """how the MLP's layers start: paper (the paper's notebooks: W from a truncated normal with std sqrt(2/(fan_in+fan_out)), b ~ N(0, 0.01^2)) or torch (nn.Linear's uniform, std 1/sqrt(3 fan_in)); siren keeps its own"""
    steps: int = 2000
    """optimisation steps"""
    lr: float = 1e-3
    """Adam learning rate (1e-2 for grid encodings, 1e-4 for siren)"""
    seed: int = 0
    """seed for weights, frequencies and sampling"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    precision: str = "auto"
    """auto, fp32, bf16 or tf32"""
    split: str = "paper"
    """paper (train [::2,::2], test [1::2,1::2], validation [::2,1::2]), all, or random[:F]"""
    batch: str = "auto"
    """points per step: auto (images: the full batch up to 2^16 points, random minibatches of 2^16 beyond), full, or a number (0 = auto)"""
    eval_every: int = 25
    """steps between evaluations of the held-out sets"""
    protocol: str | None = None
    """a published recipe for this kind, set under the flags given: paper (the paper's lr per encoding, sigma or posenc scale, steps, full batch, constant rate, --init paper)"""

    # Optimizer, schedule, budgets and storage (nfit.train, nfit.schedules; --batch: nfit.feeds).
    schedule: str = "constant"
    """learning-rate schedule: constant, cosine (from --lr down to 0 over the fit) or exp (x0.1 every --decay-steps)"""
    warmup: float = 0.0
    """warm-up: the rate rises linearly from 0 over this fraction of the fit (0 = none; 0.05 is usual with cosine)"""
    decay_steps: int = 0
    """exp schedule: steps per x0.1 of the rate (0 = the whole fit)"""
    optimizer: str = "adam"
    """adam, or sgd (plain gradient descent, as the kernel studies' predictions assume)"""
    time_budget: str | None = None
    """stop when this much training time is spent (300, 90s, 5m, 1h30m), then write every output; with it --steps is only a cap"""
    target_psnr: float | None = None
    """stop when this PSNR (dB) is reached: on the validation set where there is one, else the test set (= the training set for --split all)"""
    patience: int | None = None
    """early stopping: stop when the validation score (PSNR; IoU for meshes) has not improved for this many steps, and write the best step's state, not the last; 0 = off (default: 200 where the fit has a validation set, off under --protocol)"""
    params: float | None = None
    """size the model to this many parameters (1e5): the MLP's width, or the grid's table (hashgrid: levels and table size; densegrid, mulfagrid: finest resolution)"""
    store: str = "fp32"
    """dtype of the weights in model.safetensors: fp32, fp16 or bf16 (buffers such as random frequencies stay fp32)"""

    levels: int | None = field(default=None, metadata=_group("grid"))
    """grid levels L (hashgrid 16, densegrid/mulfagrid 8)"""
    log2_table: int | None = field(default=None, metadata=_group("grid"))
    """hash table size T = 2^N per level (hashgrid 19)"""
    features_per_level: int | None = field(default=None, metadata=_group("grid"))
    """grid features F per level (default 2)"""
    base_resolution: int | None = field(default=None, metadata=_group("grid"))
    """coarsest grid resolution N_min (default 16)"""
    finest_resolution: int | None = field(default=None, metadata=_group("grid"))
    """finest grid resolution N_max (hashgrid 512, or the signal's longest side in samples where larger; densegrid/mulfagrid 256)"""
    kernel_width: int | None = field(default=None, metadata=_group("grid"))
    """mulfagrid: hidden width of the kernel's filter network (default 16)"""
    kernel_layers: int | None = field(default=None, metadata=_group("grid"))
    """mulfagrid: multiplicative filter layers (default 2)"""
    frequencies: int | None = field(default=None, metadata=_group("grid"))
    """mulfagrid: Fourier octaves fed to the kernel (default 4)"""
    kernel_form: str | None = field(default=None, metadata=_group("grid"))
    """mulfagrid: offset (default: the kernel reads the offset to each vertex and scales the d-linear weight) or paper (Eqs. 6-8 as published)"""
    omega0: float | None = field(default=None, metadata=_group("siren"))
    """siren: frequency factor omega0 of the sine layers (default 30)"""

    target: str | None = field(default=None, metadata=_group("mesh", kinds=MESH))
    """sdf: sdf (signed distance, MSE) or occupancy (inside/outside, cross-entropy) (default sdf)"""
    resolution: int | None = field(default=None, metadata=_group("mesh", kinds=MESH))
    """sdf: marching-cubes grid per axis for recon.ply (default 256)"""
    clamp: float | None = field(default=None, metadata=_group("mesh", kinds=MESH))
    """sdf: fit the truncated distance clamp(s, -C, C) in [-1,1]^3 units; 0 = off (default 0)"""
    pool: int | None = field(default=None, metadata=_group("mesh", kinds=MESH))
    """sdf: labelled points drawn once; each step samples --batch of them (default 200000)"""
    mix: list[float] | None = field(default=None, metadata=_group("mesh", cli=False, kinds=MESH))
    """sdf: pool fractions [fine, coarse, uniform] (default [0.4, 0.4, 0.2])"""
    jitter: list[float] | None = field(default=None, metadata=_group("mesh", cli=False, kinds=MESH))
    """sdf: surface jitter scales [fine, coarse] (default [0.01, 0.1])"""
    eval_points: int | None = field(default=None, metadata=_group("mesh", cli=False, kinds=MESH))
    """sdf: points of each held-out set scored during training (default 20000)"""
    metric_points: int | None = field(default=None, metadata=_group("mesh", cli=False, kinds=MESH))
    """sdf: points of the final IoU, Chamfer and F-score (default 100000)"""
    eikonal: float | None = field(default=None, metadata=_group("mesh", kinds=MESH))
    """sdf: weight of the eikonal term mean (|grad f| - 1)^2 added to the loss (a signed distance has a unit gradient; Fourier or plain encodings; default 0 = off)"""

    views: int | None = field(default=None, metadata=_group("ct", kinds=CT))
    """ct: projections simulated from the image, evenly spaced over [0, 180) degrees (default 20)"""
    angles: str | None = field(default=None, metadata=_group("ct", kinds=CT))
    """ct: projection angles in degrees: START:END:N (END excluded, e.g. 0:180:20) or a list 0,9,18 (default 0:180:VIEWS)"""
    sinogram: str | None = field(default=None, metadata=_group("ct", kinds=CT))
    """ct: measured projections to reconstruct (.npy, views x bins, real); PATH, if given too, is the ground truth"""
    projector: str | None = field(default=None, metadata=_group("ct", kinds=CT))
    """ct: paper (nearest-neighbour rotation, mean over rows) or standard (bilinear, sum along rays as skimage radon) (default standard)"""
    kspace: str | None = field(default=None, metadata=_group("mri", kinds=MRI))
    """mri: measured k-space to reconstruct (.npy complex, numpy.fft layout, zeros where not sampled); needs --mask"""
    mask: str | None = field(default=None, metadata=_group("mri", kinds=MRI))
    """mri: sampling mask of --kspace (.npy, same shape, nonzero = sampled, numpy.fft layout)"""
    fraction: float | None = field(default=None, metadata=_group("mri", kinds=MRI))
    """mri: fraction of k-space the simulated variable-density mask samples (default 0.126, the paper's)"""
    grid: str | None = field(default=None, metadata=_group("mri", kinds=MRI))
    """mri: resample the volume to AxBxC voxels first (linear; the affine follows), e.g. 96x96x96 (default: as the file)"""
    noise: str | None = field(default=None, metadata=_group("measure", kinds=CT + MRI))
    """ct, mri: noise added to simulated measurements: poisson:I0 (ct, I0 photons per ray), gaussian:S (std S in image units) (default none)"""
    held_out: float | None = field(default=None, metadata=_group("measure", kinds=CT + MRI))
    """ct, mri: fraction of the measurements held out for validation (ct: views, mri: k-space samples); sweeps select on them (default 0)"""

    def __post_init__(self) -> None:
        # --batch takes words and numbers; Python callers may pass an int
        self.batch = str(self.batch).strip().lower()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def batch_size(self) -> int | None:
        """--batch as a number (``parse_batch``); what it means is the feed's (``nfit.feeds``)."""
        return parse_batch(self.batch)

    def time_budget_s(self) -> float | None:
        """--time-budget in seconds (None without one)."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def given(self, group: str) -> dict[str, Any]:
        """The options of ``group`` that are set (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("group") == group and getattr(self, f.name) is not None}

    def encoding_spec(self) -> dict[str, Any]:
        """The encoding's spec: the shared options and the grid options it declares."""
        from nfit.catalog import ENCODING_FACTS

        own = getattr(ENCODING_FACTS.get(self.encoding), "params", ())
        return {**{k: v for k, v in self.given("grid").items() if k in own},
                "type": self.encoding, "sigma": self.sigma, "features": self.features,
                "seed": self.seed}

    def network_spec(self, output: str = "sigmoid") -> dict[str, Any]:
        from nfit.catalog import NETWORK_FACTS

        own = getattr(NETWORK_FACTS.get(self.model), "params", ())
        given = {**self.given("mlp"), **self.given("siren")}
        return {**{k: v for k, v in given.items() if k in own},
                "type": self.model, "width": self.width, "depth": self.depth, "output": output}

    def validate(self) -> FitConfig:
        from nfit.catalog import ENCODING_FACTS, NETWORK_FACTS

        if self.encoding not in ENCODING_FACTS:
            raise UsageError(f"unknown encoding {self.encoding!r}; choose from: {', '.join(sorted(ENCODING_FACTS))}")
        if self.model not in NETWORK_FACTS:
            raise UsageError(f"unknown model {self.model!r}; choose from: {', '.join(sorted(NETWORK_FACTS))}")
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if not (math.isfinite(self.lr) and 0 < self.lr < 1e37):
            # Adam's first step divides the rate by 1 - beta1 = 0.1, which must stay a float32
            raise UsageError(f"--lr must be a positive number below 1e37, got {self.lr}")
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise UsageError(f"--sigma must be a positive number, got {self.sigma}")
        if self.features < 1 or self.width < 1 or self.depth < 1:
            raise UsageError("--features, --width and --depth must be at least 1")
        self.batch_size()
        from nfit.schedules import check_optimizer, check_schedule

        check_schedule(self.schedule, self.warmup, self.decay_steps)
        check_optimizer(self.optimizer)
        self.time_budget_s()
        if self.target_psnr is not None and not math.isfinite(self.target_psnr):
            raise UsageError(f"--target-psnr must be a number of dB, got {self.target_psnr}")
        if self.params is not None and not (math.isfinite(self.params) and self.params >= 10):
            raise UsageError(f"--params must be a number of parameters of at least 10, got {self.params:g}")
        from nfit.catalog import INITS

        if self.init not in INITS:
            raise UsageError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.store not in STORES:
            raise UsageError(f"--store must be one of {', '.join(STORES)}, got {self.store!r}")
        if self.patience is not None and self.patience < 0:
            raise UsageError(f"--patience must be 0 (off) or a number of steps, got {self.patience}")
        if self.eval_every < 1:
            raise UsageError(f"--eval-every must be at least 1, got {self.eval_every}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self


def value_type(annotation: str) -> type:
    """The value type of a field's (postponed) annotation: 'int | None' -> int,
    'list[float] | None' -> list."""
    name = annotation.split(" | ")[0].split("[")[0]
    return {"str": str, "int": int, "float": float, "bool": bool, "list": list}[name]


@functools.cache
def option_help(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string right after each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            found[prev.target.id] = " ".join(node.value.value.split())
    return found


OPTIONS = {f.name: f for f in fields(FitConfig)}


def unknown_key(key: str, valid: list[str], where: str) -> UsageError:
    """The usage error for an unknown option, naming the closest valid one."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(valid))}"
    return UsageError(f"unknown option {key!r} in {where}{hint}")


def check_keys(values: dict[str, Any], valid: list[str], where: str) -> None:
    for key in values:
        if key not in valid:
            raise unknown_key(key, valid, where)


def registry_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Settings implied by the chosen model and encoding (``defaults`` in their registries).

    ``--model siren`` implies ``--encoding none`` and the paper's lr; a grid encoding
    implies its small MLP (2 hidden layers of 64) and Instant-NGP's lr. The model's
    defaults are read first, since they may choose the encoding.
    """
    from nfit.catalog import ENCODING_FACTS, NETWORK_FACTS

    implied: dict[str, Any] = {}
    model = NETWORK_FACTS.get(values.get("model", FitConfig.model))
    implied.update(getattr(model, "defaults", {}))
    encoding = ENCODING_FACTS.get(values.get("encoding", implied.get("encoding", FitConfig.encoding)))
    for key, value in getattr(encoding, "defaults", {}).items():
        implied.setdefault(key, value)
    return {k: v for k, v in implied.items() if k not in values}


def load_yaml_config(path: Path | None) -> dict[str, Any]:
    """Read a YAML mapping of option names (dashes or underscores) to values."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    check_keys(values, list(OPTIONS), f"--config {path}")
    return values


def coerce_option(key: str, value: Any) -> Any:
    """One option's value as its FitConfig field's type (a usage error when it is not one)."""
    if value is None:
        return None
    kind = value_type(str(OPTIONS[key].type))
    try:
        return [float(v) for v in value] if kind is list else kind(value)
    except (TypeError, ValueError):
        name = "a list of numbers" if kind is list else kind.__name__
        raise UsageError(f"option {key!r}: cannot use {value!r} as {name}") from None


def merge_config(file_values: dict[str, Any], flags: dict[str, Any], *,
                 kind: str | None = None, where: str = "options",
                 encodings: list[str] | None = None) -> FitConfig:
    """Defaults, the kind's defaults, registry defaults, the YAML file, then the flags
    that were given (not None). Unknown keys and options no part of the fit reads are
    usage errors."""
    given: dict[str, Any] = {}
    for source in (file_values, {k: v for k, v in flags.items() if v is not None}):
        check_keys(source, list(OPTIONS), where)
        given.update(source)
    values: dict[str, Any] = {}
    if kind is not None:
        from nfit.catalog import kind_facts

        values.update(kind_facts(kind).defaults)
        if given.get("protocol") is not None:
            values.update(protocol_values(kind, str(given["protocol"]),
                                          str(given.get("encoding") or values.get("encoding") or FitConfig.encoding)))
    elif given.get("protocol") is not None:
        raise UsageError("--protocol needs a signal kind")
    values.update(given)
    if given.get("time_budget") is not None and "steps" not in given:
        values["steps"] = BUDGET_STEP_CAP  # the budget decides where the fit stops
    values.update(registry_defaults(values))
    cfg = FitConfig(**{k: coerce_option(k, v) for k, v in values.items()})
    cfg.validate()
    check_applicable(cfg, set(given), kind, encodings)
    return cfg


def protocol_values(kind: str, name: str, encoding: str) -> dict[str, Any]:
    """The options a kind's published recipe sets for one encoding (``SignalKind.protocols``:
    ``{name: {"*": {...}, encoding: {...}}}``, the encoding's entries over the shared ones)."""
    from nfit.catalog import kind_facts

    protocols = kind_facts(kind).protocols
    if name not in protocols:
        have = ", ".join(sorted(protocols)) or "none"
        raise UsageError(f"--protocol {name!r} is not defined for {kind} fits (defined: {have})")
    recipe = protocols[name]
    return {**recipe.get("*", {}), **recipe.get(encoding, {})}


def check_applicable(cfg: FitConfig, given: set[str], kind: str | None,
                     encodings: list[str] | None = None) -> None:
    """Refuse an option that nothing in the job reads, so no option is silently ignored."""
    from nfit.catalog import ENCODING_FACTS, NETWORK_FACTS

    names = encodings or [cfg.encoding]
    for key in sorted(given):
        group = OPTIONS[key].metadata.get("group")
        if group == "grid" and not any(key in getattr(ENCODING_FACTS.get(e), "params", ()) for e in names):
            readers = [n for n, c in sorted(ENCODING_FACTS.items()) if key in c.params]
            raise UsageError(f"--{key.replace('_', '-')} applies to {', '.join(readers)} only, "
                             f"not --encoding {','.join(names)}")
        if group == "siren" and key not in getattr(NETWORK_FACTS.get(cfg.model), "params", ()):
            raise UsageError(f"--{key.replace('_', '-')} applies to --model siren only")
        if group == "mlp" and key not in getattr(NETWORK_FACTS.get(cfg.model), "params", ()):
            raise UsageError(f"--{key.replace('_', '-')} applies to --model mlp only "
                             f"(--model {cfg.model} starts its own way)")
        kinds = OPTIONS[key].metadata.get("kinds")
        if kinds and kind is not None and kind not in kinds:
            raise UsageError(f"--{key.replace('_', '-')} applies to {', '.join(kinds)} fits only, not {kind}")
