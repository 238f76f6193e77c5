"""Input encodings: the map gamma(v) applied to coordinates before the network.

Every encoding is an ``nn.Module`` with ``in_dim`` and ``out_dim``, built from a
plain dict spec with a ``type`` tag (``{"type": "gauss", "sigma": 10.0,
"features": 256}``) that round-trips through JSON and YAML. Random frequency
matrices are registered buffers, so a checkpoint reproduces them exactly.

One registry, ``ENCODINGS``, maps names to classes; ``build_encoding`` is the only
constructor the rest of nfit calls, and everything downstream reads ``out_dim``.

The Fourier families follow Tancik et al. 2020 (eq. 5 and Sec. 6):

    gamma(v) = [cos(2 pi B v), sin(2 pi B v)],   v in [0, 1)^d,  B: (m, d)

with ``a_j = 1``. ``--sigma`` is the scale of B's distribution for every random family,
the largest frequency for ``geoposenc``, and for the paper's ``posenc`` its notebooks'
``scale``: frequencies up to 2^sigma - 1.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, ClassVar

import torch
from torch import nn

from nfit.catalog import ENCODING_FACTS
from nfit.errors import UsageError


class _Registry(dict):  # type: ignore[type-arg]
    """Encodings by name. The first lookup imports every module the catalog names as an
    implementation (the grids live in ``nfit.grids``, which imports this module: a static
    import back would be a cycle)."""

    loaded = False

    def _load(self) -> None:
        if not self.loaded:
            self.loaded = True
            for module in dict.fromkeys(f.implementation for f in ENCODING_FACTS.values()):
                importlib.import_module(module)

    def __getitem__(self, key: str) -> type[Encoding]:
        self._load()
        return super().__getitem__(key)  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        self._load()
        return super().__contains__(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()

    def items(self):  # type: ignore[no-untyped-def, override]
        self._load()
        return super().items()

    def values(self):  # type: ignore[no-untyped-def, override]
        self._load()
        return super().values()


ENCODINGS: dict[str, type[Encoding]] = _Registry()


def register(name: str):
    """Class decorator that adds an encoding to the registry under ``name``, with its facts
    (summary, sigma's meaning, params, defaults, trainable) from ``nfit.catalog``."""

    def wrap(cls: type[Encoding]) -> type[Encoding]:
        facts = ENCODING_FACTS[name]
        cls.name = name
        cls.summary, cls.sigma_meaning, cls.params = facts.summary, facts.sigma_meaning, facts.params
        cls.defaults, cls.uses_sigma, cls.trainable = facts.defaults, facts.uses_sigma, facts.trainable
        ENCODINGS[name] = cls
        return cls

    return wrap


class Encoding(nn.Module):
    """Base class. Subclasses set ``out_dim`` in ``__init__`` and implement ``forward``.

    Class attributes describe the encoding for ``nfit encodings`` and the CLI; ``register``
    sets them from the encoding's facts in ``nfit.catalog``: ``uses_sigma`` (does
    ``--sigma`` mean anything), ``trainable`` (has learned parameters, so its output cannot
    be cached across steps), ``sigma_meaning``, ``params``, ``defaults``.
    """

    name: ClassVar[str] = ""
    uses_sigma: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    sigma_meaning: ClassVar[str] = "not used"
    summary: ClassVar[str] = ""
    #: keyword arguments of ``__init__`` that a spec may carry (others are dropped)
    params: ClassVar[tuple[str, ...]] = ()
    #: fit settings this encoding implies unless the user sets them (grids: a small MLP)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim

    def spec(self) -> dict[str, Any]:
        """The plain-dict config that rebuilds this encoding (buffers come from the checkpoint)."""
        return {"type": self.name}

    #: the largest --sigma the encoding takes
    max_sigma: ClassVar[float] = math.inf

    @staticmethod
    def sigma_for_frequency(frequency: float) -> float:
        """The --sigma whose frequencies reach about ``frequency`` cycles per unit (the
        sweep's automatic grid is laid out in frequencies): sigma itself for the random
        families and geoposenc."""
        return frequency


@register("none")
class Identity(Encoding):

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return coords


class FourierFeatures(Encoding):
    """gamma(v) = [cos(2 pi B v), sin(2 pi B v)] for a frequency matrix B: (m, d).

    coords: (N, d) float in [0, 1)^d  ->  (N, 2m).
    """

    B: torch.Tensor

    def __init__(self, in_dim: int, frequencies: torch.Tensor) -> None:
        super().__init__(in_dim)
        if frequencies.ndim != 2 or frequencies.shape[1] != in_dim:
            raise ValueError(f"frequency matrix must be (m, {in_dim}), got {tuple(frequencies.shape)}")
        self.register_buffer("B", frequencies.to(torch.float32))
        self.out_dim = 2 * frequencies.shape[0]

    def forward(self, coords: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The features in fp32; with ``dtype`` (evaluation only: no gradient, no vmap),
        computed in fp32 and written straight into one ``dtype`` block, without the
        concatenation's copy or, for a bf16 network, a separate cast of the block."""
        proj = (2.0 * math.pi) * (coords.to(self.B.dtype) @ self.B.T)
        if dtype is None or (torch.is_grad_enabled() and proj.requires_grad):
            out = torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)
            return out if dtype is None else out.to(dtype)
        m = proj.shape[-1]
        out = torch.empty(*proj.shape[:-1], 2 * m, dtype=dtype, device=proj.device)
        torch.cos(proj, out=out[..., :m])
        torch.sin(proj, out=out[..., m:])
        return out


@register("basic")
class Basic(FourierFeatures):

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, torch.eye(in_dim))


#: the largest scale posenc takes: 2^20 - 1 cycles per unit is past the Nyquist rate of
#: any grid nfit can hold, and a larger --sigma is almost surely meant for geoposenc
POSENC_MAX_SCALE = 20.0


@register("posenc")
class PositionalEncoding(FourierFeatures):
    """The paper's positional encoding (Tancik et al. 2020, Sec. 6.1; their notebooks'
    ``2.**np.linspace(0, scale, m) - 1``): on each axis separately, the frequencies

        b_j = 2^(sigma * j / (m - 1)) - 1,   j = 0..m-1,   m = features // d,

    from 0 (a constant feature: DC) to 2^sigma - 1 cycles per unit, evenly spaced in
    log2(1 + b). ``sigma`` is the notebooks' ``scale`` (6 natural images, 5 text, 3 CT,
    4 MRI, 6 shapes). B lists the first axis's m frequencies, then the second's, as the
    notebooks stack them; out_dim = 2 * m * d (the notebooks' 2D m = 128 of 256
    frequencies, 3D m = 85). The notebooks' coordinates span [0, 1) per axis; a signal on
    other ``bounds`` [lo, hi] (meshes: [-1, 1]) is mapped onto [0, 1] first, so a scale
    means the same cycles across the domain as in the notebooks.
    """

    B: torch.Tensor

    max_sigma: ClassVar[float] = POSENC_MAX_SCALE

    @staticmethod
    def sigma_for_frequency(frequency: float) -> float:
        """log2(1 + f): the scale whose largest frequency 2^sigma - 1 is f."""
        return math.log2(1.0 + frequency)

    def __init__(self, in_dim: int, sigma: float, features: int,
                 bounds: tuple[float, float] | list[float] = (0.0, 1.0)) -> None:
        levels = max(features // in_dim, 1)
        scales = 2.0 ** torch.linspace(0.0, float(sigma), levels, dtype=torch.float64) - 1.0
        eye = torch.eye(in_dim, dtype=torch.float64)
        frequencies = (eye[:, None, :] * scales[None, :, None]).reshape(in_dim * levels, in_dim)
        super().__init__(in_dim, frequencies)
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"posenc bounds must be finite with lo < hi, got {list(bounds)}")
        self.sigma, self.features, self.bounds = float(sigma), int(features), (lo, hi)

    def forward(self, coords: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        lo, hi = self.bounds
        if (lo, hi) != (0.0, 1.0):
            coords = (coords.to(self.B.dtype) - lo) / (hi - lo)
        return super().forward(coords, dtype)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.name, "sigma": self.sigma, "features": self.features}
        if self.bounds != (0.0, 1.0):
            spec["bounds"] = list(self.bounds)
        return spec


@register("geoposenc")
class GeometricPositionalEncoding(FourierFeatures):
    """Geometric on-axis frequencies sigma^(j/m), j = 0..m-1, on each axis separately: from
    1 up to (not including) sigma cycles per unit, so ``--sigma`` is the largest frequency
    as for the random families' scale (nfit's ``posenc`` before the paper's was added).

    ``features`` is the total number of frequencies across axes, so m = features // d
    per axis and out_dim = 2 * m * d, comparable with the random families.
    """

    def __init__(self, in_dim: int, sigma: float, features: int) -> None:
        levels = max(features // in_dim, 1)
        scales = sigma ** (torch.arange(levels, dtype=torch.float64) / levels)
        eye = torch.eye(in_dim, dtype=torch.float64)
        frequencies = (scales[:, None, None] * eye[None]).reshape(levels * in_dim, in_dim)
        super().__init__(in_dim, frequencies)
        self.sigma, self.features = float(sigma), int(features)

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "sigma": self.sigma, "features": self.features}


class RandomFourierFeatures(FourierFeatures):
    """B: (features, d) with i.i.d. entries drawn by ``sample`` at scale sigma."""

    def __init__(self, in_dim: int, sigma: float, features: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        frequencies = self.sample((features, in_dim), float(sigma), generator)
        super().__init__(in_dim, frequencies)
        self.sigma, self.features, self.seed = float(sigma), int(features), int(seed)

    @staticmethod
    def sample(shape: tuple[int, int], sigma: float, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def frequency_std(sigma: float) -> float:
        """Standard deviation of one entry of B, in closed form (tests compare samples to it)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "sigma": self.sigma, "features": self.features, "seed": self.seed}


@register("gauss")
class GaussianFourierFeatures(RandomFourierFeatures):

    @staticmethod
    def sample(shape, sigma, generator):
        return torch.randn(shape, generator=generator, dtype=torch.float64) * sigma

    @staticmethod
    def frequency_std(sigma: float) -> float:
        return sigma


@register("laplace")
class LaplaceFourierFeatures(RandomFourierFeatures):

    @staticmethod
    def sample(shape, sigma, generator):
        # Inverse CDF of the Laplace distribution from u ~ U(-1/2, 1/2).
        u = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5
        u = u.clamp(-0.5 + 1e-12, 0.5 - 1e-12)
        return -sigma * torch.sign(u) * torch.log1p(-2.0 * u.abs())

    @staticmethod
    def frequency_std(sigma: float) -> float:
        return math.sqrt(2.0) * sigma


@register("uniform")
class UniformFourierFeatures(RandomFourierFeatures):

    @staticmethod
    def sample(shape, sigma, generator):
        return torch.rand(shape, generator=generator, dtype=torch.float64) * sigma

    @staticmethod
    def frequency_std(sigma: float) -> float:
        return sigma / math.sqrt(12.0)


@register("loguniform")
class LogUniformFourierFeatures(RandomFourierFeatures):

    @staticmethod
    def sample(shape, sigma, generator):
        return sigma ** torch.rand(shape, generator=generator, dtype=torch.float64)

    @staticmethod
    def frequency_std(sigma: float) -> float:
        if abs(sigma - 1.0) < 1e-12:
            return 0.0
        log_s = math.log(sigma)
        mean = (sigma - 1.0) / log_s
        second = (sigma**2 - 1.0) / (2.0 * log_s)
        return math.sqrt(max(second - mean**2, 0.0))


def encoding_names() -> list[str]:
    return sorted(ENCODINGS)


def build_encoding(spec: dict[str, Any], in_dim: int) -> Encoding:
    """Construct an encoding from its spec dict (the inverse of ``Encoding.spec``).

    Raises UsageError for an unknown type or a bad sigma, so the CLI can print one line.
    """
    spec = dict(spec)
    name = spec.pop("type", None)
    if name not in ENCODINGS:
        raise UsageError(f"unknown encoding {name!r}; choose from: {', '.join(encoding_names())}")
    cls = ENCODINGS[name]
    if cls.uses_sigma:
        sigma = spec.get("sigma")
        if sigma is None or not math.isfinite(float(sigma)) or float(sigma) <= 0:
            raise UsageError(f"--sigma must be a positive number for encoding {name!r}, got {sigma}")
        if float(sigma) > cls.max_sigma:
            raise UsageError(f"--sigma {float(sigma):g} for posenc means frequencies up to 2^{float(sigma):g} - 1 "
                             f"(the paper's scale, at most {cls.max_sigma:g}); for sigma as the largest "
                             "frequency, nfit's earlier posenc, use --encoding geoposenc")
        if name == "loguniform" and float(sigma) < 1:
            raise UsageError("--sigma must be >= 1 for loguniform (frequencies range from 1 to sigma)")
        features = int(spec.get("features", 256))
        if features < 1:
            raise UsageError(f"--features must be at least 1, got {features}")
        spec["features"] = features
    # Keys that mean nothing to this encoding (sigma for "none", say) are dropped.
    spec = {k: v for k, v in spec.items() if k in cls.params}
    try:
        return cls(in_dim, **spec)
    except TypeError as exc:
        raise UsageError(f"bad parameters for encoding {name!r}: {exc}") from None

