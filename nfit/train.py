"""The one training loop: K >= 1 fields of one shape trained together; a single fit is K = 1.

    result = train([field], problem, cfg, device=device, precision="bf16")   # one fit
    result = train(fields, problem, cfg, seeds=[0, 1, 2, 3], ...)          # a sweep's stack

Each step: the feed (``nfit.feeds``) gives the step's slices, the members run on them,
the objective (``nfit.objectives``) gives the loss, its gradient is accumulated slice by
slice, the optimizer (``nfit.schedules.OPTIMIZERS``: Adam by default, plain gradient
descent for the kernel studies) steps, the schedule sets the rate. Around the step, small
named pieces:

- ``pointwise_step`` / ``operator_step``: one step's forward and backward for each shape
  of objective; the operator step is the whole-grid step (``nfit.objectives``).
- ``Evaluator``: held-out scores every ``eval_every`` steps (large sets on a fixed
  subset) and every set in full at the end.
- ``Stopper``: the step cap, ``--time-budget``, ``--target-psnr`` and divergence.
- ``Plateau``: early stopping on the validation set (``--patience``), with each member's
  best state kept; the fit ends with the best states, not the last.
- ``Resumer``: a ``FitState`` captured at any step and restored bit-identically (weights,
  optimizer moments, generators, history, elapsed time), offered to ``on_step``.

Precision: fp32, or bf16 autocast with fp32 master weights and loss. Members that use
different seeds draw their own minibatch indices (or sampler points); members that share
a seed share them. Divergence: a single fit (``stop_on_divergence``, the default for
K = 1) raises DivergenceError as soon as the loss is NaN or infinite (checked every step
on the CPU, every 10 steps elsewhere) and never hands out a diverged state; in a stack, a
member that diverges is marked and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nfit.config import DEFAULT_PATIENCE, FitConfig
from nfit.device import autocast, compute_dtype, configure_matmul, keep_grid_graphs, slice_rows
from nfit.errors import DivergenceError, UsageError
from nfit.feeds import Feed, FeedContext, MemberRNG, Slice, build_feed
from nfit.field import Field
from nfit.objectives import Objective, OperatorObjective, Scores, sum_terms
from nfit.problem import FitResult, FitState, HeldOut, PointSource, Problem, StepHook
from nfit.schedules import OPTIMIZERS, lr_factor
from nfit.stack import Members

#: Cached inputs (features, grid geometry) above this many bytes are computed per step.
FEATURE_CACHE_BYTES = 4 << 30
#: Points of a PointSource scored at each evaluation during training (a fixed subset).
EVAL_SUBSET = 1 << 16
#: Held-out tensor sets above this many points are scored on a fixed EVAL_SUBSET during
#: training too (a whole photograph every 25 steps would cost more than its steps).
EVAL_FULL_MAX = 1 << 18


@dataclass(frozen=True)
class TrainOptions:
    """The options the loop reads, typed (``TrainOptions.of(cfg)``)."""

    steps: int
    lr: float
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup: float = 0.0
    decay_steps: int = 0
    eval_every: int = 25
    time_budget_s: float | None = None
    target_psnr: float | None = None
    seed: int = 0
    #: --patience as given: None for the default (``patience_of``)
    patience: int | None = None

    @classmethod
    def of(cls, cfg: FitConfig) -> TrainOptions:
        return cls(steps=int(cfg.steps), lr=float(cfg.lr), optimizer=cfg.optimizer, schedule=cfg.schedule,
                   warmup=float(cfg.warmup), decay_steps=int(cfg.decay_steps), eval_every=int(cfg.eval_every),
                   time_budget_s=cfg.time_budget_s(), target_psnr=cfg.target_psnr, seed=int(cfg.seed),
                   patience=cfg.patience)


@dataclass
class MemberResult:
    """One member's outcome: its history rows and final metrics."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    diverged: bool = False
    #: the step whose state the member ends with under early stopping (None: the last)
    best_step: int | None = None


@dataclass
class TrainResult:
    members: list[MemberResult]
    steps: int
    wall_time: float
    device: str
    precision: str
    #: why the fit ended: "steps", "time budget", "target psnr" or "plateau"
    stopped: str = "steps"
    #: how points reached the loss (``Feed.describe``)
    feed: dict[str, Any] | None = None
    #: early stopping's patience in steps (0: off) and the score it watched
    patience: int = 0
    watched: str | None = None


def flatten_members(states: Sequence[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
    """K state dicts as one flat dict on the CPU: one member keeps its own keys, K > 1 are
    "member{i}/key"; a member without a state (None) has no keys."""
    if len(states) == 1:
        return {k: v.detach().cpu().clone() for k, v in (states[0] or {}).items()}
    return {f"member{i}/{k}": v.detach().cpu().clone()
            for i, state in enumerate(states) for k, v in (state or {}).items()}


def split_members(flat: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    """The inverse of ``flatten_members``: K state dicts (empty where a member had none)."""
    if k == 1:
        return [dict(flat)]
    prefixes = [f"member{i}/" for i in range(k)]
    return [{key[len(p):]: v for key, v in flat.items() if key.startswith(p)} for p in prefixes]


def member_states(fields: Sequence[Field]) -> dict[str, torch.Tensor]:
    """The fields' state dicts as one flat dict on the CPU (one field: its own keys)."""
    return flatten_members([f.state_dict() for f in fields])


def load_member_states(fields: Sequence[Field], state: dict[str, torch.Tensor]) -> None:
    for f, own in zip(fields, split_members(state, len(fields)), strict=True):
        f.load_state_dict(own, strict=True)


def optimizer_state_cpu(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every tensor copied to the CPU."""
    state = optimizer.state_dict()
    return {"state": {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                          for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}


# ---------------------------------------------------------------------------- one step


def pointwise_step(members: Members, slices: list[Slice], objective: Objective, device: torch.device,
                   precision: str) -> dict[str, torch.Tensor]:
    """Forward and backward of a pointwise objective over the step's slices; each slice's
    per-member terms are weighted by its share, so the sums are the step's means and the
    accumulated gradient of member k is its own. Returns the step's terms, each (K,)."""
    total: dict[str, torch.Tensor] = {}
    dtype = compute_dtype(precision)
    for s in slices:
        if s.differentiable:
            assert s.coords is not None
            coords = s.coords.detach().requires_grad_(True)
            with autocast(device, precision):
                pred = members.forward_coords(coords)
            terms = objective.terms(pred, s.target, coords)
        else:
            with autocast(device, precision):
                pred = members(s.read(members, dtype))
            terms = objective.terms(pred, s.target)
        terms = {name: value * s.share for name, value in terms.items()}
        sum_terms(terms).sum().backward()
        for name, value in terms.items():
            total[name] = total[name] + value.detach() if name in total else value.detach()
    return total


def grid_values(members: Members, slices: list[Slice], device: torch.device, precision: str) -> torch.Tensor:
    """(K, N) fp32 values of the members on the whole grid, slice by slice, without a graph
    (each slice's inputs prepared in ``precision``'s dtype when read)."""
    dtype = compute_dtype(precision)
    with torch.no_grad(), autocast(device, precision):
        return torch.cat([members(s.read(members, dtype))[..., 0].float() for s in slices], dim=1)


def operator_step(members: Members, slices: list[Slice], objective: OperatorObjective,
                  device: torch.device, precision: str, keep_graphs: bool = False) -> dict[str, torch.Tensor]:
    """The whole-grid step: values without a graph, the loss and its gradient with respect
    to the values through the operator, then each slice again with a graph, back-propagating
    its part of that gradient. Peak memory: one slice's graph and the (K, N) values.

    ``keep_graphs`` (small grids: ``nfit.device.keep_grid_graphs``): one forward pass that
    keeps every slice's graph and one backward, the same gradient for a quarter less work."""
    dtype = compute_dtype(precision)
    if keep_graphs:
        with autocast(device, precision):
            values = torch.cat([members(s.read(members, dtype))[..., 0].float() for s in slices], dim=1)
        loss = objective.loss(values)
        loss.sum().backward()
        return {"data": loss.detach()}
    values = grid_values(members, slices, device, precision).requires_grad_(True)
    loss = objective.loss(values)
    (grad,) = torch.autograd.grad(loss.sum(), values)
    offset = 0
    for s in slices:
        with autocast(device, precision):
            pred = members(s.read(members, dtype))[..., 0].float()
        n = pred.shape[1]
        pred.backward(grad[:, offset:offset + n])
        offset += n
    return {"data": loss.detach()}


# ---------------------------------------------------------------------------- evaluation


def _pairs(held: HeldOut, chunk: int):
    if isinstance(held, PointSource):
        return held.chunks(chunk)
    x, y = held
    return ((x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk))


def evaluation_points(problem: Problem) -> int:
    """Points of the held-out sets scored during training (what ``Evaluator`` prepares)."""
    total = 0
    for held in problem.eval_sets.values():
        n = len(held) if isinstance(held, PointSource) else len(held[0])
        total += min(n, EVAL_SUBSET) if isinstance(held, PointSource) or n > EVAL_FULL_MAX else n
    return total


class Evaluator:
    """Scores of the held-out sets: during training on what ``start`` prepared (a large
    set on a fixed random subset drawn with the fit's seed), at the end every set in full,
    in fp32. An operator problem scores its measurement sets from the whole grid's values."""

    def __init__(self, problem: Problem, k: int, seed: int) -> None:
        self.problem, self.k = problem, k
        self.objective = problem.objective
        generator = torch.Generator().manual_seed(int(seed))
        self.xy: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, held in problem.eval_sets.items():
            if isinstance(held, PointSource):
                x, y = held.sample(min(EVAL_SUBSET, len(held)), generator)
            elif len(held[0]) > EVAL_FULL_MAX:
                pick = torch.randperm(len(held[0]), generator=generator)[:EVAL_SUBSET].sort().values
                x, y = held[0][pick], held[1][pick]
            else:
                x, y = held
            self.xy[name] = (x, y)

    def fixed_points(self) -> int:
        return sum(len(x) for x, _ in self.xy.values())

    def start(self, ctx: FeedContext, feed: Feed) -> None:
        self.ctx, self.feed = ctx, feed
        rows = ctx.rows
        self.inputs = {}
        for name, (x, y) in self.xy.items():
            x, y = x.to(ctx.device), y.to(ctx.device)
            parts = [x[i:i + rows] for i in range(0, len(x), rows)]
            self.inputs[name] = ([ctx.members.prepare(p, ctx.dtype) for p in parts] if ctx.cache else parts, y)

    def during(self, precision: str) -> list[dict[str, float]]:
        """K rows of ``{set}_{loss, metric, iou}`` for the held-out sets, now."""
        members, ctx = self.ctx.members, self.ctx
        out: list[dict[str, float]] = [{} for _ in range(self.k)]
        if isinstance(self.objective, OperatorObjective):
            values = grid_values(members, self.feed.step(0), ctx.device, precision)
            for name in self.objective.held_out():
                self._put(out, name, self.objective.score(values, name))
            return out
        with torch.no_grad(), autocast(ctx.device, precision):
            for name, (parts, y) in self.inputs.items():
                scores = Scores(self.k, self.objective)
                offset = 0
                for part in parts:
                    pred = members(part if ctx.cache else members.prepare(part, ctx.dtype)).float()
                    n = pred.shape[1]
                    scores.add(pred, y[offset:offset + n])
                    offset += n
                self._put(out, name, scores.result())
        return out

    def final(self, members: Members | None = None) -> list[dict[str, float]]:
        """K rows of every set's scores in full, fp32 without autocast (of ``members``, by
        default the ones training ran)."""
        ctx = self.ctx
        members = members if members is not None else ctx.members
        out: list[dict[str, float]] = [{} for _ in range(self.k)]
        if isinstance(self.objective, OperatorObjective):
            # fp32 inputs prepared slice by slice (the cached ones are in the fit's dtype)
            fp32 = [Slice(s.target, s.share, coords=s.coords) for s in self.feed.step(0)]
            values = grid_values(members, fp32, ctx.device, "fp32")
            for name in self.objective.sets:
                self._put(out, name, self.objective.score(values, name))
            return out
        with torch.no_grad():
            for name, held in self.problem.final_sets().items():
                scores = Scores(self.k, self.objective)
                for x, y in _pairs(held, ctx.rows):
                    x, y = x.to(ctx.device), y.to(ctx.device)
                    scores.add(members(members.prepare(x, torch.float32)).float(), y)
                self._put(out, name, scores.result())
        return out

    @staticmethod
    def _put(out: list[dict[str, float]], name: str, rows: list[dict[str, float]]) -> None:
        for row, scored in zip(out, rows, strict=True):
            row.update({f"{name}_{key}": value for key, value in scored.items()})


# ---------------------------------------------------------------------------- stopping


class Stopper:
    """When the fit ends: the step cap, the time budget, the target PSNR on the validation
    set where there is one (else the test set, else the training steps), and divergence."""

    def __init__(self, opts: TrainOptions, problem: Problem, precision: str, stop_on_divergence: bool,
                 device: torch.device) -> None:
        self.opts, self.precision, self.stop = opts, precision, stop_on_divergence
        self.check_every = 1 if device.type == "cpu" else 10
        if opts.target_psnr is not None and problem.objective.metric != "psnr":
            raise UsageError(f"--target-psnr needs a PSNR-scored fit; this one is scored by "
                             f"{problem.objective.metric}")
        held = problem.held_out()
        self.target_key = next((f"{name}_psnr" for name in ("val", "test") if name in held), "train_psnr")

    def check_loss(self, step: int, losses: torch.Tensor, every: bool = True) -> None:
        """Raise DivergenceError (single fits) when a step's loss is not finite."""
        if self.stop and (not every or step % self.check_every == 0) and not bool(torch.isfinite(losses).all()):
            self.diverged(step)

    def out_of_time(self, elapsed: float) -> bool:
        return self.opts.time_budget_s is not None and elapsed >= self.opts.time_budget_s

    def reached(self, rows: list[dict[str, float]]) -> bool:
        target = self.opts.target_psnr
        return target is not None and all(row.get(self.target_key, -math.inf) >= target for row in rows)

    def diverged(self, step: int) -> None:
        lr = self.opts.lr
        cause = f"likely cause: the learning rate --lr {lr:g} is too high for this model (try {lr / 10:g})"
        if self.precision != "fp32":
            cause += f", or {self.precision} arithmetic overflowed (try --precision fp32)"
        raise DivergenceError(f"the fit diverged (loss or weights NaN or infinite) at step {step}; {cause}")


def patience_of(patience: int | None, problem: Problem) -> int:
    """Early stopping's patience in steps: ``--patience`` as given, else DEFAULT_PATIENCE
    where the problem has a validation set and 0 (off) where it has none. A patience given
    to a fit without a validation set is a usage error."""
    has_val = "val" in problem.held_out()
    if patience is None:
        return DEFAULT_PATIENCE if has_val else 0
    if patience > 0 and not has_val:
        raise UsageError("--patience stops on the validation set, and this fit has none; use --split paper "
                         "or random:F (images), --held-out F (ct, mri), or --patience 0")
    return int(patience)


class Plateau:
    """Early stopping with the best state kept, per member.

    At each evaluation a member whose validation score (the objective's ``select``: PSNR,
    or IoU for meshes) beats its best so far keeps a copy of its weights and that step. A
    member has plateaued when ``patience`` steps have passed since its best; the fit
    stops when every member has (a member that diverged never improves, so it plateaus
    too). At the end each member is given back its best weights. Off with patience 0.
    """

    def __init__(self, patience: int, problem: Problem, k: int) -> None:
        self.patience, self.k = patience, k
        self.key = f"val_{problem.objective.select}"
        self.steps = [0.0] * k
        self.values = [-math.inf] * k
        self.states: list[dict[str, torch.Tensor] | None] = [None] * k

    @property
    def on(self) -> bool:
        return self.patience > 0

    def update(self, step: int, rows: list[dict[str, float]], members: Members,
               fields: Sequence[Field]) -> bool:
        """Record the evaluation at ``step``; True when every member has plateaued."""
        if not self.on:
            return False
        better = [i for i, row in enumerate(rows)
                  if math.isfinite(row.get(self.key, math.nan)) and row[self.key] > self.values[i]]
        if better:
            members.write_back(fields)
            for i in better:
                self.values[i], self.steps[i] = float(rows[i][self.key]), float(step)
                self.states[i] = {n: v.detach().cpu().clone() for n, v in fields[i].state_dict().items()}
        return all(step - s >= self.patience for s in self.steps)

    def best_steps(self) -> list[int | None]:
        return [int(s) if state is not None else None for s, state in zip(self.steps, self.states, strict=True)]

    def restore_best(self, fields: Sequence[Field]) -> bool:
        """Load each member's best weights into its field; True when any was loaded."""
        loaded = False
        for f, state in zip(fields, self.states, strict=True):
            if state is not None:
                f.load_state_dict(state, strict=True)
                loaded = True
        return loaded

    def state(self) -> tuple[dict[str, list[float]] | None, dict[str, torch.Tensor]]:
        """(FitState.best, FitState.best_model): flat keys as ``member_states``."""
        if not self.on:
            return None, {}
        return {"steps": list(self.steps), "values": list(self.values)}, flatten_members(self.states)

    def restore(self, best: dict[str, list[float]] | None, flat: dict[str, torch.Tensor]) -> None:
        if not self.on or best is None:
            return
        self.steps = [float(v) for v in best["steps"]]
        self.values = [float(v) for v in best["values"]]
        self.states = [{k: v.clone() for k, v in own.items()} or None for own in split_members(flat, self.k)]


# ---------------------------------------------------------------------------- resume


class Resumer:
    """Captures and restores everything a bit-identical continuation needs."""

    def __init__(self, fields: Sequence[Field], members: Members, optimizer: torch.optim.Optimizer,
                 rng: MemberRNG, device: torch.device, plateau: Plateau) -> None:
        self.fields, self.members, self.optimizer, self.rng, self.device = fields, members, optimizer, rng, device
        self.plateau = plateau

    def restore(self, start: FitState, k: int) -> list[list[dict[str, float]]]:
        """Load the optimizer and generators; return the history per member."""
        self.optimizer.load_state_dict(start.optimizer)
        self.plateau.restore(start.best, start.best_model)
        self.rng.restore(start.rng)
        torch.set_rng_state(start.rng["torch_cpu"])
        if self.device.type == "cuda" and "torch_cuda" in start.rng:
            torch.cuda.set_rng_state(start.rng["torch_cuda"], self.device)
        saved = start.history
        if k == 1:
            return [[dict(r) for r in saved]]
        return [[dict(r) for r in saved if int(r.get("member", 0)) == i] for i in range(k)]

    def capture(self, step: int, history: list[list[dict[str, float]]], elapsed: float) -> FitState:
        self.members.write_back(self.fields)
        rng = {"torch_cpu": torch.get_rng_state(), **self.rng.state()}
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        rows = [dict(r) for hist in history for r in hist]
        best, best_model = self.plateau.state()
        return FitState(step, member_states(self.fields), optimizer_state_cpu(self.optimizer), rng, rows, elapsed,
                        best, best_model)


# ---------------------------------------------------------------------------- the loop


def train(fields: Sequence[Field], problem: Problem, cfg: FitConfig, *, device: torch.device,
          precision: str, seeds: Sequence[int] | None = None, start: FitState | None = None,
          on_step: StepHook | None = None,
          on_eval: Callable[[dict[str, float]], None] | None = None,
          stop_on_divergence: bool | None = None) -> TrainResult:
    """Train K fields of one shape for ``cfg.steps`` steps; their weights are written back.

    fields: built as single fits build them (weights drawn from ``seeds[k]``, default
    ``cfg.seed``). ``cfg`` supplies the shared options (``TrainOptions``) and ``--batch``
    (read by the feed). With ``start`` the weights, optimizer moments, generators and
    history are restored and training continues at step ``start.step + 1``. ``on_eval``
    receives member 0's history rows as they are made. Under early stopping (``Plateau``)
    the fields end with their best states and the final metrics are theirs.
    """
    opts = TrainOptions.of(cfg)
    k = len(fields)
    seeds = [opts.seed] * k if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k or not k:
        raise ValueError("one seed per field, at least one field")
    configure_matmul(device, precision)
    dtype = compute_dtype(precision)
    for f in fields:
        f.to(device)
    if start is not None:
        load_member_states(fields, start.model)
    members = Members(fields).to(device)
    objective = problem.objective
    stopper = Stopper(opts, problem, precision, k == 1 if stop_on_divergence is None else stop_on_divergence,
                      device)
    optimizer = OPTIMIZERS[opts.optimizer](members.param_groups(cfg), opts.lr)
    # The schedule scales each group's own base rate (a grid's table keeps its settings);
    # read before a resumed state overwrites the groups with its last step's rates.
    base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    scheduled = opts.schedule != "constant" or opts.warmup > 0

    feed = build_feed(problem, cfg.batch)
    evaluator = Evaluator(problem, k, opts.seed)
    rng = MemberRNG(seeds, device)
    raw = isinstance(objective, Objective) and objective.needs_coords
    cached_points = (0 if raw else feed.fixed_points()) + evaluator.fixed_points()
    ctx = FeedContext(members, device, dtype,
                      slice_rows(k, device, int(getattr(fields[0].network, "width", 256) or 256), precision),
                      cached_points * members.point_bytes(dtype) <= FEATURE_CACHE_BYTES, rng)
    feed.start(ctx, raw=raw)
    evaluator.start(ctx, feed)
    plateau = Plateau(patience_of(opts.patience, problem), problem, k)
    resumer = Resumer(fields, members, optimizer, rng, device, plateau)
    network = fields[0].network
    keep_graphs = isinstance(objective, OperatorObjective) and keep_grid_graphs(
        objective.points, k, int(getattr(network, "width", 0) or 0), int(getattr(network, "depth", 0) or 0),
        fields[0].encoding.out_dim, 1)

    history: list[list[dict[str, float]]] = [[] for _ in range(k)]
    first, elapsed_before = 1, 0.0
    if start is not None:
        history = resumer.restore(start, k)
        first, elapsed_before = start.step + 1, start.elapsed
    recent = torch.zeros(k, device=device)
    terms: dict[str, torch.Tensor] = {}

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def evaluate(step: int) -> list[dict[str, float]]:
        losses = recent.tolist()
        rows: list[dict[str, float]] = [{"step": float(step), "train_loss": v} for v in losses]
        named = {name: value.tolist() for name, value in terms.items()}
        for i, row in enumerate(rows):
            mine = {name: values[i] for name, values in named.items()}
            if len(mine) > 1:
                row.update({f"train_{name}": value for name, value in mine.items()})
            metric = objective.train_metric(mine)
            if metric is not None:
                row[f"train_{objective.metric}"] = metric
        for row, scored in zip(rows, evaluator.during(precision), strict=True):
            row.update(scored)
        now = elapsed()
        for i, (row, hist) in enumerate(zip(rows, history, strict=True)):
            row["time"] = now
            if k > 1:
                row["member"] = float(i)
            hist.append(row)
        if on_eval is not None:
            on_eval(rows[0])
        return rows

    def capture(step: int) -> FitState:
        # Never hand out a diverged state: the last saved one stays the last good one.
        if not (bool(torch.isfinite(recent).all()) and all(bool(torch.isfinite(p).all())
                                                           for p in members.parameters())):
            stopper.diverged(step)
        return resumer.capture(step, history, elapsed())

    stopped, last_step = "steps", first - 1
    members.train()
    t0 = time.perf_counter()
    for step in range(first, opts.steps + 1):
        if scheduled:
            factor = lr_factor(opts.schedule, step, opts.steps, warmup=opts.warmup, decay_steps=opts.decay_steps,
                               budget=opts.time_budget_s, elapsed=elapsed())
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
        optimizer.zero_grad(set_to_none=True)
        slices = feed.step(step)
        if isinstance(objective, OperatorObjective):
            terms = operator_step(members, slices, objective, device, precision, keep_graphs)
        else:
            terms = pointwise_step(members, slices, objective, device, precision)
        recent = sum_terms(terms)
        optimizer.step()
        stopper.check_loss(step, recent)
        out_of_time = stopper.out_of_time(elapsed())
        reached = plateaued = False
        if step % opts.eval_every == 0 or step == opts.steps or out_of_time:
            stopper.check_loss(step, recent, every=False)
            rows = evaluate(step)
            reached = stopper.reached(rows)
            plateaued = plateau.update(step, rows, members, fields)
        if on_step is not None:
            on_step(step, lambda step=step: capture(step))  # type: ignore[misc]
        last_step = step
        if out_of_time or reached or plateaued:
            stopped = "time budget" if out_of_time else "target psnr" if reached else "plateau"
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = elapsed()
    members.eval()
    members.write_back(fields)
    if plateau.restore_best(fields):
        # the final scores are the best states': the stack is rebuilt from them
        members = Members(fields).to(device).eval()
    for f in fields:
        f.eval()

    final = evaluator.final(members)
    last = recent.tolist()
    results = []
    for i in range(k):
        # A saturated output (sigmoid of +-inf) can keep the training loss finite while the
        # weights or the fp32 predictions are not: that is a divergence too.
        bad = not math.isfinite(last[i]) or not all(math.isfinite(v) for v in final[i].values()) \
            or not all(bool(torch.isfinite(p).all()) for p in fields[i].parameters())
        if bad and stopper.stop:
            stopper.diverged(last_step)
        results.append(MemberResult(history[i], final[i], diverged=bad, best_step=plateau.best_steps()[i]))
    return TrainResult(results, last_step, wall, str(device), precision, stopped, feed.describe(),
                       plateau.patience, plateau.key if plateau.on else None)


def fit(fld: Field, problem: Problem, cfg: FitConfig, *, device: torch.device, precision: str,
        on_eval: Callable[[dict[str, float]], None] | None = None,
        start: FitState | None = None, on_step: StepHook | None = None) -> FitResult:
    """One field: ``train`` with K = 1, its outcome as a FitResult. Raises DivergenceError."""
    result = train([fld], problem, cfg, device=device, precision=precision, start=start,
                   on_step=on_step, on_eval=on_eval)
    member = result.members[0]
    extra: dict[str, Any] = {"stopped": result.stopped, "feed": result.feed}
    if result.patience:
        extra["early_stopping"] = {"patience": result.patience, "score": result.watched,
                                   "best_step": member.best_step}
    return FitResult(fld, member.history, member.metrics, result.steps, result.wall_time,
                     result.device, result.precision, extra=extra)
