"""The one fit loop: ``fit(field, problem, cfg, device=...) -> FitResult``.

It owns precision (fp32, or bf16 autocast with fp32 master weights and loss), full
batch versus random minibatches, evaluation every ``cfg.eval_every`` steps, and NaN
detection. It can start from a saved ``FitState`` and offers one per step to an
``on_step`` hook (periodic checkpoints, interruption: see nfit/job.py), so a resumed
fit takes exactly the steps an uninterrupted one would. A fixed encoding (no learned
parameters) is applied to the training and evaluation coordinates once, before the first
step, and the network trains on the cached features; a learned encoding (grids) runs
every step.

Signals too large to hold as coordinates (volumes) pass a ``sampler`` for training and
``PointSource`` held-out sets: those are scored on a fixed random subset of
``EVAL_SUBSET`` points during training and in full, chunk by chunk, at the end, so
memory is bounded by the batch and the chunk, not by the signal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from nfit.config import FitConfig
from nfit.device import autocast, configure_matmul
from nfit.errors import DivergenceError
from nfit.field import Field
from nfit.metrics import psnr_from_mse

#: Cached features above this many bytes are not cached; the encoding then runs per step.
FEATURE_CACHE_BYTES = 4 << 30
EVAL_CHUNK = 1 << 16
#: On the CPU a step's points go through the network in slices of this many rows, their
#: gradients accumulated: the activations then stay small enough for the allocator to reuse
#: them, where 65,536-row activations are fresh mappings every step (page faults cost more
#: than the matmuls at that size). The gradient is the full batch's either way.
CPU_STEP_CHUNK = 8192
#: Points of a PointSource scored at each evaluation during training (a fixed subset).
EVAL_SUBSET = 1 << 16


@runtime_checkable
class PointSource(Protocol):
    """A held-out set produced on demand instead of held as (x, y) tensors.

    ``chunks(size)`` yields every point once as (x: (n, d), y: (n, C)) with n <= size;
    ``sample(n, generator)`` returns n points drawn at random (generator on the CPU).
    """

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Problem:
    """What to fit.

    train_x: (N, d) coordinates; train_y: (N, C) targets. eval_sets: name -> (x, y),
    typically "val" and "test". loss: "mse" (values in [0, 1]; metric PSNR) or
    "bce" (targets in {0, 1}, the field outputs logits; metric accuracy).
    sampler: optional ``(step, generator) -> (x, y)`` that replaces train_x/train_y
    with fresh points each step (mesh SDFs resample around the surface; volumes draw a
    minibatch of voxels); train_x/train_y may then be empty. An eval set may be a
    PointSource instead of a tuple when its coordinates are too many to hold.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: Mapping[str, tuple[torch.Tensor, torch.Tensor] | PointSource] = field(
        default_factory=dict)
    loss: str = "mse"
    sampler: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def metric_name(self) -> str:
        return "psnr" if self.loss == "mse" else "accuracy"


@dataclass
class FitResult:
    field: Field
    history: list[dict[str, float]]
    metrics: dict[str, float]
    steps: int
    wall_time: float
    device: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_time if self.wall_time > 0 else float("nan")


@dataclass
class FitState:
    """Everything a fit needs to continue bit-identically after ``step`` completed steps.

    model: the field's state_dict; optimizer: the optimizer's state_dict (tensors and
    plain values); rng: "torch_cpu" (torch's global CPU generator), "sampler" (the fit's
    own sampling generator), "torch_cuda" on CUDA; history: the evaluation rows so far;
    elapsed: training seconds so far. All tensors are on the CPU.
    """

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    elapsed: float


#: ``on_step(step, capture)``: called after every completed step; ``capture()`` returns
#: the FitState at that step (it costs a copy of the weights, so call it only when needed).
StepHook = Callable[[int, Callable[[], FitState]], None]


def loss_fn(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = pred.float()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(pred, target)
    raise ValueError(f"unknown loss {kind!r}")


def score(kind: str, pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(loss, metric) of predictions against targets, in float64 on the host."""
    return score_chunks(kind, [(pred, target)])


def score_chunks(kind: str,
                 pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """``score`` over (pred, target) chunks: sums accumulated in float64, divided at the end."""
    total = hits = 0.0
    count = 0
    for pred, target in pairs:
        pred, target = pred.double(), target.double()
        count += target.numel()
        if kind == "mse":
            total += float(torch.sum((pred - target) ** 2))
        else:
            total += float(F.binary_cross_entropy_with_logits(pred, target, reduction="sum"))
            hits += float(((pred > 0).double() == target).double().sum())
    loss = total / count if count else float("nan")
    if kind == "mse":
        return loss, psnr_from_mse(loss)
    return loss, hits / count if count else float("nan")


class _Inputs:
    """Coordinates turned into what the trainable part of the field reads.

    With a fixed encoding the features are computed once (in the compute dtype);
    otherwise the raw coordinates are kept and the whole field runs each step.
    """

    def __init__(self, fld: Field, cache: bool, dtype: torch.dtype) -> None:
        self.field, self.cache, self.dtype = fld, cache, dtype

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cache:
            return x
        with torch.no_grad():
            return torch.cat([self.field.encoding(x[i:i + EVAL_CHUNK]).to(self.dtype)
                              for i in range(0, len(x), EVAL_CHUNK)])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.field.network(inputs) if self.cache else self.field(inputs)


def _can_cache(fld: Field, n_points: int, dtype: torch.dtype) -> bool:
    if any(p.requires_grad for p in fld.encoding.parameters()):
        return False
    nbytes = n_points * fld.encoding.out_dim * torch.finfo(dtype).bits // 8
    return nbytes <= FEATURE_CACHE_BYTES


def make_optimizer(fld: Field, cfg: FitConfig) -> torch.optim.Optimizer:
    """Adam over the field's parameters. A submodule may define ``optimizer_settings(cfg)``
    returning Adam keyword overrides for its own parameters (grid models follow their
    papers' lr/betas/eps); everything else uses ``lr=cfg.lr`` and torch's defaults."""
    groups: list[dict[str, Any]] = []
    claimed: set[int] = set()
    for module in fld.modules():
        settings = getattr(module, "optimizer_settings", None)
        if settings is None:
            continue
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in claimed]
        if params:
            groups.append({"params": params, **settings(cfg)})
            claimed.update(id(p) for p in params)
    rest = [p for p in fld.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.append({"params": rest})
    return torch.optim.Adam(groups, lr=cfg.lr, foreach=True)


def predict(fld: Field, x: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """fp32 predictions of the field at x: (N, d), in chunks; returns (N, C) on x's device."""
    chunk = chunk or (CPU_STEP_CHUNK if x.device.type == "cpu" else EVAL_CHUNK)
    with torch.no_grad():
        return torch.cat([fld(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])


def fit(fld: Field, problem: Problem, cfg: FitConfig, *, device: torch.device, precision: str,
        on_eval: Callable[[dict[str, float]], None] | None = None,
        start: FitState | None = None, on_step: StepHook | None = None) -> FitResult:
    """Train ``fld`` on ``problem`` for ``cfg.steps`` Adam steps and return its metrics.

    With ``start``, the weights, optimizer moments, generators and history are restored
    and training continues at step ``start.step + 1``. Raises DivergenceError when the
    loss becomes NaN or infinite (checked every step on the CPU, where it costs nothing,
    every 10 steps elsewhere, and before any state is captured).
    """
    configure_matmul(device, precision)
    fld.to(device)
    compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))

    train_x = problem.train_x.to(device)
    train_y = problem.train_y.to(device)
    cache = problem.sampler is None and _can_cache(fld, len(train_x), compute_dtype)
    inputs = _Inputs(fld, cache, compute_dtype)
    train_in = inputs.prepare(train_x)
    subset_generator = torch.Generator().manual_seed(int(cfg.seed))
    eval_in = {}
    for name, held in problem.eval_sets.items():
        x, y = held.sample(min(EVAL_SUBSET, len(held)), subset_generator) \
            if isinstance(held, PointSource) else held
        eval_in[name] = (inputs.prepare(x.to(device)) if cache else x.to(device), y.to(device))

    optimizer = make_optimizer(fld, cfg)
    history: list[dict[str, float]] = []
    first, elapsed_before = 1, 0.0
    if start is not None:
        fld.load_state_dict(start.model, strict=True)
        optimizer.load_state_dict(start.optimizer)
        generator.set_state(start.rng["sampler"])
        torch.set_rng_state(start.rng["torch_cpu"])
        if device.type == "cuda" and "torch_cuda" in start.rng:
            torch.cuda.set_rng_state(start.rng["torch_cuda"], device)
        history = [dict(row) for row in start.history]
        first, elapsed_before = start.step + 1, start.elapsed
    n_train = len(train_x)
    batch = cfg.batch if 0 < cfg.batch < n_train else 0
    check_every = 1 if device.type == "cpu" else 10
    chunk = CPU_STEP_CHUNK if device.type == "cpu" else EVAL_CHUNK
    recent = torch.zeros((), device=device)

    def evaluate(step: int, train_loss: float) -> dict[str, float]:
        row = {"step": float(step), "train_loss": train_loss}
        if problem.loss == "mse":
            row["train_psnr"] = psnr_from_mse(train_loss)
        with torch.no_grad(), autocast(device, precision):
            for name, (x, y) in eval_in.items():
                pred = torch.cat([inputs.forward(x[i:i + chunk]).float()
                                  for i in range(0, len(x), chunk)])
                row[f"{name}_loss"], row[f"{name}_{problem.metric_name}"] = score(problem.loss, pred, y)
        return row

    def capture(step: int) -> FitState:
        # Never hand out a diverged state: the last saved one stays the last good one.
        if not (torch.isfinite(recent) and all(bool(torch.isfinite(p).all())
                                               for p in fld.parameters())):
            _diverged(step, cfg, precision)
        rng = {"torch_cpu": torch.get_rng_state(), "sampler": generator.get_state().cpu()}
        if device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(device)
        return FitState(step, {k: v.detach().cpu().clone() for k, v in fld.state_dict().items()},
                        optimizer_state_cpu(optimizer), rng, [dict(r) for r in history],
                        elapsed_before + time.perf_counter() - t0)

    fld.train()
    t0 = time.perf_counter()
    for step in range(first, cfg.steps + 1):
        if problem.sampler is not None:
            bx, by = problem.sampler(step, generator)
            xin, yt = bx.to(device), by.to(device)
        elif batch:
            idx = torch.randint(n_train, (batch,), device=device, generator=generator)
            xin, yt = train_in[idx], train_y[idx]
        else:
            xin, yt = train_in, train_y
        optimizer.zero_grad(set_to_none=True)
        recent = torch.zeros((), device=device)
        n_step = len(yt)
        for i in range(0, n_step, chunk):
            with autocast(device, precision):
                pred = inputs.forward(xin[i:i + chunk])
            # Each slice's mean weighted by its share: the sum is the step's mean loss.
            loss = loss_fn(problem.loss, pred, yt[i:i + chunk]) * (min(chunk, n_step - i) / n_step)
            loss.backward()
            recent = recent + loss.detach()
        optimizer.step()
        if step % check_every == 0 and not torch.isfinite(recent):
            _diverged(step, cfg, precision)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            train_loss = float(recent)
            if not math.isfinite(train_loss):
                _diverged(step, cfg, precision)
            row = evaluate(step, train_loss)
            row["time"] = elapsed_before + time.perf_counter() - t0
            history.append(row)
            if on_eval is not None:
                on_eval(row)
        if on_step is not None:
            on_step(step, lambda step=step: capture(step))  # type: ignore[misc]
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = elapsed_before + time.perf_counter() - t0
    fld.eval()

    metrics: dict[str, float] = {}
    sets: dict[str, tuple[torch.Tensor, torch.Tensor] | PointSource] = (
        {"train": (train_x, train_y)} if problem.sampler is None else {})
    sets.update(problem.eval_sets)
    for name, held in sets.items():
        chunks = held.chunks(EVAL_CHUNK) if isinstance(held, PointSource) else [held]
        metrics[f"{name}_loss"], metrics[f"{name}_{problem.metric_name}"] = score_chunks(
            problem.loss, ((predict(fld, x.to(device)), y.to(device)) for x, y in chunks))
    # A saturated output (sigmoid of +-inf) can keep the training loss finite while the
    # weights or the fp32 predictions are not: that is a divergence too.
    if not all(math.isfinite(v) for v in metrics.values()) or not all(
            bool(torch.isfinite(p).all()) for p in fld.parameters()):
        _diverged(cfg.steps, cfg, precision)
    return FitResult(fld, history, metrics, cfg.steps, wall, str(device), precision)


def optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every tensor copied to the CPU."""
    state = optimizer.state_dict()
    return {"state": {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                          for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}


def _diverged(step: int, cfg: FitConfig, precision: str) -> None:
    cause = (f"likely cause: the learning rate --lr {cfg.lr:g} is too high for this model "
             f"(try {cfg.lr / 10:g})")
    if precision != "fp32":
        cause += f", or {precision} arithmetic overflowed (try --precision fp32)"
    raise DivergenceError(f"the fit diverged (loss or weights NaN or infinite) at step {step}; "
                          f"{cause}")
