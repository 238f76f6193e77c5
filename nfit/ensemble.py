"""K coordinate MLPs of identical shape trained at once: stacked weights, one ``bmm`` per layer.

A sweep over (encoding, sigma, seed) trains many small fields on the same signal. Each
member k has its own fixed encoding gamma_k (its own frequency matrix B_k), so its
features differ, but the network shapes agree, so the K networks run as one batched
matrix product per layer:

    h_0 = [gamma_1(X); ...; gamma_K(X)]           (K, N, F)
    h_l = relu(h_{l-1} @ W_l + b_l)                 W_l: (K, in, out), b_l: (K, 1, out)
    y   = sigmoid(h_{L-1} @ W_L + b_L)              (K, N, C)

The loss is the sum over members of each member's own mean loss, so the gradient of
member k's weights is exactly the gradient of its single fit; Adam is elementwise, so
one Adam over the stacked tensors is K independent Adams. Member k starts from the
weights ``nfit.api.build_task_field`` draws for its seed, so the ensemble reproduces
``nfit.fit.fit`` member by member (to float rounding; tests check this in fp32).

Members that use different random seeds also draw their own minibatch indices (or
sampler points) from their own generator, exactly as a single fit would; members that
share a seed share them.

Held-out sets too large to hold (``PointSource``, e.g. a volume's voxels) are scored as
``nfit.fit.fit`` scores them: on a fixed random subset during training (drawn once with
the base seed, so shared by all members; a single fit draws it with its own seed) and in
full, chunk by chunk, at the end, with per-member sums in float64 (``MemberScores``).
``select="iou"`` adds the intersection over union of the inside/outside sign (meshes)
to every set's metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nfit.config import FitConfig
from nfit.device import autocast, configure_matmul
from nfit.errors import UsageError
from nfit.field import Field
from nfit.fit import CPU_STEP_CHUNK, EVAL_CHUNK, EVAL_SUBSET, PointSource, Problem
from nfit.memory import available_memory
from nfit.metrics import psnr_from_mse
from nfit.networks import MLP


def _linears(mlp: nn.Module) -> list[nn.Linear]:
    return [layer for layer in mlp.layers if isinstance(layer, nn.Linear)]  # type: ignore[union-attr]


class StackedMLP(nn.Module):
    """K MLPs of one shape as stacked parameters.

    weights[l]: (K, in_l, out_l) (the transpose of ``nn.Linear.weight``), biases[l]: (K, 1, out_l).
    features: (K, N, in_dim)  ->  (K, N, out_dim)
    """

    def __init__(self, mlps: Sequence[MLP]) -> None:
        super().__init__()
        first = mlps[0]
        shape = [tuple(layer.weight.shape) for layer in _linears(first)]
        for m in mlps:
            if not isinstance(m, MLP):
                raise UsageError(f"sweeps train MLP networks only, not {type(m).__name__}")
            m_shape = [tuple(layer.weight.shape) for layer in _linears(m)]
            if m_shape != shape or m.output != first.output:
                raise ValueError("ensemble members must have networks of identical shape")
        self.k, self.output = len(mlps), first.output
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([_linears(m)[i].weight.detach().T for m in mlps]).contiguous())
            for i in range(len(shape)))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([_linears(m)[i].bias.detach()[None]
                                      for m in mlps]).contiguous())
            for i in range(len(shape)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=False)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return torch.sigmoid(h) if self.output == "sigmoid" else h

    def write_back(self, mlps: Sequence[MLP]) -> None:
        """Copy member k's trained weights into ``mlps[k]`` (a plain MLP again)."""
        with torch.no_grad():
            for k, m in enumerate(mlps):
                for i, layer in enumerate(_linears(m)):
                    layer.weight.copy_(self.weights[i][k].T)
                    layer.bias.copy_(self.biases[i][k, 0])


@dataclass
class MemberResult:
    """One member's outcome: its history rows and final metrics, as ``FitResult`` holds them."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    diverged: bool = False


@dataclass
class EnsembleResult:
    members: list[MemberResult]
    steps: int
    wall_time: float
    device: str
    precision: str
    extra: dict[str, float] = field(default_factory=dict)


def encode_members(fields: Sequence[Field], x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x: (N, d) shared coordinates -> (K, N, F) features of every member, in ``dtype``."""
    with torch.no_grad():
        return torch.stack([f.encoding(x).to(dtype) for f in fields])


def member_losses(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-member mean loss. pred: (K, N, C); target: (N, C) shared or (K, N, C). Returns (K,)."""
    pred = pred.float()
    target = target.expand_as(pred)
    if kind == "mse":
        return ((pred - target) ** 2).mean(dim=(1, 2))
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(dim=(1, 2))
    raise ValueError(f"unknown loss {kind!r}")


def inside_of(loss: str, values: torch.Tensor) -> torch.Tensor:
    """Where a mesh field (or its target) says "inside": a signed distance (MSE) below 0,
    an occupancy logit (BCE; targets 0/1) above 0, as ``nfit.signals.mesh.predicted_inside``."""
    return values < 0 if loss == "mse" else values > 0


class MemberScores:
    """Per-member loss and metric over chunks: running float64 sums, divided at the end.

    ``add(pred, target)``: pred (K, n, C), target (n, C) shared or (K, n, C). ``result()``
    gives K dicts with "loss", the problem's metric ("psnr" or "accuracy") and, with
    ``iou=True``, "iou" of the first output's inside/outside sign (``inside_of``), the same
    number ``nfit.geometry.iou`` gives on the concatenated points.
    """

    def __init__(self, k: int, loss: str, *, iou: bool = False) -> None:
        self.k, self.loss, self.with_iou = k, loss, iou
        self.total = torch.zeros(k, dtype=torch.float64)
        self.hits = torch.zeros(k, dtype=torch.float64)
        self.inter = torch.zeros(k, dtype=torch.float64)
        self.union = torch.zeros(k, dtype=torch.float64)
        self.count = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.double(), target.double().expand_as(pred)
        self.count += target[0].numel()
        if self.loss == "mse":
            self.total += ((pred - target) ** 2).sum(dim=(1, 2)).cpu()
        else:
            self.total += F.binary_cross_entropy_with_logits(
                pred, target, reduction="none").sum(dim=(1, 2)).cpu()
            self.hits += ((pred > 0).double() == target).double().sum(dim=(1, 2)).cpu()
        if self.with_iou:
            p, t = inside_of(self.loss, pred[..., 0]), inside_of(self.loss, target[..., 0])
            self.inter += (p & t).double().sum(dim=1).cpu()
            self.union += (p | t).double().sum(dim=1).cpu()

    def result(self) -> list[dict[str, float]]:
        n = self.count
        out = []
        for k in range(self.k):
            loss = float(self.total[k]) / n if n else float("nan")
            row = {"loss": loss}
            if self.loss == "mse":
                row["psnr"] = psnr_from_mse(loss)
            else:
                row["accuracy"] = float(self.hits[k]) / n if n else float("nan")
            if self.with_iou:
                # the sums are those nfit.geometry.iou forms; empty on both sides is 1
                row["iou"] = float(self.inter[k] / self.union[k]) if self.union[k] > 0 else 1.0
            out.append(row)
        return out


HeldOut = tuple[torch.Tensor, torch.Tensor] | PointSource


def score_sets(predict: Callable[[torch.Tensor], torch.Tensor], k: int,
               sets: dict[str, HeldOut], loss: str, *, chunk: int, device: torch.device,
               select: str | None = None) -> list[dict[str, float]]:
    """Score K members' predictions on every set, chunk by chunk.

    predict: x (n, d) on ``device`` -> (K, n, C) fp32. sets: name -> (x, y) or a
    PointSource (enumerated in full). Returns K dicts "<set>_loss", "<set>_<metric>"
    (and "<set>_iou" with ``select="iou"``).
    """
    rows: list[dict[str, float]] = [{} for _ in range(k)]
    for name, held in sets.items():
        acc = MemberScores(k, loss, iou=select == "iou")
        pairs = held.chunks(chunk) if isinstance(held, PointSource) else (
            (held[0][i:i + chunk], held[1][i:i + chunk]) for i in range(0, len(held[0]), chunk))
        with torch.no_grad():
            for x, y in pairs:
                acc.add(predict(x.to(device)), y.to(device))
        for row, scored in zip(rows, acc.result(), strict=True):
            row.update({f"{name}_{key}": value for key, value in scored.items()})
    return rows


def _predict(net: StackedMLP, fields: Sequence[Field], x: torch.Tensor, dtype: torch.dtype,
             chunk: int) -> torch.Tensor:
    """(K, N, C) fp32 predictions at shared x: (N, d), features computed chunk by chunk."""
    with torch.no_grad():
        return torch.cat([net(encode_members(fields, x[i:i + chunk], dtype)).float()
                          for i in range(0, len(x), chunk)], dim=1)


def train_ensemble(fields: Sequence[Field], problem: Problem, cfg: FitConfig, *,
                   seeds: Sequence[int], device: torch.device, precision: str,
                   on_step: Callable[[int], None] | None = None,
                   select: str | None = None) -> EnsembleResult:
    """Train K fields of one network shape at once; their trained weights are written back.

    fields: K fields built as single fits build them (weights drawn from ``seeds[k]``);
    their encodings must be fixed (no learned parameters). ``cfg`` supplies the shared
    steps, lr, batch and eval_every. A member whose loss becomes NaN or infinite does not
    stop the others: it is marked ``diverged`` and its metrics are NaN. ``select="iou"``
    adds every set's IoU to the history rows and metrics (see ``MemberScores``).
    """
    if len(fields) != len(seeds) or not fields:
        raise ValueError("one seed per field, at least one field")
    for f in fields:
        if any(p.requires_grad for p in f.encoding.parameters()):
            raise UsageError(f"encoding {f.encoding.name!r} has learned parameters; "
                             "sweeps train fixed encodings only")
    configure_matmul(device, precision)
    compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for f in fields:
        f.to(device)
    net = StackedMLP([f.network for f in fields]).to(device)  # type: ignore[misc]
    k = len(fields)
    # Points per member in each training slice and scoring chunk. On the CPU the K members'
    # activations stay about as small as a single fit's 8192-row slice (CPU_STEP_CHUNK in
    # nfit.fit): scoring chunks K times larger measured 1.6-1.9x slower for K = 8 (fresh
    # large allocations are page-faulted). A GPU trains on the whole batch at once.
    cpu_rows = max(512, CPU_STEP_CHUNK // k)
    chunk = cpu_rows if device.type == "cpu" else max(1024, EVAL_CHUNK // k)
    step_chunk = cpu_rows if device.type == "cpu" else 1 << 62

    # One generator per distinct seed, seeded as a single fit seeds its own.
    distinct = sorted(set(int(s) for s in seeds))
    generators = {s: torch.Generator(device=device).manual_seed(s) for s in distinct}
    slot = torch.tensor([distinct.index(int(s)) for s in seeds], device=device)
    member_rows = torch.arange(k, device=device)[:, None]

    train_x = problem.train_x.to(device)
    train_y = problem.train_y.to(device)
    sampler = problem.sampler
    train_in = encode_members(fields, train_x, compute_dtype) if sampler is None else None
    # A PointSource is scored on a fixed subset during training and in full at the end.
    subset_generator = torch.Generator().manual_seed(int(cfg.seed))
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, held in problem.eval_sets.items():
        x, y = held.sample(min(EVAL_SUBSET, len(held)), subset_generator) \
            if isinstance(held, PointSource) else held
        eval_sets[name] = (x.to(device), y.to(device))

    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, foreach=True)
    histories: list[list[dict[str, float]]] = [[] for _ in range(k)]
    n_train = len(train_x)
    batch = cfg.batch if 0 < cfg.batch < n_train else 0
    last = torch.zeros(k, device=device)

    def evaluate(step: int, elapsed: float, losses: list[float]) -> None:
        rows: list[dict[str, float]] = [{"step": float(step), "train_loss": v} for v in losses]
        if problem.loss == "mse":
            for row in rows:
                row["train_psnr"] = psnr_from_mse(row["train_loss"])
        with autocast(device, precision):
            scored = score_sets(lambda x: _predict(net, fields, x, compute_dtype, chunk), k,
                                dict(eval_sets), problem.loss, chunk=chunk, device=device, select=select)
        for row, extra in zip(rows, scored, strict=True):
            row.update(extra)
        for row, hist in zip(rows, histories, strict=False):
            row["time"] = elapsed
            hist.append(row)

    # Full batch: cut the cached (K, N, F) features into contiguous slices once. A slice
    # taken along N each step is strided per member, and bmm copies it to contiguous
    # memory in the forward and again in the backward.
    full_slices: list[torch.Tensor] | None = None
    if train_in is not None and sampler is None and not batch and step_chunk < n_train:
        full_slices = [train_in[:, i:i + step_chunk].contiguous()
                       for i in range(0, n_train, step_chunk)]
        train_in = None
    net.train()
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if sampler is not None:
            drawn = [sampler(step, generators[s]) for s in distinct]
            xs = [drawn[int(j)][0].to(device) for j in slot.tolist()]
            xin = torch.stack([f.encoding(x).to(compute_dtype)
                               for f, x in zip(fields, xs, strict=True)])
            yt = torch.stack([drawn[int(j)][1].to(device) for j in slot.tolist()])
        elif batch:
            idx = torch.stack([torch.randint(n_train, (batch,), device=device,
                                             generator=generators[s])
                               for s in distinct])[slot]  # (K, batch)
            assert train_in is not None
            xin, yt = train_in[member_rows, idx], train_y[idx]
        elif full_slices is None:
            assert train_in is not None
            xin, yt = train_in, train_y
        optimizer.zero_grad(set_to_none=True)
        last = torch.zeros(k, device=device)
        n_step = n_train if full_slices is not None else xin.shape[1]
        for j, i in enumerate(range(0, n_step, step_chunk)):
            part = full_slices[j] if full_slices is not None else xin[:, i:i + step_chunk]
            target = (train_y if full_slices is not None else yt)[..., i:i + step_chunk, :]
            with autocast(device, precision):
                pred = net(part)
            # Each slice's per-member mean weighted by its share, as in nfit.fit.fit; the
            # sum's gradient w.r.t. member k's weights is member k's own gradient.
            share = min(step_chunk, n_step - i) / n_step
            losses = member_losses(problem.loss, pred, target) * share
            losses.sum().backward()
            last = last + losses.detach()
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate(step, time.perf_counter() - start, last.tolist())
        if on_step is not None:
            on_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    net.eval()
    net.write_back([f.network for f in fields])  # type: ignore[misc]
    for f in fields:
        f.eval()

    # Final metrics in fp32 without autocast, as ``nfit.fit.fit`` reports them; a sampled
    # problem's fixed pool (meshes) is scored as "train" too, an empty one (volumes) is not.
    metrics = score_sets(lambda x: _predict(net, fields, x, torch.float32, chunk), k,
                         final_sets(problem, train_x, train_y), problem.loss, chunk=chunk,
                         device=device, select=select)
    final = last.tolist()
    results = [MemberResult(h, m, diverged=not math.isfinite(v))
               for h, m, v in zip(histories, metrics, final, strict=True)]
    return EnsembleResult(results, cfg.steps, wall, str(device), precision)


def final_sets(problem: Problem, train_x: torch.Tensor | None = None,
               train_y: torch.Tensor | None = None) -> dict[str, HeldOut]:
    """The sets a trained member is scored on: "train" (when there are fixed training
    points) and every held-out set, PointSources left to be enumerated in chunks."""
    x = problem.train_x if train_x is None else train_x
    y = problem.train_y if train_y is None else train_y
    sets: dict[str, HeldOut] = {"train": (x, y)} if len(x) else {}
    sets.update(problem.eval_sets)
    return sets


# ----------------------------------------------------------------------------- memory


def ensemble_memory_budget(device: torch.device) -> int:
    """Bytes free for a new ensemble (``nfit.memory.available_memory``), or 8 GiB where the
    device does not say (no /proc, MPS)."""
    free = available_memory(device)
    return free if free is not None else 8 << 30


def member_bytes(*, n_train: int, n_step: int, feature_dim: int, width: int, depth: int,
                 out_dim: int, precision: str, chunk: int = EVAL_CHUNK, cached: bool = True) -> int:
    """Estimated peak bytes one member adds to an ensemble.

    cached features n_train * F (compute dtype) + per-step activations (pre-activation,
    ReLU output and their gradients, fp32, plus a low-precision copy under bf16:
    ~5 * n_step * width * (depth - 1) * 4) + step features and outputs + an evaluation
    chunk (chunk * (F + 2 width) * 4) + parameters with gradient and two Adam moments
    (16 bytes each, plus the plain field they are copied back into).
    """
    dt = 2 if precision == "bf16" else 4
    dims = [feature_dim] + [width] * (depth - 1) + [out_dim]
    params = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=False))
    act = 5 * n_step * width * max(depth - 1, 1) * 4 + n_step * (feature_dim * dt + 4 * out_dim * 4)
    cache = n_train * feature_dim * dt if cached else n_step * feature_dim * 4
    evaluation = (chunk * (feature_dim + 2 * width) * 4)
    return int(cache + act + evaluation + 20 * params)


def plan_groups(shapes: Sequence[Hashable], per_member: Sequence[int], budget: int) -> list[list[int]]:
    """Split members into as few ensembles as memory allows.

    shapes[k]: member k's shape key, e.g. its feature dimension (members of different
    shapes never share an ensemble); per_member[k]: its estimated bytes; budget: bytes available. Returns lists
    of member indices; each shape's members are spread evenly over ceil(n / cap) groups.
    Raises UsageError when a single member does not fit.
    """
    groups: list[list[int]] = []
    for shape in dict.fromkeys(shapes):
        members = [i for i, s in enumerate(shapes) if s == shape]
        need = max(per_member[i] for i in members)
        if need > budget:
            raise UsageError(f"one ensemble member needs about {need / 2**30:.2f} GiB but only "
                             f"{budget / 2**30:.2f} GiB is available; lower --features or --width, "
                             "or use --batch")
        cap = max(1, budget // need)
        n_groups = math.ceil(len(members) / cap)
        size = math.ceil(len(members) / n_groups)
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    return groups
