"""Reliability: interruption and resume, determinism, no partial outputs, safe checkpoints,
hostile inputs (a committed corpus and a fuzzer), the memory guard, divergence, and
output formats. Interruptions use real processes and real signals."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from nfit.checkpoint import save_checkpoint
from nfit.cli import app
from nfit.errors import DataError, UsageError
from nfit.field import build_field
from nfit.formats.images import read_image, write_image
from nfit.memory import parse_memory
from nfit.resume import RESUME_FILE, read_resume_header

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
STEPS = 600
# Small and CPU-only, with random minibatches so the sampling generator matters on resume.
FIT = ["--steps", str(STEPS), "--width", "16", "--features", "16", "--depth", "2",
       "--split", "all", "--batch", "64", "--eval-every", "50", "--device", "cpu",
       "--precision", "fp32", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def registered(command: str) -> bool:
    """Whether `nfit COMMAND` exists in this build (other signal kinds arrive separately)."""
    return any((c.name or c.callback.__name__.replace("_", "-")) == command
               for c in app.registered_commands if c.callback is not None)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = tensors(a / "model.safetensors"), tensors(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key} differs"
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"]
    assert ra["steps"] == rb["steps"] == STEPS
    # The learning curves agree too, but for the last column (wall time).
    curves = [[row.rsplit(",", 1)[0] for row in (d / "curve.csv").read_text().splitlines()]
              for d in (a, b)]
    assert curves[0] == curves[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A 16x16 smooth RGB PNG."""
    y, x = np.mgrid[0:16, 0:16] / 16.0
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * x), 0.5 + 0.4 * np.cos(2 * np.pi * y),
                    0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
    path = tmp_path_factory.mktemp("img") / "tiny.png"
    write_image(path, img)
    return path


@pytest.fixture(scope="module")
def reference(image, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = cli("image", image, *FIT, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


def start_and_signal(image: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Run `nfit image` in a process, wait for its first periodic checkpoint (so training
    has started), send ``sig``, and return the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "nfit", "image", str(image), *FIT,
                             "--checkpoint-every", "5", "--out", str(out)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (out / RESUME_FILE).exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def visible_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --- interruption and resume ---------------------------------------------------------

def test_sigint_saves_state_and_nfit_resume_is_bit_identical(image, reference, tmp_path):
    out = tmp_path / "run"
    done = start_and_signal(image, out, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert "interrupted by SIGINT at step" in done.stderr and f"nfit resume {out}" in done.stderr
    assert "Traceback" not in done.stderr
    # Until the fit completes the directory holds only the resume state: no partial outputs.
    assert visible_files(out) == {RESUME_FILE}
    job, body, _ = read_resume_header(out / RESUME_FILE)
    assert 5 <= body["step"] < STEPS and job["kind"] == "image"

    # A new run into the same directory must choose: --resume or --force.
    again = cli("image", image, *FIT, "--out", out)
    assert again.exit_code == 2 and "--resume" in again.stderr and "--force" in again.stderr
    changed = cli("image", image, *FIT, "--lr", "0.01", "--out", out, "--resume")
    assert changed.exit_code == 2 and "lr" in changed.stderr

    # A resume state from a newer nfit is refused, like a checkpoint.
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / RESUME_FILE).write_bytes((out / RESUME_FILE).read_bytes())
    rewrite_header(newer / RESUME_FILE, lambda h: h["__metadata__"].update(format_version="7"))
    refused = cli("resume", newer)
    assert refused.exit_code == 1 and "newer than this nfit" in refused.stderr

    resumed = cli("resume", out)
    assert resumed.exit_code == 0, resumed.stderr
    assert RESUME_FILE not in visible_files(out)
    assert_identical(out, reference)


def test_sigterm_then_image_resume_flag_is_bit_identical(image, reference, tmp_path):
    out = tmp_path / "run"
    done = start_and_signal(image, out, signal.SIGTERM)
    assert done.returncode == 143, done.stderr
    assert "interrupted by SIGTERM" in done.stderr
    assert visible_files(out) == {RESUME_FILE}
    resumed = cli("image", image, *FIT, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert_identical(out, reference)
    complete = cli("image", image, *FIT, "--out", out, "--resume")
    assert complete.exit_code == 2 and "already complete" in complete.stderr


def test_sigkill_loses_at_most_the_checkpoint_interval(image, reference, tmp_path):
    out = tmp_path / "run"
    done = start_and_signal(image, out, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    # Whatever moment the kill hit, the state file is complete (maybe a hidden temporary beside it).
    assert {p for p in visible_files(out) if not p.startswith(".")} == {RESUME_FILE}
    _, body, _ = read_resume_header(out / RESUME_FILE)
    assert body["step"] % 5 == 0
    resumed = cli("resume", out)
    assert resumed.exit_code == 0, resumed.stderr
    assert visible_files(out) == set(json.loads((out / "report.json").read_text())["files"])
    assert_identical(out, reference)


# --- determinism and output directories ----------------------------------------------

def test_same_seed_same_weights_and_versioned_default_out(image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["image", image, *FIT[:1], "40", *FIT[2:], "--max-memory", "1G"]
    for _ in range(2):
        assert cli(*args).exit_code == 0
    first, second = tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny-2"
    assert first.is_dir() and second.is_dir()  # the default directory is versioned, not overwritten
    a, b = tensors(first / "model.safetensors"), tensors(second / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    report = [json.loads((d / "report.json").read_text())["metrics"] for d in (first, second)]
    assert report[0] == report[1]
    assert cli(*args, "--seed", "1").exit_code == 0
    c = tensors(tmp_path / "runs" / "tiny-3" / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    refused = cli(*args, "--out", first)
    assert refused.exit_code == 2 and "--force" in refused.stderr


def test_every_writer_goes_through_an_atomic_helper():
    """Audit: a call that writes a file must write a temporary (``tmp``) or a buffer."""
    writer = re.compile(r"\.write_bytes\(|\.write_text\(|save_file\(|imwrite\(|savefig\(|"
                        r"\.save\(|\.export\(|np\.save\(|open\([^)]*['\"][wa]b?['\"]")
    offenders = []
    for path in (ROOT / "nfit").rglob("*.py"):
        if path.name == "io.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if writer.search(line) and not re.search(r"\btmp\b|buffer|atomic_", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# --- safe checkpoints ------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    fld = build_field({"in_dim": 2, "out_dim": 3,
                       "network": {"type": "mlp", "width": 8, "depth": 2},
                       "encoding": {"type": "gauss", "sigma": 10, "features": 4, "seed": 0}})
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, fld, signal={"kind": "image", "shape": [4, 4], "bit_depth": 8},
                    config={}, metrics={})
    return path


def rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


class _Evil:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tamper_width(h):
    meta = h["__metadata__"]
    spec = json.loads(meta["field"])
    spec["network"]["width"] = 16
    meta["field"] = json.dumps(spec)


def _swap_shape(h):
    h["network.layers.1.weight"]["shape"] = h["network.layers.1.weight"]["shape"][::-1]


@pytest.mark.parametrize("case, message", [
    ("no-metadata", "metadata missing"),
    ("newer", "newer than this nfit"),
    ("truncated", "truncated"),
    ("tampered-config", "do not match"),
    ("tampered-shape", "do not match"),
    ("random-bytes", "not a safetensors"),
    ("pickle", "not a safetensors"),
    ("torch-save", "not a safetensors"),
])
def test_bad_checkpoints_are_refused_and_never_unpickled(checkpoint, tmp_path, case, message):
    marker = tmp_path / "unpickled"
    if case == "no-metadata":
        save_file(tensors(checkpoint), str(checkpoint))
    elif case == "newer":
        rewrite_header(checkpoint, lambda h: h["__metadata__"].update(format_version="99"))
    elif case == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
    elif case == "tampered-config":
        rewrite_header(checkpoint, _tamper_width)
    elif case == "tampered-shape":
        rewrite_header(checkpoint, _swap_shape)
    elif case == "random-bytes":
        checkpoint.write_bytes(np.random.default_rng(0).bytes(3000))
    elif case == "pickle":
        checkpoint.write_bytes(pickle.dumps({"weights": _Evil(marker)}))
    elif case == "torch-save":
        torch.save({"w": torch.zeros(3), "evil": _Evil(marker)}, checkpoint)
    for command in (["info", checkpoint], ["render", checkpoint, "--out", tmp_path / "r.png"]):
        result = cli(*command)
        assert result.exit_code == 1, result.stderr
        assert result.stderr.startswith("nfit: error:") and message in result.stderr
    assert not marker.exists() and not (tmp_path / "r.png").exists()


def test_info_validates_without_loading_tensors(checkpoint, monkeypatch):
    import safetensors.torch

    def refuse(*a, **k):
        raise AssertionError("nfit info must not load tensors")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    result = cli("info", checkpoint, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["valid"] is True


def test_no_unpickling_anywhere_in_the_package():
    for path in (ROOT / "nfit").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"


# --- hostile and odd inputs --------------------------------------------------------------

def test_corpus_is_current():
    """manifest.json lists exactly the files make_corpus.py writes."""
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("manifest.json", "make_corpus.py")}
    assert files == set(MANIFEST)


IMAGE_CASES = sorted(k for k, v in MANIFEST.items() if v["command"] == "image")
OTHER_CASES = sorted(k for k, v in MANIFEST.items() if v["command"] != "image")


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_image_corpus(name, tmp_path):
    entry, path = MANIFEST[name], CORPUS / name
    tracemalloc.start()
    try:
        values, depth = read_image(path)
        outcome: object = (values.shape[2], depth)
    except DataError as exc:
        outcome = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 << 20  # bombs are refused from their headers, before any allocation
    if entry["expect"] == "ok":
        assert outcome == (entry["channels"], entry["bit_depth"])
        assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
        return
    assert isinstance(outcome, DataError)
    out = tmp_path / "out"
    result = cli("image", path, "--steps", "1", "--out", out)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("nfit: error:") and result.stderr.count("\n") == 1
    assert "internal error" not in result.stderr and not out.exists()


def test_sixteen_bit_input_keeps_sixteen_bits_through_a_fit(tmp_path):
    out = tmp_path / "out"
    result = cli("image", CORPUS / "image-rgb16.png", *FIT[2:], "--steps", "3", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert read_image(out / "recon.png")[1] == 16


@pytest.mark.parametrize("name", OTHER_CASES)
def test_volume_and_mesh_corpus(name, tmp_path):
    entry = MANIFEST[name]
    if not registered(entry["command"]):
        pytest.skip(f"`nfit {entry['command']}` is not part of this build")
    out = tmp_path / "out"
    result = cli(entry["command"], CORPUS / name, "--steps", "2", "--out", out)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("nfit: error:") and "internal error" not in result.stderr
    if entry.get("nonfinite"):
        assert re.search(r"nan|infinite", result.stderr, re.IGNORECASE)
    assert not out.exists()


def _valid_images() -> dict[str, bytes]:
    from PIL import Image

    sys.path.insert(0, str(CORPUS))
    try:
        import make_corpus
    finally:
        sys.path.pop(0)
    rgb = make_corpus._gradient(12, 10)
    return {"png": make_corpus._png(rgb), "tif": make_corpus._tiff(rgb),
            "jpg": make_corpus._pillow(Image.fromarray(rgb), "JPEG", quality=80)}


VALID = _valid_images()
FUZZ_EXAMPLES = 250
FUZZ_RUN: dict[str, int] = {}


@st.composite
def mutated(draw, fmt: str) -> bytes:
    data = bytearray(VALID[fmt])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_fuzz_image_reader(fmt, tmp_path):
    """Mutated PNG/JPEG/TIFF bytes: a clean array or a DataError, nothing else."""
    path = tmp_path / f"fuzz.{fmt}"
    FUZZ_RUN[fmt] = 0

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(fmt))
    def check(data: bytes) -> None:
        FUZZ_RUN[fmt] += 1
        path.write_bytes(data)
        try:
            values, depth = read_image(path)
        except DataError:
            return
        assert values.dtype == np.float32 and values.ndim == 3 and depth in (8, 16)
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1

    check()
    print(f"fuzzed read_image with {FUZZ_RUN[fmt]} mutated {fmt.upper()} files")
    assert FUZZ_RUN[fmt] >= FUZZ_EXAMPLES // 2


# --- memory guard ----------------------------------------------------------------------

def test_memory_guard_refuses_and_names_the_override(image, tmp_path):
    out = tmp_path / "out"
    small = cli("image", image, *FIT, "--max-memory", "1K", "--out", out)
    assert small.exit_code == 1 and "--max-memory" in small.stderr and not out.exists()
    # A network of 10^5 x 10^5 weights is refused from its shapes alone, against MemAvailable.
    huge = cli("image", image, *FIT, "--width", "100000", "--depth", "3", "--out", out)
    assert huge.exit_code == 1 and "--max-memory" in huge.stderr and not out.exists()


def test_parse_memory():
    assert parse_memory("16G") == 16 << 30 and parse_memory("512MiB") == 512 << 20
    assert parse_memory("1.5k") == 1536 and parse_memory("off") is None
    with pytest.raises(UsageError):
        parse_memory("lots")


# --- divergence ------------------------------------------------------------------------

def test_divergence_names_the_cause_and_keeps_the_last_good_state(image, tmp_path):
    out = tmp_path / "out"
    # bf16 makes the overflow certain on every CPU; in fp32 a tiny ReLU net at lr 1e30 may
    # saturate with finite weights on one CPU and overflow on another
    result = cli("image", image, *FIT, "--lr", "1e30", "--precision", "bf16", "--checkpoint-every", "1",
                 "--out", out)
    assert result.exit_code == 1
    assert "diverged" in result.stderr and "learning rate --lr 1e+30" in result.stderr
    match = re.search(r"at step (\d+).*last good state \(step (\d+)\)", result.stderr)
    assert match and int(match.group(2)) < int(match.group(1))
    assert visible_files(out) == {RESUME_FILE}
    assert all(torch.isfinite(t).all() for t in tensors(out / RESUME_FILE).values())
    assert "--precision fp32" in result.stderr  # bf16 overflow is named as a cause too
    huge = cli("image", image, *FIT, "--lr", "1e38", "--out", tmp_path / "h")
    assert huge.exit_code == 2 and "--lr must be a positive number below 1e37" in huge.stderr


# --- output formats --------------------------------------------------------------------

def test_sixteen_bit_png_round_trip_and_unfaithful_formats(tmp_path):
    values = np.random.default_rng(0).random((8, 6, 3)).astype(np.float32)
    write_image(tmp_path / "a.png", values, 16)
    back, depth = read_image(tmp_path / "a.png")
    assert depth == 16 and np.array_equal(np.round(back * 65535), np.round(values * 65535))
    with pytest.raises(UsageError, match="8 bits"):
        write_image(tmp_path / "a.jpg", values, 16)
    with pytest.raises(UsageError, match="EXR"):
        write_image(tmp_path / "a.exr", values, 16)
    assert not (tmp_path / "a.jpg").exists() and not (tmp_path / "a.exr").exists()


def test_render_refuses_exr(checkpoint, tmp_path):
    result = cli("render", checkpoint, "--out", tmp_path / "r.exr")
    assert result.exit_code == 2 and "EXR" in result.stderr and not (tmp_path / "r.exr").exists()


def test_written_files_are_read_back(tmp_path, monkeypatch):
    import imagecodecs

    monkeypatch.setattr(imagecodecs, "png_encode", lambda pixels: b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary remains
