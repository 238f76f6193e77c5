"""K fields of one shape as one module: stacked parameters, one batched pass per layer.

A single fit is K = 1 of the same module. ``Members(fields)`` reads K fields built as
single fits build them (``nfit.api.build_task_field`` with each member's seed) and holds
their trainable state stacked along a leading member axis:

    network (MLP, SIREN, the sum readout):  W_l (K, in, out), b_l (K, 1, out)
        h_l = act(baddbmm(b_l, h_{l-1}, W_l)),  act = ReLU (MLP) or sin(omega0 .) (SIREN)
    fixed encodings (Fourier features):    no parameters; each member's own gamma_k,
        applied once to fixed coordinates and cached by the trainer as (K, N, F) features
    hash and dense grids:                  one table (T, K, F) shared by the members' layout
        (their specs agree; only the seeds differ), so one gather serves every member
    any other learned encoding (MulFAGrid): the members' own modules, run one after another
        inside the same step (its fast path is hand-written autograd that ``torch.func.vmap``
        cannot batch)

The loss is the sum over members of each member's own mean loss, so the gradient of
member k's parameters is exactly its single fit's, and Adam, elementwise, over stacked
tensors is K independent Adams. ``write_back`` copies the trained values into the K fields,
which are plain fields again (checkpoints, rendering, the kernel lens read those).

Grid lookups: the cell geometry of a point (corner rows and d-linear weights, the costly
part) depends on the coordinates and the level layout only, not on the table, so
``prepare`` computes it once for fixed coordinates (a full-batch fit reuses it every step)
and once per step for drawn ones. With coordinates shared by the members, a corner's K*F
values are one contiguous row of the (T, K*F) table; with one set of coordinates per
member, rows of the (T*K, F) view are addressed as index*K + k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nfit.encodings import Encoding
from nfit.errors import UsageError
from nfit.field import Field
from nfit.grids import DenseGrid, HashGrid, MultiResolutionGrid
from nfit.networks import MLP, SumReadout

#: Encode fixed coordinates in chunks of this many points (bounded temporary memory).
ENCODE_CHUNK = 1 << 16


class StackedNetwork(nn.Module):
    """K networks of one spec (MLP, SIREN or the sum readout) as stacked parameters.

    weights[l]: (K, in_l, out_l) (the transpose of ``nn.Linear.weight``), biases[l]: (K, 1, out_l).
    features: (K, n, in_dim)  ->  (K, n, out_dim)
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        first = networks[0]
        spec = first.spec()  # type: ignore[operator]
        for net in networks:
            if type(net) is not type(first) or net.spec() != spec:  # type: ignore[operator]
                raise ValueError("stacked members need networks of one type and spec")
        self.k = len(networks)
        self.template = [first]  # a list: the activation's owner, not a submodule
        self.readout: torch.Tensor | None = None
        if isinstance(first, SumReadout):
            self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
            self.readout = first.readout
            return
        if not isinstance(first, MLP):
            raise UsageError(f"model {type(first).__name__!r} cannot be trained by nfit's loop")
        layers = [[layer for layer in net.layers if isinstance(layer, nn.Linear)]  # type: ignore[union-attr]
                  for net in networks]
        depth = len(layers[0])
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m[i].weight.detach().T for m in layers]).contiguous())
            for i in range(depth))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([m[i].bias.detach()[None] for m in layers]).contiguous())
            for i in range(depth))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.readout is not None:
            return features @ self.readout.to(features.device, features.dtype)
        net = self.template[0]
        h = features
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = net.activation(h)  # type: ignore[operator]
        return net.finish(h)  # type: ignore[operator]

    def write_back(self, networks: Sequence[nn.Module]) -> None:
        with torch.no_grad():
            for k, net in enumerate(networks):
                linears = [layer for layer in getattr(net, "layers", []) if isinstance(layer, nn.Linear)]
                for i, layer in enumerate(linears):
                    layer.weight.copy_(self.weights[i][k].T)
                    layer.bias.copy_(self.biases[i][k, 0])


class FixedFeatures(nn.Module):
    """Members whose encodings have no parameters: gamma_k applied outside the graph.

    ``prepare(x)``: x (n, d) shared or (K, n, d) -> (K, n, F) features in ``dtype``;
    ``forward`` passes prepared features through.
    """

    fixed = True

    def __init__(self, encodings: Sequence[Encoding]) -> None:
        super().__init__()
        self.encodings = list(encodings)  # owned by their fields; buffers only
        self.out_dim = encodings[0].out_dim

    def prepare(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # fp32 even inside an autocast region: a bf16 projection 2 pi B x loses the phase
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            if x.ndim == 2:
                # filled in place: a (K, N, F) cache of a whole photograph is gigabytes, and
                # stacking concatenated chunks would hold it twice
                out = torch.empty(len(self.encodings), len(x), self.out_dim, dtype=dtype, device=x.device)
                for k, e in enumerate(self.encodings):
                    for i in range(0, len(x), ENCODE_CHUNK):
                        out[k, i:i + ENCODE_CHUNK] = e(x[i:i + ENCODE_CHUNK])
                return out
            return torch.stack([e(xk).to(dtype) for e, xk in zip(self.encodings, x, strict=True)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def param_groups(self, cfg: Any) -> list[dict[str, Any]]:
        return []

    def write_back(self, encodings: Sequence[Encoding]) -> None:
        pass

    def point_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of the cached inputs of one point for all members."""
        return len(self.encodings) * self.out_dim * torch.finfo(dtype).bits // 8


@dataclass
class GridInput:
    """Cell geometry of n points: index (n, L, C) rows (shared coordinates) or (K, n, L, C)
    rows of the (T*K, F) view (one set per member); weight of the same shape."""

    index: torch.Tensor
    weight: torch.Tensor
    shared: bool


class _StackedLookup(torch.autograd.Function):
    """sum_c weight * table[index] for K members at once; gradients for the table only."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                shared: bool) -> torch.Tensor:
        t, k, f = table.shape
        corners = index.shape[-1]
        w = weight.reshape(-1, corners).to(table.dtype)
        if shared:
            n, levels = index.shape[:2]
            out = F.embedding_bag(index.reshape(-1, corners), table.view(t, k * f), mode="sum",
                                  per_sample_weights=w)
            out = out.view(n, levels, k, f).permute(2, 0, 1, 3).reshape(k, n, levels * f)
        else:
            n, levels = index.shape[1:3]
            out = F.embedding_bag(index.reshape(-1, corners), table.view(t * k, f), mode="sum",
                                  per_sample_weights=w).view(k, n, levels * f)
        ctx.save_for_backward(index, weight)
        ctx.shared, ctx.shape = shared, table.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, weight = ctx.saved_tensors
        t, k, f = ctx.shape
        grad = grad.float()
        if ctx.shared:
            n, levels = index.shape[:2]
            g = grad.view(k, n, levels, f).permute(1, 2, 0, 3).reshape(n, levels, 1, k * f)
            rows = (g * weight[..., None]).reshape(-1, k * f)
            table = torch.zeros(t, k * f, dtype=torch.float32, device=grad.device)
        else:
            n, levels = index.shape[1:3]
            rows = (grad.view(k, n, levels, 1, f) * weight[..., None]).reshape(-1, f)
            table = torch.zeros(t * k, f, dtype=torch.float32, device=grad.device)
        table.index_add_(0, index.reshape(-1), rows)
        return table.view(t, k, f), None, None, None


class StackedGrid(nn.Module):
    """K hash or dense grids of one layout: one (T, K, F) table, geometry shared."""

    fixed = False

    def __init__(self, grids: Sequence[MultiResolutionGrid]) -> None:
        super().__init__()
        self.layout = [grids[0]]  # geometry only; a list so its own table is not registered
        self.k, self.out_dim = len(grids), grids[0].out_dim
        self.table = nn.Parameter(torch.stack([g.table.detach() for g in grids], dim=1).contiguous())

    def prepare(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> GridInput:
        grid = self.layout[0]
        with torch.no_grad():
            if x.ndim == 2:
                index, weight, _ = grid.cell_geometry(grid.normalise(x))
                return GridInput(index, weight, True)
            index, weight, _ = grid.cell_geometry(grid.normalise(x.reshape(-1, x.shape[-1])))
            k, n = x.shape[:2]
            member = torch.arange(k, device=x.device).view(k, 1, 1, 1)
            return GridInput(index.view(k, n, *index.shape[1:]) * k + member,
                             weight.view(k, n, *weight.shape[1:]), False)

    def forward(self, inputs: GridInput | torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, GridInput):
            inputs = self.prepare(inputs)
        return _StackedLookup.apply(self.table, inputs.index, inputs.weight, inputs.shared)  # type: ignore[no-any-return]

    def param_groups(self, cfg: Any) -> list[dict[str, Any]]:
        return [{"params": [self.table], **self.layout[0].optimizer_settings(cfg)}]

    def write_back(self, encodings: Sequence[Encoding]) -> None:
        with torch.no_grad():
            for k, grid in enumerate(encodings):
                grid.table.copy_(self.table[:, k])  # type: ignore[operator]

    def point_bytes(self, dtype: torch.dtype) -> int:
        grid = self.layout[0]
        return grid.levels * 2 ** grid.in_dim * (8 + 4)  # int64 rows and fp32 weights


class LoopedEncoding(nn.Module):
    """Members whose learned encoding has no stacked form, run one after another."""

    fixed = False

    def __init__(self, encodings: Sequence[Encoding]) -> None:
        super().__init__()
        self.encodings = nn.ModuleList(encodings)
        self.out_dim = encodings[0].out_dim

    def prepare(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return torch.stack([e(x) for e in self.encodings])
        return torch.stack([e(xk) for e, xk in zip(self.encodings, x, strict=True)])

    def param_groups(self, cfg: Any) -> list[dict[str, Any]]:
        groups = []
        for e in self.encodings:
            params = [p for p in e.parameters() if p.requires_grad]
            settings = getattr(e, "optimizer_settings", None)
            if params:
                groups.append({"params": params, **(settings(cfg) if settings else {})})
        return groups

    def write_back(self, encodings: Sequence[Encoding]) -> None:
        pass  # trained in place

    def point_bytes(self, dtype: torch.dtype) -> int:
        return 0  # coordinates only; nothing is cached


def _stackable_grid(encodings: Sequence[Encoding]) -> bool:
    first = encodings[0]
    return (type(first) in (HashGrid, DenseGrid)
            and all(type(e) is type(first) and e.spec() == first.spec() for e in encodings))


def stack_encodings(encodings: Sequence[Encoding]) -> FixedFeatures | StackedGrid | LoopedEncoding:
    if len({e.out_dim for e in encodings}) != 1:
        raise ValueError("stacked members need encodings of one output size")
    if not any(p.requires_grad for e in encodings for p in e.parameters()):
        return FixedFeatures(encodings)
    if _stackable_grid(encodings):
        return StackedGrid(encodings)  # type: ignore[arg-type]
    return LoopedEncoding(encodings)


def stack_key(fld: Field) -> tuple[Any, ...]:
    """Fields with equal keys can train as members of one stack."""
    enc = fld.encoding
    if not any(p.requires_grad for p in enc.parameters()):
        family: tuple[Any, ...] = ("fixed", enc.out_dim)
    elif _stackable_grid([enc]):
        family = ("grid", type(enc).__name__, tuple(sorted((k, str(v)) for k, v in enc.spec().items())))
    else:
        spec = {k: v for k, v in enc.spec().items() if k != "seed"}
        family = ("looped", type(enc).__name__, tuple(sorted((k, str(v)) for k, v in spec.items())))
    return family + (type(fld.network).__name__, tuple(sorted(fld.network.spec().items())))  # type: ignore[operator]


class Members(nn.Module):
    """K fields as one module: ``prepare`` their inputs, run them, write the result back.

    prepare(x): x (n, d) shared or (K, n, d) -> what ``forward`` reads (features, grid
    geometry or coordinates); forward -> (K, n, out_dim).
    """

    def __init__(self, fields: Sequence[Field]) -> None:
        super().__init__()
        if not fields:
            raise ValueError("at least one member")
        keys = {stack_key(f) for f in fields}
        if len(keys) != 1:
            raise ValueError("stacked members need fields of one shape")
        self.k = len(fields)
        self.encoder = stack_encodings([f.encoding for f in fields])
        self.network = StackedNetwork([f.network for f in fields])

    @property
    def fixed(self) -> bool:
        return self.encoder.fixed

    def prepare(self, x: torch.Tensor, dtype: torch.dtype) -> Any:
        return self.encoder.prepare(x, dtype)

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.network(self.encoder(inputs))

    def forward_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """The members at coords (n, d) or (K, n, d) with the graph through the encoding, so an
        objective can differentiate with respect to the input (an eikonal term). Fourier
        features are computed in fp32 (a bf16 phase would be off by whole radians)."""
        if not isinstance(self.encoder, FixedFeatures):
            raise UsageError("a loss on the field's input gradient (an eikonal term) needs a Fourier-feature "
                             "or plain encoding; grids' lookups are not differentiated with respect to the input")
        with torch.autocast(coords.device.type, enabled=False):
            if coords.ndim == 2:
                features = torch.stack([e(coords) for e in self.encoder.encodings])
            else:
                features = torch.stack([e(xk) for e, xk in zip(self.encoder.encodings, coords, strict=True)])
        return self.network(features)  # type: ignore[no-any-return]

    def param_groups(self, cfg: Any) -> list[dict[str, Any]]:
        """Optimizer groups: an encoding's own settings (grids follow Instant-NGP), then the network."""
        groups = self.encoder.param_groups(cfg)
        rest = [p for p in self.network.parameters() if p.requires_grad]
        return groups + ([{"params": rest}] if rest else [])

    def write_back(self, fields: Sequence[Field]) -> None:
        self.encoder.write_back([f.encoding for f in fields])
        self.network.write_back([f.network for f in fields])

    def point_bytes(self, dtype: torch.dtype) -> int:
        return self.encoder.point_bytes(dtype)
