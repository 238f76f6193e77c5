"""Typed, JSON-serialisable job specs: what one nfit command does, as data.

    from nfit.spec import FitSpec
    spec = FitSpec(kind="image", input="photo.png", options={"encoding": "gauss", "sigma": 10})
    report = nfit.api.run(spec)              # what `nfit image photo.png --sigma 10` does
    atomic_write_text(Path("job.json"), spec.to_json())   # nfit.io
    report = nfit.api.run(load_spec("job.json"))

``options`` holds the fit options that were given (``nfit.config.FitConfig`` names, as
in a ``--config`` YAML file); everything not given takes the kind's and the registries'
defaults when the job runs, so a spec says what its author chose and no more. Every
other field is a job setting, typed, with its docstring as the CLI's help. An unknown key,
at the top or inside ``options``, is a usage error naming the closest valid one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from nfit.config import OPTIONS, FitConfig, check_keys, merge_config
from nfit.errors import UsageError

AUTO_ROUNDS = 4


@dataclass
class JobSpec:
    """Fields every job has."""

    command: ClassVar[str] = ""
    kind: str
    """signal kind: image, volume or sdf"""
    input: str
    """the signal file"""
    options: dict[str, Any] = field(default_factory=dict)
    """fit options given (FitConfig names); the rest take their defaults"""
    out: str | None = None
    """output directory (default runs/<input name>)"""
    force: bool = False
    """overwrite an existing --out directory"""
    html: bool = True
    """write report.html beside report.json: the results as one page that opens from disk"""

    def __post_init__(self) -> None:
        self.options = {str(k).replace("-", "_"): v for k, v in dict(self.options).items()}
        check_keys(self.options, list(OPTIONS), f"the {self.command} spec's options")

    @classmethod
    def of(cls, kind: str, input: str | Path, cfg: FitConfig, **job: Any) -> JobSpec:
        """A spec whose options are every value of ``cfg`` (so it runs exactly ``cfg``)."""
        options = {k: v for k, v in cfg.to_dict().items() if v is not None}
        return cls(kind=kind, input=str(input), options=options, **job)

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def config(self, **overrides: Any) -> FitConfig:
        """The fit options resolved through the kind's and the registries' defaults."""
        return merge_config({}, {**self.options, **overrides}, kind=self.kind,
                            where=f"the {self.command} spec's options")

    @property
    def default_out(self) -> Path:
        return Path("runs") / (Path(self.input).stem + self.out_suffix)

    out_suffix: ClassVar[str] = ""
    #: the file written last, whose presence says the job finished
    marker: ClassVar[str] = "report.json"

    def identity(self) -> dict[str, Any]:
        """What decides the job's result: the command, the kind, the input's name and bytes,
        every resolved option and the command's own fields. Where the results go and how
        the job is run (--out, --force, --resume, checkpoints, the memory guard) are not part
        of it, nor is the input's directory, so a moved data folder is still the same job."""
        data = {k: v for k, v in self.to_dict().items() if k not in RUN_FIELDS}
        data["options"] = self.resolved_options()
        source = Path(self.input)
        data["input"] = source.name
        if source.is_file():
            digest = hashlib.sha256()
            with open(source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            data["input_sha256"] = digest.hexdigest()
        return data

    def resolved_options(self) -> dict[str, Any]:
        return self.config().to_dict()

    def hash(self) -> str:
        """A short digest of ``identity()``: equal hashes, equal jobs."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """The entry a finished job's report keeps: its spec and hash (``nfit run`` reruns it)."""
        return {"spec": self.to_dict(), "hash": self.hash()}


#: spec fields that say how a job runs, not what it computes
RUN_FIELDS = ("out", "force", "resume", "checkpoint_every", "max_memory", "html")


@dataclass
class FitSpec(JobSpec):
    """Fit one field to one signal (``nfit image|volume|sdf``)."""

    command: ClassVar[str] = "fit"
    resume: bool = False
    """continue the unfinished fit in --out (or the default directory) if there is one"""
    checkpoint_every: int = 0
    """save a resumable state every S steps, so a killed job loses at most S steps (0: only on SIGINT/SIGTERM)"""
    max_memory: str | None = None
    """refuse fits estimated above this size, e.g. 16G (default: the memory available; 'off' disables the guard)"""


@dataclass
class SweepSpec(JobSpec):
    """Train every (encoding, sigma, seed) as stacked members, choose on validation (``nfit sweep``)."""

    command: ClassVar[str] = "sweep"
    out_suffix: ClassVar[str] = "-sweep"
    marker: ClassVar[str] = "sweep.json"
    encodings: str = "gauss"
    """comma-separated encodings, e.g. gauss,posenc,hashgrid"""
    sigmas: str = "auto"
    """list 1,3,10,30; range START:END:Nlog (2:64:8log) or START:END:Nlin; or auto (Nyquist guess, then refinement)"""
    seeds: int = 1
    """seeds per configuration (--seed, --seed+1, ...)"""
    rounds: int = AUTO_ROUNDS
    """refinement rounds of --sigma auto after its coarse grid"""
    memory: float | None = None
    """GiB the stacks may use (default: 60% of free memory)"""

    def resolved_options(self) -> dict[str, Any]:
        """Each encoding's resolved options, as the sweep trains its members."""
        names = [e.strip() for e in self.encodings.split(",") if e.strip()]
        return {e: merge_config({}, {**self.options, "encoding": e}, kind=self.kind,
                                where="the sweep's options", encodings=names).to_dict() for e in names}


@dataclass
class KernelSpec(JobSpec):
    """The tangent-kernel lens on a field (``nfit kernel``)."""

    command: ClassVar[str] = "kernel"
    out_suffix: ClassVar[str] = "-kernel"
    encodings: str | None = None
    """encoding, or a comma-separated list to compare (default gauss)"""
    compare: bool = False
    """compare encodings: a list given to --encoding, or none,basic,geoposenc,gauss and the one given"""
    points: int = 2048
    """training points the kernel is computed on"""
    test_points: int = 1024
    """held-out points for test PSNR"""
    steps: int = 500
    """plain gradient-descent steps of the measured run"""
    lr: str = "auto"
    """gradient-descent step, or auto: eta' lam_max = 1 (half the stable step)"""
    eval_every: int = 10
    """steps between points of the curves"""
    ridge: float = 1e-3
    """ridge of the generalization measure, relative to mean diag K"""


SPECS: dict[str, type[JobSpec]] = {cls.command: cls for cls in (FitSpec, SweepSpec, KernelSpec)}


def spec_from_dict(data: dict[str, Any]) -> JobSpec:
    """The spec a ``to_dict`` (or a hand-written JSON/YAML mapping) describes."""
    if not isinstance(data, dict):
        raise UsageError("a job spec is a mapping with a 'command' key")
    data = dict(data)
    command = data.pop("command", None)
    if command not in SPECS:
        raise UsageError(f"a job spec needs 'command': one of {', '.join(SPECS)}, got {command!r}")
    cls = SPECS[command]
    names = [f.name for f in fields(cls)]
    check_keys(data, names, f"the {command} spec")
    for required in ("kind", "input"):
        if required not in data:
            raise UsageError(f"the {command} spec needs {required!r}")
    return cls(**data)


def load_spec(path: str | Path) -> JobSpec:
    """Read a spec from a JSON (or YAML) file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the spec ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not a valid spec ({str(exc).splitlines()[0]})") from None
    return spec_from_dict(data)
