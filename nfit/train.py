"""The one training loop: K >= 1 fields of one shape trained together; a single fit is K = 1.

    result = train([field], problem, cfg, device=device, precision="bf16")   # one fit
    result = train(fields, problem, cfg, seeds=[0, 1, 2, 3], ...)          # a sweep's stack

It owns precision (fp32, or bf16 autocast with fp32 master weights and loss), full batch
versus random minibatches, evaluation every ``cfg.eval_every`` steps, divergence checks,
and the step hooks: it can start from a saved ``FitState`` and offers one per step to
``on_step`` (periodic checkpoints, interruption: ``nfit.api``), so a resumed fit takes
exactly the steps an uninterrupted one would. The members run as one module
(``nfit.stack.Members``); the loss is the problem's ``Objective``.

Inputs. Fixed coordinates (a full training set) are prepared once: a fixed encoding's
features (in the compute dtype), a grid's cell geometry; drawn points (minibatches, a
sampler) are prepared each step. Members that use different seeds draw their own
minibatch indices (or sampler points) from their own generator, seeded as their single
fit seeds its own; members that share a seed share them.

CPU slicing. On the CPU a step's points go through the members in slices of
``CPU_STEP_CHUNK / K`` rows per member (more behind narrower networks and in bf16: ``slice_rows``),
their gradients accumulated: the activations then stay as small as one fit's 8,192-row
slice and the allocator reuses them, where
65,536-row activations are fresh mappings every step (page faults cost more than the
matmuls at that size). The gradient is the full batch's either way. A GPU takes the
whole batch at once.

Held-out sets too large to hold (``PointSource``, a volume's voxels) are scored on a
fixed random subset of ``EVAL_SUBSET`` points during training (drawn with ``cfg.seed``)
and in full, chunk by chunk, at the end, so memory is bounded by the batch and the chunk.

Divergence: a single fit (``stop_on_divergence``, the default for K = 1) raises
DivergenceError as soon as the loss is NaN or infinite (checked every step on the CPU,
every 10 steps elsewhere) and never hands out a diverged state; in a stack, a member that
diverges is marked and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nfit.config import FitConfig
from nfit.device import autocast, compute_dtype, configure_matmul
from nfit.encodings import FourierFeatures
from nfit.errors import DivergenceError, UsageError
from nfit.field import Field
from nfit.problem import FitResult, FitState, HeldOut, PointSource, Problem, Scores, StepHook
from nfit.schedules import lr_factor
from nfit.stack import Members

#: Cached inputs (features, grid geometry) above this many bytes are computed per step.
FEATURE_CACHE_BYTES = 4 << 30
EVAL_CHUNK = 1 << 16
#: Rows of one CPU slice, over all members (see the module docstring).
CPU_STEP_CHUNK = 8192
#: Points of a PointSource scored at each evaluation during training (a fixed subset).
EVAL_SUBSET = 1 << 16
#: Held-out tensor sets above this many points are scored on a fixed EVAL_SUBSET during
#: training too (a whole photograph every 25 steps would cost more than its steps).
EVAL_FULL_MAX = 1 << 18


@dataclass
class MemberResult:
    """One member's outcome: its history rows and final metrics."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    diverged: bool = False


@dataclass
class TrainResult:
    members: list[MemberResult]
    steps: int
    wall_time: float
    device: str
    precision: str
    #: why the fit ended: "steps", "time budget" or "target psnr"
    stopped: str = "steps"


def slice_rows(k: int, device: torch.device, width: int = 256, precision: str = "fp32") -> int:
    """Points per member in one training slice and scoring chunk.

    On the CPU a slice holds as many hidden values as 8,192 rows of a 256-wide network
    (about 8 MB a layer in fp32): 8192 / K rows per member for the paper's MLP, four times
    more behind a grid's 64-wide MLP, whose lookups pay per slice (measured: K = 4 hash
    grids went from 0.87x to about 0.7x of four single fits with the wider slices). In
    bf16 a network at least 256 wide takes twice the rows, the same bytes a layer: its
    step has half as many slices' fixed costs (measured on an AMX Xeon: the paper's gauss
    step 4-6% faster, ``bench/bench_fit.py``); a hash grid's step was slower with 2x rows.
    """
    if device.type != "cpu":
        return max(1024, EVAL_CHUNK // k)
    rows = CPU_STEP_CHUNK * 256 // max(min(width, 256), 64)
    if precision == "bf16" and width >= 256:
        rows *= 2
    return max(512, rows // k)


def member_states(fields: Sequence[Field]) -> dict[str, torch.Tensor]:
    """The fields' state dicts as one flat dict on the CPU (one field: its own keys)."""
    if len(fields) == 1:
        return {k: v.detach().cpu().clone() for k, v in fields[0].state_dict().items()}
    return {f"member{i}/{k}": v.detach().cpu().clone()
            for i, f in enumerate(fields) for k, v in f.state_dict().items()}


def load_member_states(fields: Sequence[Field], state: dict[str, torch.Tensor]) -> None:
    if len(fields) == 1:
        fields[0].load_state_dict(state, strict=True)
        return
    for i, f in enumerate(fields):
        prefix = f"member{i}/"
        f.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                          strict=True)


def optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every tensor copied to the CPU."""
    state = optimizer.state_dict()
    return {"state": {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                          for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}


def eval_chunk(device: torch.device) -> int:
    """Points per chunk when evaluating a trained field (``predict``, renders): one CPU
    slice, which the allocator reuses from chunk to chunk, or ``EVAL_CHUNK`` elsewhere."""
    return CPU_STEP_CHUNK if device.type == "cpu" else EVAL_CHUNK


def predict(fld: Field, x: torch.Tensor, *, chunk: int | None = None) -> torch.Tensor:
    """fp32 predictions of one field at x: (N, d), in chunks; returns (N, C) on x's device."""
    chunk = chunk or eval_chunk(x.device)
    with torch.no_grad():
        return torch.cat([fld(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])


class InPrecision(Field):
    """A trained field that evaluates as its fit did: the network under the fit's autocast
    (bf16 on a CPU with native bf16), a fixed encoding's features in fp32 (a bf16 phase
    2 pi b.x would be off by whole radians at sigma 10). Counts the points it evaluates.

    For rendering: ``nfit render`` hands one to the kind's ``render`` in place of the field.
    """

    def __init__(self, fld: Field, device: torch.device, precision: str) -> None:
        super().__init__(fld.encoding, fld.network, fld.spec())
        self.device, self.precision, self.points = device, precision, 0

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        self.points += len(coords)
        with torch.autocast(self.device.type, enabled=False):
            if isinstance(self.encoding, FourierFeatures):
                # computed in fp32, written in the network's dtype as the fit cached them
                features = self.encoding(coords, compute_dtype(self.precision))
            else:
                features = self.encoding(coords)
        with autocast(self.device, self.precision):
            return self.network(features).float()  # type: ignore[no-any-return]


def _pairs(held: HeldOut, chunk: int):
    if isinstance(held, PointSource):
        return held.chunks(chunk)
    x, y = held
    return ((x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk))


def train(fields: Sequence[Field], problem: Problem, cfg: FitConfig, *, device: torch.device,
          precision: str, seeds: Sequence[int] | None = None, start: FitState | None = None,
          on_step: StepHook | None = None,
          on_eval: Callable[[dict[str, float]], None] | None = None,
          stop_on_divergence: bool | None = None) -> TrainResult:
    """Train K fields of one shape for ``cfg.steps`` Adam steps; their weights are written back.

    fields: built as single fits build them (weights drawn from ``seeds[k]``, default
    ``cfg.seed``). ``cfg`` supplies the shared steps, lr, batch and eval_every. With
    ``start`` the weights, optimizer moments, generators and history are restored and
    training continues at step ``start.step + 1``. ``on_eval`` receives member 0's
    history rows as they are made.
    """
    k = len(fields)
    seeds = [int(cfg.seed)] * k if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k or not k:
        raise ValueError("one seed per field, at least one field")
    stop = k == 1 if stop_on_divergence is None else stop_on_divergence
    configure_matmul(device, precision)
    dtype = compute_dtype(precision)
    for f in fields:
        f.to(device)
    if start is not None:
        load_member_states(fields, start.model)
    members = Members(fields).to(device)
    objective = problem.objective
    optimizer = torch.optim.Adam(members.param_groups(cfg), lr=cfg.lr, foreach=True)
    # The schedule scales each group's own base rate (a grid's table keeps its settings);
    # read before a resumed state overwrites the groups with its last step's rates.
    base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    budget = cfg.time_budget_s()
    scheduled = cfg.schedule != "constant" or cfg.warmup > 0
    if cfg.target_psnr is not None and problem.objective.metric != "psnr":
        raise UsageError(f"--target-psnr needs a PSNR-scored fit; this one is scored by "
                         f"{problem.objective.metric}")

    distinct = sorted(set(seeds))
    generators = {s: torch.Generator(device=device).manual_seed(s) for s in distinct}
    slot = torch.tensor([distinct.index(s) for s in seeds], device=device)
    member_rows = torch.arange(k, device=device)[:, None]
    rows = slice_rows(k, device, int(getattr(fields[0].network, "width", 256) or 256), precision)
    step_rows = rows if device.type == "cpu" else 1 << 62

    train_x, train_y = problem.train_x.to(device), problem.train_y.to(device)
    sampler = problem.sampler
    n_train = len(train_x)
    batch = cfg.batch_points(n_train)
    subset_generator = torch.Generator().manual_seed(int(cfg.seed))
    eval_xy = {}
    for name, held in problem.eval_sets.items():
        if isinstance(held, PointSource):
            x, y = held.sample(min(EVAL_SUBSET, len(held)), subset_generator)
        elif len(held[0]) > EVAL_FULL_MAX:
            pick = torch.randperm(len(held[0]), generator=subset_generator)[:EVAL_SUBSET].sort().values
            x, y = held[0][pick], held[1][pick]
        else:
            x, y = held
        eval_xy[name] = (x.to(device), y.to(device))
    fixed_points = (n_train if sampler is None else 0) + sum(len(x) for x, _ in eval_xy.values())
    cache = fixed_points * members.point_bytes(dtype) <= FEATURE_CACHE_BYTES

    def prepared(x: torch.Tensor) -> list[Any]:
        """Fixed coordinates as slices of what the members read, prepared once."""
        return [members.prepare(x[i:i + rows], dtype) if cache else x[i:i + rows]
                for i in range(0, len(x), rows)]

    eval_in = {name: (prepared(x), y) for name, (x, y) in eval_xy.items()}
    # Fixed features: one (K, N, F) tensor a minibatch indexes into; cut into contiguous
    # slices for the full batch (a slice along N of (K, N, F) is strided per member, and
    # bmm would copy it in the forward and again in the backward).
    train_features = None
    full_slices: list[Any] = []
    if sampler is None and members.fixed and cache and batch:
        train_features = members.prepare(train_x, dtype)
    elif sampler is None and not batch:
        full_slices = [members.prepare(train_x[i:i + step_rows], dtype) if cache
                       else train_x[i:i + step_rows] for i in range(0, n_train, step_rows)]

    history: list[list[dict[str, float]]] = [[] for _ in range(k)]
    first, elapsed_before = 1, 0.0
    if start is not None:
        optimizer.load_state_dict(start.optimizer)
        for i, s in enumerate(distinct):
            generators[s].set_state(start.rng["sampler" if i == 0 else f"sampler_{i}"])
        torch.set_rng_state(start.rng["torch_cpu"])
        if device.type == "cuda" and "torch_cuda" in start.rng:
            torch.cuda.set_rng_state(start.rng["torch_cuda"], device)
        saved = start.history
        history = [[dict(r) for r in saved]] if k == 1 else [
            [dict(r) for r in saved if int(r.get("member", 0)) == i] for i in range(k)]
        first, elapsed_before = start.step + 1, start.elapsed
    check_every = 1 if device.type == "cpu" else 10
    recent = torch.zeros(k, device=device)

    def step_inputs(step: int) -> tuple[list[Any], torch.Tensor | list[torch.Tensor], int]:
        """(slices of inputs, their targets, points per member) of this step."""
        if sampler is not None:
            drawn = [sampler(step, generators[s]) for s in distinct]
            if len(distinct) == 1:
                x, y = drawn[0][0].to(device), drawn[0][1].to(device)
            else:
                x = torch.stack([drawn[int(j)][0].to(device) for j in slot.tolist()])
                y = torch.stack([drawn[int(j)][1].to(device) for j in slot.tolist()])
        elif batch:
            idx = torch.stack([torch.randint(n_train, (batch,), device=device, generator=generators[s])
                               for s in distinct])[slot]  # (K, batch)
            if train_features is not None:
                feats, y = train_features[member_rows, idx], train_y[idx]
                n = batch
                return ([feats[:, i:i + step_rows] for i in range(0, n, step_rows)],
                        [y[:, i:i + step_rows] for i in range(0, n, step_rows)], n)
            x, y = (train_x[idx[0]], train_y[idx[0]]) if len(distinct) == 1 else (train_x[idx], train_y[idx])
        elif cache:
            return full_slices, train_y, n_train
        else:
            return [members.prepare(part, dtype) for part in full_slices], train_y, n_train
        n = x.shape[-2]
        xs = [x[..., i:i + step_rows, :] for i in range(0, n, step_rows)]
        return ([members.prepare(part, dtype) for part in xs],
                [y[..., i:i + step_rows, :] for i in range(0, n, step_rows)], n)

    def evaluate(step: int, losses: list[float]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{"step": float(step), "train_loss": v} for v in losses]
        if objective.metric == "psnr":
            for row in out:
                row["train_psnr"] = objective.metric_of(row["train_loss"], 0.0, 1)
        with torch.no_grad(), autocast(device, precision):
            for name, (parts, y) in eval_in.items():
                scores = Scores(k, objective)
                offset = 0
                for part in parts:
                    pred = members(part if cache else members.prepare(part, dtype)).float()
                    n = pred.shape[1]
                    scores.add(pred, y[offset:offset + n])
                    offset += n
                for row, scored in zip(out, scores.result(), strict=True):
                    row.update({f"{name}_{key}": value for key, value in scored.items()})
        now = elapsed_before + time.perf_counter() - t0
        for i, (row, hist) in enumerate(zip(out, history, strict=True)):
            row["time"] = now
            if k > 1:
                row["member"] = float(i)
            hist.append(row)
        if on_eval is not None:
            on_eval(out[0])
        return out

    def all_finite() -> bool:
        return bool(torch.isfinite(recent).all()) and all(
            bool(torch.isfinite(p).all()) for p in members.parameters())

    def capture(step: int) -> FitState:
        # Never hand out a diverged state: the last saved one stays the last good one.
        if not all_finite():
            _diverged(step, cfg, precision)
        members.write_back(fields)
        rng = {"torch_cpu": torch.get_rng_state()}
        for i, s in enumerate(distinct):
            rng["sampler" if i == 0 else f"sampler_{i}"] = generators[s].get_state().cpu()
        if device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(device)
        rows_so_far = [dict(r) for hist in history for r in hist]
        return FitState(step, member_states(fields), optimizer_state_cpu(optimizer), rng,
                        rows_so_far, elapsed_before + time.perf_counter() - t0)

    target_key = next((f"{name}_psnr" for name in ("val", "test") if name in eval_in), "train_psnr")
    stopped, last_step = "steps", first - 1
    members.train()
    t0 = time.perf_counter()
    for step in range(first, cfg.steps + 1):
        if scheduled:
            factor = lr_factor(cfg.schedule, step, cfg.steps, warmup=cfg.warmup,
                               decay_steps=cfg.decay_steps, budget=budget,
                               elapsed=elapsed_before + time.perf_counter() - t0)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
        parts, targets, n_step = step_inputs(step)
        optimizer.zero_grad(set_to_none=True)
        recent = torch.zeros(k, device=device)
        offset = 0
        for j, part in enumerate(parts):
            target = targets[j] if isinstance(targets, list) else targets[offset:offset + step_rows]
            with autocast(device, precision):
                pred = members(part)
            n = pred.shape[1]
            offset += n
            # Each slice's per-member mean weighted by its share: the sum over slices is the
            # step's mean loss, and its gradient for member k is member k's own.
            losses = objective.loss(pred, target) * (n / n_step)
            losses.sum().backward()
            recent = recent + losses.detach()
        optimizer.step()
        if stop and step % check_every == 0 and not bool(torch.isfinite(recent).all()):
            _diverged(step, cfg, precision)
        out_of_time = budget is not None and elapsed_before + time.perf_counter() - t0 >= budget
        reached = False
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            losses_now = recent.tolist()
            if stop and not all(math.isfinite(v) for v in losses_now):
                _diverged(step, cfg, precision)
            rows_now = evaluate(step, losses_now)
            reached = cfg.target_psnr is not None and all(
                row.get(target_key, -math.inf) >= cfg.target_psnr for row in rows_now)
        if on_step is not None:
            on_step(step, lambda step=step: capture(step))  # type: ignore[misc]
        last_step = step
        if out_of_time or reached:
            stopped = "time budget" if out_of_time else "target psnr"
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = elapsed_before + time.perf_counter() - t0
    members.eval()
    members.write_back(fields)
    for f in fields:
        f.eval()

    # Final metrics in fp32 without autocast, every set in full.
    final = [dict() for _ in range(k)]  # type: list[dict[str, float]]
    with torch.no_grad():
        for name, held in problem.final_sets().items():
            scores = Scores(k, objective)
            for x, y in _pairs(held, rows):
                x, y = x.to(device), y.to(device)
                scores.add(members(members.prepare(x, torch.float32)).float(), y)
            for row, scored in zip(final, scores.result(), strict=True):
                row.update({f"{name}_{key}": value for key, value in scored.items()})
    last = recent.tolist()
    results = []
    for i in range(k):
        # A saturated output (sigmoid of +-inf) can keep the training loss finite while the
        # weights or the fp32 predictions are not: that is a divergence too.
        bad = not math.isfinite(last[i]) or not all(math.isfinite(v) for v in final[i].values()) \
            or not all(bool(torch.isfinite(p).all()) for p in fields[i].parameters())
        if bad and stop:
            _diverged(last_step, cfg, precision)
        results.append(MemberResult(history[i], final[i], diverged=bad))
    return TrainResult(results, last_step, wall, str(device), precision, stopped)


def fit(fld: Field, problem: Problem, cfg: FitConfig, *, device: torch.device, precision: str,
        on_eval: Callable[[dict[str, float]], None] | None = None,
        start: FitState | None = None, on_step: StepHook | None = None) -> FitResult:
    """One field: ``train`` with K = 1, its outcome as a FitResult. Raises DivergenceError."""
    result = train([fld], problem, cfg, device=device, precision=precision, start=start,
                   on_step=on_step, on_eval=on_eval)
    member = result.members[0]
    return FitResult(fld, member.history, member.metrics, result.steps, result.wall_time,
                     result.device, result.precision, extra={"stopped": result.stopped})


def _diverged(step: int, cfg: FitConfig, precision: str) -> None:
    cause = (f"likely cause: the learning rate --lr {cfg.lr:g} is too high for this model "
             f"(try {cfg.lr / 10:g})")
    if precision != "fp32":
        cause += f", or {precision} arithmetic overflowed (try --precision fp32)"
    raise DivergenceError(f"the fit diverged (loss or weights NaN or infinite) at step {step}; "
                          f"{cause}")
