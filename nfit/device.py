"""Choosing the device and the arithmetic precision."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from nfit.errors import UsageError

#: Rows of one CPU slice, over all members (``slice_rows``).
CPU_STEP_CHUNK = 8192
#: Points per chunk on a GPU (a training slice of one member, a scoring or rendering chunk).
EVAL_CHUNK = 1 << 16
#: ``NFIT_CPU_BF16=0`` treats this CPU as one without fast bf16: ``--precision auto`` picks
#: fp32 and the benchmarks skip bf16, as on an AVX2-only CPU (to check that path on a CPU
#: that has AMX).
CPU_BF16_ENV = "NFIT_CPU_BF16"


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then the CPU. Asking for an absent device is a usage error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: no Apple GPU is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown --device {name!r}")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when oneDNN's bf16 matmuls outrun fp32 on this CPU: Intel with AMX tiles, or
    AMD with AVX512-BF16 (Zen 4: bf16 matmul peak 414 GFLOP/s, the bf16 step 2.9-3.7x the
    plain loop). AVX512-BF16 alone is not enough on Intel: a 2-core Xeon with it and without
    AMX measured a bf16 peak of 138 GFLOP/s against 240 in fp32, and the paper protocol's
    step 0.79 s in bf16 against 0.57 s in fp32 (``python bench/bench_fit.py --quick``).
    False when ``NFIT_CPU_BF16=0`` (``CPU_BF16_ENV``)."""
    if os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("0", "no", "off", "false"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or ("AuthenticAMD" in flags and "avx512_bf16" in flags)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs where
    bf16 matmuls outrun fp32: see ``cpu_has_fast_bf16``), else fp32 (TF32 matmuls on CUDA).
    The master weights, the loss and all reported metrics stay fp32; ``make bench`` shows
    the PSNR cost of bf16 (a few hundredths of a dB on the paper protocol)."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "tf32"
        if device.type == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if name == "tf32" and device.type != "cuda":
        raise UsageError("--precision tf32 needs a CUDA device")
    return name


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a precision computes and caches features in: bf16, else fp32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: torch.device, precision: str):
    """The autocast context for the forward pass of a fit."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_matmul(device: torch.device, precision: str) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision in ("tf32", "bf16")
        torch.backends.cudnn.allow_tf32 = precision in ("tf32", "bf16")


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


def eval_chunk(device: torch.device) -> int:
    """Points per chunk when evaluating a trained field (``predict``, renders): one CPU
    slice, which the allocator reuses from chunk to chunk, or ``EVAL_CHUNK`` elsewhere."""
    return CPU_STEP_CHUNK if device.type == "cpu" else EVAL_CHUNK


#: The whole-grid step of an operator objective keeps every slice's graph (one forward
#: pass) while they fit in this many bytes, and above it recomputes each slice with a
#: graph (two forward passes, one slice's graph at a time). A fixed figure, not the free
#: memory, so a fit takes the same path on every machine.
GRID_GRAPH_BYTES = 2 << 30


def graph_bytes_per_row(width: int, depth: int, features: int, channels: int) -> int:
    """Bytes one input row's activations and their gradients hold in a training step
    (fp32 bound): 5 W per hidden layer, twice the features, 4 per output channel."""
    return (5 * width * max(depth - 1, 0) + 2 * features + 4 * channels) * 4


def keep_grid_graphs(points: int, k: int, width: int, depth: int, features: int, channels: int) -> bool:
    """Whether a whole-grid step of K members on ``points`` keeps every slice's graph."""
    return points * k * graph_bytes_per_row(width, depth, features, channels) <= GRID_GRAPH_BYTES
