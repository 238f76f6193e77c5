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
#: 2: ``posenc`` is the paper's encoding; version 1's ``posenc`` (sigma^(j/m)) is now
#: ``geoposenc``, and ``migrate`` renames it on load
FORMAT_VERSION = 2


#: --store: the dtype the weights are written in (loading converts back to fp32)
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def stored_tensors(fld: Field, store: str = "fp32") -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds: trainable weights in the ``store`` dtype; buffers (a
    random frequency matrix, whose rounding would move every feature's phase) as they are."""
    weights = {name for name, p in fld.named_parameters() if p.is_floating_point()}
    dtype = STORE_DTYPES[store]
    return {k: (v.detach().to("cpu", dtype) if k in weights else v.detach().to("cpu")).contiguous()
            for k, v in fld.state_dict().items()}


def tensor_bits(tensors: dict[str, torch.Tensor]) -> int:
    """Bits of the tensors' values (what bits per pixel counts; the JSON header aside)."""
    return sum(t.numel() * t.element_size() * 8 for t in tensors.values())


def save_checkpoint(path: Path, fld: Field, *, signal: dict[str, Any], config: dict[str, Any],
                    metrics: dict[str, Any] | None = None, store: str = "fp32") -> int:
    """Write ``fld``'s tensors and the JSON needed to rebuild and render it; returns the
    bits of the stored tensors."""
    from safetensors.torch import save_file

    tensors = stored_tensors(fld, store)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "field": json.dumps(fld.spec()),
        "signal": json.dumps(signal),
        "config": json.dumps(config),
        "metrics": json.dumps(metrics or {}),
        "nfit_version": __version__,
        "torch_version": torch.__version__,
        "store": store,
    }
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return tensor_bits(tensors)


def read_safetensors_header(path: Path, what: str = "checkpoint"
                            ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(raw string metadata or None, tensor table) of a safetensors file, checked for
    structure (header length, JSON, offsets that add up to the file size) without
    reading any tensor data."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such {what}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the model.safetensors inside it")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: not a safetensors {what} (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise DataError(f"{path}: not a safetensors {what} (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"{path}: not a safetensors {what} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: not a safetensors {what} (bad header)")
    meta = header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            shape = [int(v) for v in info["shape"]]
            str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: tensor {name!r} has a malformed entry") from None
        if not 0 <= begin <= stop or min(shape, default=0) < 0:
            raise DataError(f"{path}: tensor {name!r} has a malformed entry")
        end = max(end, stop)
    if 8 + n + end != size:
        raise DataError(f"{path}: {what} is truncated or padded ({size} bytes, "
                        f"header describes {8 + n + end})")
    return (meta if isinstance(meta, dict) else None), header


def check_format(path: Path, meta: dict[str, Any] | None, fmt: str, version: int,
                 what: str) -> int:
    """Refuse metadata of another format or of a newer version; return the version."""
    if meta is None or meta.get("format") != fmt:
        raise DataError(f"{path}: not an nfit {what} (metadata missing)")
    try:
        found = int(meta.get("format_version", ""))
    except ValueError:
        raise DataError(f"{path}: {what} format version is missing or invalid") from None
    if found > version:
        raise DataError(f"{path}: {what} format {found} is newer than this nfit "
                        f"({__version__}) reads (format {version}); upgrade nfit")
    return found


def migrate(parsed: dict[str, Any], version: int) -> dict[str, Any]:
    """Metadata of an older format in this version's terms (the tensors need no change)."""
    if version < 2:
        encoding = parsed["field"].get("encoding")
        if isinstance(encoding, dict) and encoding.get("type") == "posenc":
            parsed["field"]["encoding"] = {**encoding, "type": "geoposenc"}
        if parsed["config"].get("encoding") == "posenc":
            parsed["config"]["encoding"] = "geoposenc"
    return parsed


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensor table) from the safetensors header, checked, without reading tensors."""
    raw, header = read_safetensors_header(path)
    version = check_format(path, raw, FORMAT, FORMAT_VERSION, "checkpoint")
    assert raw is not None
    parsed: dict[str, Any] = dict(raw)
    for key in ("field", "signal", "config", "metrics"):
        try:
            parsed[key] = json.loads(raw[key])
        except (KeyError, TypeError, json.JSONDecodeError):
            raise DataError(f"{path}: checkpoint metadata {key!r} is missing or not JSON") from None
        if not isinstance(parsed[key], dict):
            raise DataError(f"{path}: checkpoint metadata {key!r} is not a JSON object")
    return migrate(parsed, version), header


def expected_shapes(path: Path, spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the field ``spec`` describes, built on the meta device: no memory
    is allocated, so a tampered config cannot make this step expensive."""
    try:
        with torch.device("meta"):
            fld = build_field(spec)
    except Exception as exc:
        raise DataError(f"{path}: checkpoint config does not describe a valid field "
                        f"({exc})") from None
    return {k: tuple(v.shape) for k, v in fld.state_dict().items()}


def check_shapes(path: Path, expected: dict[str, tuple[int, ...]], table: dict[str, Any]) -> None:
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


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[Field, dict[str, Any]]:
    """Rebuild the field from its config and load its tensors; return (field, metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta, table = read_header(path)
    check_shapes(path, expected_shapes(path, meta["field"]), table)
    fld = build_field(meta["field"])
    try:
        tensors = load_file(str(path))
        fld.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot read checkpoint tensors ({exc})") from None
    fld.to(device).eval()
    return fld, meta
