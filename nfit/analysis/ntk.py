"""The empirical tangent kernel of a field: K_ij = <df(x_i)/dtheta, df(x_j)/dtheta>.

``ntk = make_ntk_fn(field)`` then ``ntk(x1, x2) -> (N1, N2)`` float64, in the style of
neural-tangents' ``empirical_ntk_fn``. theta is every parameter of the field with
``requires_grad`` (network weights, and a grid encoding's tables when the encoding is
trainable, which makes the same quantity the grid tangent kernel of Zhao et al. 2024).

Outputs. A field with C outputs (RGB) has a (C x C) block of kernels per pair of points.
``output="mean"`` (the default) returns the trace over outputs divided by C,

    K(x, x') = (1/C) sum_c <df_c(x)/dtheta, df_c(x')/dtheta>,

which is what the predictions in ``nfit.analysis.predict`` use for every channel: at
infinite width the block is K (x) I_C, and at finite width the off-diagonal blocks
(the outputs share the hidden layers but have independent last-layer rows) are
O(1/sqrt(width)) relative to the diagonal. ``output=c`` (an int) gives output c's kernel.

Implementations (the trade-off, as in neural-tangents' ``NtkImplementation``):

- ``"structured"`` (default): for every ``nn.Linear`` module y = W a + b the Jacobian
  factorises, df/dW = delta a^T with delta = df/dy, so its contribution is
  (delta(x) . delta(x')) (a(x) . a(x') + 1) and never materialises df/dW. It costs C
  backward passes over the points plus, per layer, N1 N2 (n_in + C n_out) multiply-adds;
  memory O(N (sum of layer widths) C). 2048 points of the default 4x256 field: about
  30 GFLOP. Parameters outside ``nn.Linear`` modules (grid tables, anything else) go
  through the ``"jacobian"`` route below and are added in.
- ``"jacobian"``: dense per-point Jacobians from ``torch.func.jacrev``, K = J1 J2^T, in
  chunks whose Jacobian stays under ``memory_bytes``. Time O(N1 N2 P C) for P
  parameters: fine for small nets and tests (it is the reference the structured path is
  checked against), slow for big ones (2048 points of the default field: ~6.6 TFLOP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

Output = Literal["mean"] | int
NtkFn = Callable[..., torch.Tensor]

#: points per forward pass when collecting activations (memory is O(chunk * widths))
DEFAULT_CHUNK = 4096
#: cap on one dense Jacobian block in the "jacobian" route
DEFAULT_MEMORY = 512 << 20


def trainable_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter for every parameter of ``module`` that requires grad."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _output_indices(out_dim: int, output: Output) -> list[int]:
    if output == "mean":
        return list(range(out_dim))
    if isinstance(output, int) and 0 <= output < out_dim:
        return [output]
    raise ValueError(f"output must be 'mean' or an index below {out_dim}, got {output!r}")


class _LinearFactors:
    """Per-point factors of every ``nn.Linear`` of a module: inputs a and output grads delta.

    ``collect(x)`` runs one forward pass and one backward pass per output index and
    returns, per layer, (a: (N, n_in) with a ones column when the layer has a bias,
    deltas: (n_outputs, N, n_out)). Layers that do not see exactly one (N, n_in) input
    per forward (weight sharing, extra batch dims) are reported as ``unsupported``
    and left to the dense route.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.linears = {name: m for name, m in module.named_modules()
                        if isinstance(m, nn.Linear) and m.weight.requires_grad}

    def probe(self, x: torch.Tensor) -> set[str]:
        """Names of Linear modules whose per-point factorisation holds for inputs like x."""
        calls: dict[str, list[tuple[int, ...]]] = {name: [] for name in self.linears}
        handles = [m.register_forward_hook(
            lambda mod, inp, out, name=name: calls[name].append(tuple(inp[0].shape)))
            for name, m in self.linears.items()]
        try:
            with torch.no_grad():
                self.module(x[:2])
        finally:
            for h in handles:
                h.remove()
        ok = set()
        for name, shapes in calls.items():
            bias = self.linears[name].bias
            if len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][0] == min(len(x), 2) \
                    and (bias is None or bias.requires_grad):
                ok.add(name)
        return ok

    def collect(self, x: torch.Tensor, names: set[str], outputs: list[int]
                ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        inputs: dict[str, torch.Tensor] = {}
        results: dict[str, torch.Tensor] = {}

        def hook(mod, inp, out, name):
            inputs[name] = inp[0].detach()
            results[name] = out
            return out

        handles = [self.linears[n].register_forward_hook(
            lambda mod, inp, out, name=n: hook(mod, inp, out, name)) for n in names]
        try:
            with torch.enable_grad():
                f = self.module(x)
                order = list(names)
                zs = [results[n] for n in order]
                deltas: dict[str, list[torch.Tensor]] = {n: [] for n in order}
                for k, c in enumerate(outputs):
                    # Points are independent (no batch-coupling layers in a field), so the
                    # gradient of the sum over points is every point's own gradient.
                    grads = torch.autograd.grad(f[:, c].sum(), zs,
                                                retain_graph=k < len(outputs) - 1,
                                                allow_unused=True)
                    for n, z, g in zip(order, zs, grads, strict=True):
                        deltas[n].append(torch.zeros_like(z) if g is None else g.detach())
        finally:
            for h in handles:
                h.remove()
        factors = {}
        for n in order:
            a = inputs[n]
            if self.linears[n].bias is not None:
                a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
            factors[n] = (a, torch.stack(deltas[n]))
        return factors


def _dense_kernel(module: nn.Module, names: list[str], x1: torch.Tensor, x2: torch.Tensor,
                  outputs: list[int], memory_bytes: int) -> torch.Tensor:
    """sum over the named parameters and the chosen outputs of J1 J2^T, float64 (N1, N2)."""
    params = trainable_parameters(module)
    others = {k: v.detach() for k, v in params.items() if k not in names}
    chosen = {k: params[k].detach() for k in names}
    n_params = sum(p.numel() for p in chosen.values())
    out_dim = len(outputs)
    chunk = max(1, int(memory_bytes // max(1, 4 * n_params * out_dim)))
    index = torch.tensor(outputs, device=x1.device)

    def one_point(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {**others, **p}, (x[None],))[0, index]

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        # Per-point Jacobians, vmapped over the points: memory O(n C (P + one point's
        # activations)). jacrev of the whole chunk would instead back-propagate each of the
        # n C outputs through all n points' activations, O(n^2), which a grid's per-corner
        # lookups turn into hundreds of GB.
        jac = vmap(jacrev(one_point), in_dims=(None, 0))(chosen, x)  # name -> (n, C, *shape)
        return torch.cat([j.reshape(len(x), out_dim, -1) for j in jac.values()], dim=2)

    kernel = torch.zeros(len(x1), len(x2), dtype=torch.float64, device=x1.device)
    for i in range(0, len(x1), chunk):
        j1 = jacobian(x1[i:i + chunk])
        same = x2 is x1
        for j in range(0, len(x2), chunk):
            j2 = j1 if same and j == i else jacobian(x2[j:j + chunk])
            block = torch.einsum("acp,bcp->ab", j1, j2)
            kernel[i:i + len(j1), j:j + len(j2)] += block.double()
    return kernel


def make_ntk_fn(module: nn.Module, *, output: Output = "mean",
                implementation: Literal["structured", "jacobian"] = "structured",
                chunk: int = DEFAULT_CHUNK, memory_bytes: int = DEFAULT_MEMORY) -> NtkFn:
    """A function ``ntk(x1, x2=None) -> (N1, N2)`` float64: the tangent kernel of ``module``.

    module: maps (N, d) coordinates to (N, C) outputs (a ``Field``, or any per-point
    module); its current parameter values are read at each call, so calling ``ntk``
    again after training gives K(t). x1: (N1, d); x2: (N2, d), or None for x1 (then
    the result is symmetrised exactly). ``output`` and ``implementation``: see the module
    docstring. The result is divided by the number of outputs traced over (``"mean"``).
    """
    if implementation not in ("structured", "jacobian"):
        raise ValueError(f"unknown implementation {implementation!r}")

    def ntk(x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        symmetric = x2 is None
        x2_ = x1 if x2 is None else x2
        with torch.no_grad():
            out_dim = module(x1[:1]).shape[-1]
        outputs = _output_indices(out_dim, output)
        params = trainable_parameters(module)
        names_linear: set[str] = set()
        factors = _LinearFactors(module)
        if implementation == "structured":
            names_linear = factors.probe(x1)
        linear_params = {f"{n}.weight" for n in names_linear} | \
            {f"{n}.bias" for n in names_linear if factors.linears[n].bias is not None}
        rest = [k for k in params if k not in linear_params]

        kernel = torch.zeros(len(x1), len(x2_), dtype=torch.float64, device=x1.device)
        if names_linear:
            def gather(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
                parts = [factors.collect(x[i:i + chunk], names_linear, outputs)
                         for i in range(0, len(x), chunk)]
                return {n: (torch.cat([p[n][0] for p in parts]), torch.cat([p[n][1] for p in parts],
                                                                          dim=1))
                        for n in names_linear}

            f1 = gather(x1)
            f2 = f1 if x2 is None else gather(x2_)
            for n in names_linear:
                a1, d1 = f1[n]
                a2, d2 = f2[n]
                # <dF/dW(x), dF/dW(x')> = (delta . delta')(a . a'), summed over outputs.
                deltas = torch.einsum("cip,cjp->ij", d1, d2)
                kernel += (deltas * (a1 @ a2.T)).double()
        if rest:
            kernel += _dense_kernel(module, rest, x1, x1 if symmetric else x2_, outputs,
                                    memory_bytes)
        kernel /= len(outputs)
        if symmetric:
            kernel = 0.5 * (kernel + kernel.T)
        return kernel

    return ntk
