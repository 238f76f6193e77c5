"""Atomic file writes and output-directory handling.

Every file nfit produces goes through ``atomic_write_bytes`` (or ``atomic_path``):
written to a hidden temporary name in the destination directory, flushed, then
renamed over the target, so a killed job leaves the previous complete file or none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nfit.errors import UsageError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the format);
    on success it is renamed over ``path``, on error removed."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600, and some writers (safetensors) recreate the file with their
        # own mode: give the result the permissions a plain open() would, under the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so the JSON is valid everywhere."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def check_output_file(path: Path, allowed: tuple[str, ...], refused: dict[str, str] | None = None) -> Path:
    """Validate an output file path before any work: extension known (``refused``: extensions
    that get their own reason, such as a lossy format for a field's exact values), parent
    writable."""
    path = Path(path)
    if refused and path.suffix.lower() in refused:
        raise UsageError(f"{path}: {refused[path.suffix.lower()]}")
    if path.suffix.lower() not in allowed and "".join(path.suffixes[-2:]).lower() not in allowed:
        raise UsageError(f"unsupported output extension {''.join(path.suffixes) or '(none)'!r} "
                         f"for {path}; use one of: {', '.join(allowed)}")
    if path.is_dir():
        raise UsageError(f"output {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a directory")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write {path}: {probe} is not writable")
    return path


def resolve_out_dir(out: Path | None, default: Path, force: bool) -> Path:
    """Decide the output directory before any work, without creating it.

    An explicit ``--out`` that exists and is not empty is refused unless ``--force``;
    the default directory instead moves to the next free name (runs/photo-2, ...), so
    repeated runs never overwrite each other silently.
    """
    if out is None:
        candidate, n = default, 1
        while candidate.exists() and any(candidate.iterdir()):
            n += 1
            candidate = default.with_name(f"{default.name}-{n}")
        out = candidate
    else:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is a file, not a directory")
        if out.exists() and any(out.iterdir()) and not force:
            raise UsageError(f"--out {out} already holds results; pass --force to overwrite them")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create --out {out}: {probe} is a file")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"cannot create --out {out}: {probe} is not writable")
    return out
