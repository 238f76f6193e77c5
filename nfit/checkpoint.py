"""Checkpoints: weights and buffers in safetensors, everything else as JSON in its metadata.

Loading reads the safetensors header and JSON only; nothing is ever unpickled. A file
whose metadata is missing, from a newer format, truncated, or whose tensors do not
match the architecture its config describes is refused with one clear line.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from nfit import __version__
from nfit.errors import DataError
from nfit.field import Field, build_field
from nfit.io import atomic_path

FORMAT = "nfit-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, fld: Field, *, signal: dict[str, Any], config: dict[str, Any],
                    metrics: dict[str, Any] | None = None) -> None:
    """Write ``fld``'s tensors and the JSON needed to rebuild and render it."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in fld.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "field": json.dumps(fld.spec()),
        "signal": json.dumps(signal),
        "config": json.dumps(config),
        "metrics": json.dumps(metrics or {}),
        "nfit_version": __version__,
        "torch_version": torch.__version__,
    }
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensor table) from the safetensors header, checked, without reading tensors."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the model.safetensors inside it")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: not a safetensors checkpoint (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise DataError(f"{path}: not a safetensors checkpoint (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"{path}: not a safetensors checkpoint (header is not JSON)") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: not a safetensors checkpoint (bad header)")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an nfit checkpoint (metadata missing)")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise DataError(f"{path}: checkpoint format version is missing or invalid") from None
    if version > FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format {version} is newer than this nfit "
                        f"({__version__}) reads (format {FORMAT_VERSION}); upgrade nfit")
    parsed: dict[str, Any] = dict(meta)
    for key in ("field", "signal", "config", "metrics"):
        try:
            parsed[key] = json.loads(meta[key])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise DataError(f"{path}: checkpoint metadata {key!r} is missing or not JSON") from None
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: tensor {name!r} has a malformed entry") from None
        end = max(end, int(stop))
    if 8 + n + end != size:
        raise DataError(f"{path}: checkpoint is truncated or padded ({size} bytes, "
                        f"header describes {8 + n + end})")
    return parsed, header


def validate_checkpoint(path: Path) -> tuple[Field, dict[str, Any], dict[str, Any]]:
    """Check a checkpoint without reading its tensors: header, metadata, and every tensor's
    shape against the architecture its config describes. Returns (an untrained field of
    that architecture on the CPU, metadata, tensor table)."""
    meta, table = read_header(path)
    try:
        fld = build_field(meta["field"])
    except Exception as exc:
        raise DataError(f"{path}: checkpoint config does not describe a valid field ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in fld.state_dict().items()}
    found = {k: tuple(v["shape"]) for k, v in table.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        extra = sorted(set(found) - set(expected))
        detail = "; ".join(s for s in (
            f"missing {missing[:3]}" if missing else "",
            f"shape mismatch in {wrong[:3]}" if wrong else "",
            f"unexpected {extra[:3]}" if extra else "") if s)
        raise DataError(f"{path}: tensors do not match the checkpoint's config ({detail})")
    return fld, meta, table


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[Field, dict[str, Any]]:
    """Rebuild the field from its config and load its tensors; return (field, metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    fld, meta, _ = validate_checkpoint(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: cannot read checkpoint tensors ({exc})") from None
    fld.load_state_dict(tensors, strict=True)
    fld.to(device).eval()
    return fld, meta
