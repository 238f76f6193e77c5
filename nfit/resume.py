"""The resume state of an unfinished fit: ``DIR/resume.safetensors``.

One safetensors file holds every tensor of a ``FitState`` (weights under ``model/``,
optimizer moments under ``optim/<param>/<key>``, generator states under ``rng/``, the
early-stopping best weights under ``best/``) and,
as JSON in its metadata, everything else: the job (signal kind, input path and its
SHA-256, config, checkpoint interval), the step, the evaluation history and the
optimizer's plain values. One file written atomically means the tensors and the JSON
always belong to the same step. Loading reads the header and JSON first and checks
them; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from nfit import __version__
from nfit.checkpoint import check_format, read_safetensors_header
from nfit.errors import DataError
from nfit.io import atomic_path
from nfit.problem import FitState

RESUME_FILE = "resume.safetensors"
FORMAT = "nfit-resume"
FORMAT_VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_resume(out_dir: Path, state: FitState, job: dict[str, Any]) -> Path:
    """Write ``state`` and ``job`` (JSON-able) to ``out_dir/resume.safetensors`` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in state.model.items()}
    tensors.update({f"rng/{k}": v for k, v in state.rng.items()})
    tensors.update({f"best/{k}": v for k, v in state.best_model.items()})
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state.optimizer["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{index}/{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    body = {"step": state.step, "history": state.history, "elapsed": state.elapsed,
            "param_groups": state.optimizer["param_groups"], "optim_plain": plain}
    if state.best is not None:
        body["best"] = state.best
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "job": json.dumps(job), "state": json.dumps(body),
                "nfit_version": __version__, "torch_version": torch.__version__}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESUME_FILE
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def read_resume_header(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(job, state JSON, tensor table) of a resume file, checked, without reading tensors."""
    raw, table = read_safetensors_header(path, "resume state")
    check_format(path, raw, FORMAT, FORMAT_VERSION, "resume state")
    assert raw is not None
    try:
        job, body = json.loads(raw["job"]), json.loads(raw["state"])
        int(body["step"]), list(body["history"]), list(body["param_groups"])
        str(job["kind"]), dict(job["config"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: resume state metadata is missing or malformed") from None
    return job, body, table


def load_resume(path: Path, expected_model: dict[str, tuple[int, ...]]) -> FitState:
    """Read a resume file into a FitState, refusing tensors that do not fit the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _, body, table = read_resume_header(path)
    found = {k[len("model/"):]: tuple(v["shape"]) for k, v in table.items()
             if k.startswith("model/")}
    best_shapes = {k[len("best/"):]: tuple(v["shape"]) for k, v in table.items() if k.startswith("best/")}
    if found != expected_model or any(expected_model.get(k) != v for k, v in best_shapes.items()):
        raise DataError(f"{path}: resume state does not match the model its config describes")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: cannot read resume state tensors ({exc})") from None
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    rng = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    best_model = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
    best = body.get("best")
    if best is not None:
        try:
            best = {"steps": [float(v) for v in best["steps"]], "values": [float(v) for v in best["values"]]}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: resume state's early-stopping record is malformed") from None
    if "sampler" not in rng or "torch_cpu" not in rng:
        raise DataError(f"{path}: resume state lacks its generator states")
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim_state.setdefault(int(index), {})[name] = value
    for index, entry in body.get("optim_plain", {}).items():
        optim_state.setdefault(int(index), {}).update(entry)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g)
              for g in body["param_groups"]]
    return FitState(int(body["step"]), model, {"state": optim_state, "param_groups": groups},
                    rng, [dict(r) for r in body["history"]], float(body.get("elapsed", 0.0)),
                    best, best_model)
