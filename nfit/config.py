"""The fit configuration: defaults (Tancik et al. 2020), YAML files and flags merged in that order."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nfit.errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "tf32")


@dataclass
class FitConfig:
    """Everything that decides a fit's result. Written as ``config.yaml`` next to the results."""

    encoding: str = "gauss"
    """input encoding (see `nfit encodings`)"""
    sigma: float = 10.0
    """bandwidth: the scale of the encoding's frequencies"""
    features: int = 256
    """number of Fourier frequencies m (output is 2m features)"""
    model: str = "mlp"
    """network type"""
    width: int = 256
    """hidden width of the network"""
    depth: int = 4
    """number of linear layers"""
    steps: int = 2000
    """optimisation steps"""
    lr: float = 1e-3
    """Adam learning rate"""
    seed: int = 0
    """seed for weights, frequencies and sampling"""
    device: str = "auto"
    """auto, cpu, cuda or mps"""
    precision: str = "auto"
    """auto, fp32, bf16 or tf32"""
    split: str = "paper"
    """paper, all or random[:F]"""
    batch: int = 0
    """points per step; 0 = full batch"""
    eval_every: int = 25
    """steps between evaluations of the held-out PSNR"""
    extra: dict[str, Any] = field(default_factory=dict)
    """signal- or model-specific settings"""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def encoding_spec(self) -> dict[str, Any]:
        """The encoding's spec; its own parameters (grid --levels, ...) come from ``extra``."""
        return {**_own_params("encoding", self.encoding, self.extra),
                "type": self.encoding, "sigma": self.sigma, "features": self.features,
                "seed": self.seed}

    def network_spec(self, output: str = "sigmoid") -> dict[str, Any]:
        return {**_own_params("network", self.model, self.extra),
                "type": self.model, "width": self.width, "depth": self.depth, "output": output}

    def validate(self) -> FitConfig:
        from nfit.encodings import ENCODINGS
        from nfit.networks import NETWORKS

        if self.encoding not in ENCODINGS:
            raise UsageError(f"unknown encoding {self.encoding!r}; choose from: {', '.join(sorted(ENCODINGS))}")
        if self.model not in NETWORKS:
            raise UsageError(f"unknown model {self.model!r}; choose from: {', '.join(sorted(NETWORKS))}")
        if self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if not math.isfinite(self.sigma) or self.sigma <= 0:
            raise UsageError(f"--sigma must be a positive number, got {self.sigma}")
        if self.features < 1 or self.width < 1 or self.depth < 1:
            raise UsageError("--features, --width and --depth must be at least 1")
        if self.batch < 0:
            raise UsageError(f"--batch must be 0 (full batch) or positive, got {self.batch}")
        if self.eval_every < 1:
            raise UsageError(f"--eval-every must be at least 1, got {self.eval_every}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        return self


def _own_params(registry: str, name: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``extra`` that the named encoding or network declares in ``params``."""
    from nfit.encodings import ENCODINGS
    from nfit.networks import NETWORKS

    cls = (ENCODINGS if registry == "encoding" else NETWORKS).get(name)
    return {k: v for k, v in extra.items() if k in getattr(cls, "params", ())}


def registry_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """Settings implied by the chosen model and encoding (``defaults`` in their registries).

    ``--model siren`` implies ``--encoding none`` and the paper's lr; a grid encoding
    implies its small MLP (2 hidden layers of 64) and Instant-NGP's lr. The model's
    defaults are read first, since they may choose the encoding.
    """
    from nfit.encodings import ENCODINGS
    from nfit.networks import NETWORKS

    implied: dict[str, Any] = {}
    model = NETWORKS.get(values.get("model", FitConfig.model))
    implied.update(getattr(model, "defaults", {}))
    encoding = ENCODINGS.get(values.get("encoding", implied.get("encoding", FitConfig.encoding)))
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
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge_config(file_values: dict[str, Any], flags: dict[str, Any]) -> FitConfig:
    """Defaults, then the YAML file, then flags that were given (not None)."""
    known = {f.name: f for f in fields(FitConfig)}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for source in (file_values, {k: v for k, v in flags.items() if v is not None}):
        for key, value in source.items():
            if key == "extra" and isinstance(value, dict):
                extra.update(value)
            elif key in known:
                values[key] = value
            else:
                extra[key] = value
    cfg = FitConfig()
    values.update(registry_defaults(values))
    for key, value in values.items():
        default = getattr(cfg, key)
        try:
            value = type(default)(value) if not isinstance(default, dict) else value
        except (TypeError, ValueError):
            raise UsageError(f"option {key!r}: cannot use {value!r} as {type(default).__name__}") from None
        setattr(cfg, key, value)
    cfg.extra = extra
    return cfg.validate()
