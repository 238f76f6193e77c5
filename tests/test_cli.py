"""The command line through Typer's runner: outputs, JSON, YAML config, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from nfit.cli import app
from nfit.errors import UsageError

runner = CliRunner()
TINY = ["--sigma", "3", "--features", "16", "--width", "32", "--depth", "2", "--steps", "40", "--lr", "1e-2",
        "--split", "all", "--device", "cpu", "--precision", "fp32", "--quiet"]


def run(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("nfit: error:"), err
    assert "Traceback" not in result.output and "Traceback" not in err
    assert needle.lower() in err.lower(), err
    assert len(err.splitlines()) == 1, err


def test_fit_writes_outputs_and_json(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run("image", str(tiny_rgb), *TINY, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["test"]["psnr"] > 15
    assert report["channels"] == "RGB"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["metrics"] == report["metrics"]
    for key in ("wall_time_s", "steps_per_s", "parameters", "device", "precision", "config", "versions"):
        assert key in on_disk
    assert 0 < on_disk["test"]["ssim"] <= 1
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and len(lines) == 1 + 2  # evaluations at steps 25 and 40
    # info and render on the checkpoint
    info = run("info", str(out / "model.safetensors"), "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["valid"] is True
    big = tmp_path / "big.png"
    rendered = run("render", str(out / "model.safetensors"), "--size", "64x48", "--out", str(big), "--quiet")
    assert rendered.exit_code == 0, rendered.output
    from nfit.formats.images import read_image

    assert read_image(big)[0].shape == (48, 64, 3)


def test_yaml_config_under_flags(tiny_rgb: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"encoding": "posenc", "sigma": 5, "steps": 7, "width": 16}))
    out = tmp_path / "run"
    result = run("image", str(tiny_rgb), "--config", str(cfg), "--steps", "3", "--out", str(out),
                 "--split", "all", "--quiet")
    assert result.exit_code == 0, result.output
    effective = yaml.safe_load((out / "config.yaml").read_text())
    assert effective["encoding"] == "posenc" and effective["sigma"] == 5.0
    assert effective["steps"] == 3 and effective["width"] == 16


def test_existing_out_refused_without_force(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run("image", str(tiny_rgb), *TINY, "--out", str(out)).exit_code == 0
    one_line_error(run("image", str(tiny_rgb), *TINY, "--out", str(out)), 2, "--force")
    assert run("image", str(tiny_rgb), *TINY, "--out", str(out), "--force").exit_code == 0


def _bad_images(tmp: Path) -> dict[str, tuple[Path, str]]:
    import imagecodecs

    good = imagecodecs.png_encode((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    (tmp / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp / "text.png").write_text("this is not an image\n")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "one.png").write_bytes(imagecodecs.png_encode(np.zeros((1, 1, 3), np.uint8)))
    return {
        "missing": (tmp / "nope.png", "no such file"),
        "text": (tmp / "text.png", "not an image"),
        "truncated": (tmp / "truncated.png", "truncated"),
        "empty": (tmp / "empty.png", "empty"),
        "1x1": (tmp / "one.png", "1x1"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "empty", "1x1"])
def test_bad_image_files(case: str, tmp_path: Path) -> None:
    path, needle = _bad_images(tmp_path)[case]
    out = tmp_path / "out"
    one_line_error(run("image", str(path), *TINY, "--out", str(out)), 1, needle)
    assert not out.exists()


def test_zero_by_zero_image(tmp_path: Path) -> None:
    import struct
    import zlib

    # A PNG whose header says 0x0 (valid chunk CRCs): refused before decoding.
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    path = tmp_path / "zero.png"
    path.write_bytes(data)
    one_line_error(run("image", str(path), *TINY, "--out", str(tmp_path / "o")), 1, "0x0")


@pytest.mark.parametrize("args,needle", [
    (["--sigma", "0"], "sigma"),
    (["--sigma", "-2"], "sigma"),
    (["--steps", "0"], "steps"),
    (["--encoding", "wavelet"], "unknown encoding"),
    (["--split", "halves"], "split"),
    (["--device", "tpu"], "device"),
])
def test_bad_options_are_usage_errors(args: list[str], needle: str, tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    one_line_error(run("image", str(tiny_rgb), *TINY, *args, "--out", str(out)), 2, needle)
    assert not out.exists()


def test_out_is_a_file_or_not_writable(tiny_rgb: Path, tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    one_line_error(run("image", str(tiny_rgb), *TINY, "--out", str(afile)), 2, "is a file")
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        one_line_error(run("image", str(tiny_rgb), *TINY, "--out", str(locked / "o")), 2, "not writable")


def test_render_bad_extension_and_missing_checkpoint(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run("image", str(tiny_rgb), *TINY, "--out", str(out)).exit_code == 0
    one_line_error(run("render", str(out / "model.safetensors"), "--out", str(tmp_path / "x.gif")),
                   2, "unsupported output extension")
    assert not (tmp_path / "x.gif").exists()
    one_line_error(run("render", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.png")),
                   1, "no such checkpoint")
    one_line_error(run("info", str(tiny_rgb)), 1, "not a safetensors checkpoint")


def test_divergence_is_reported(tiny_rgb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("image", str(tiny_rgb), "--encoding", "gauss", "--sigma", "3", "--width", "32",
                 "--steps", "50", "--lr", "1e30", "--split", "all", "--device", "cpu",
                 "--precision", "fp32", "--quiet", "--out", str(out))
    one_line_error(result, 1, "diverged")
    assert "learning rate" in result.stderr
    assert not out.exists()


def test_encodings_lists_the_registry() -> None:
    result = run("encodings", "--json")
    assert result.exit_code == 0
    names = {e["name"] for e in json.loads(result.stdout)["encodings"]}
    assert {"none", "basic", "posenc", "gauss", "laplace", "uniform", "loguniform"} <= names


def test_python_dash_m_and_parser_errors_in_one_line(tiny_rgb: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "nfit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("nfit ")
    # Errors found by the option parser itself go through the same one-line rule.
    proc = subprocess.run([sys.executable, "-m", "nfit", "image", str(tiny_rgb), "--steps", "many"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nfit: error:") and "--steps" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# --- one door: specs, unknown keys ------------------------------------------------------


def test_unknown_yaml_key_names_the_closest(tiny_rgb: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("steps: 3\nlevls: 4\n")
    out = tmp_path / "never"
    result = run("image", str(tiny_rgb), "--config", str(config), "--out", str(out))
    one_line_error(result, 2, "unknown option 'levls'")
    assert "did you mean 'levels'" in result.stderr and not out.exists()


def test_option_nothing_reads_is_refused(tiny_rgb: Path, tmp_path: Path) -> None:
    one_line_error(run("image", str(tiny_rgb), *TINY, "--levels", "4", "--out", str(tmp_path / "o")),
           2, "--levels applies to")


def test_spec_json_runs_as_the_cli_does(tiny_rgb: Path, tmp_path: Path) -> None:
    """A spec written to JSON, loaded and run gives the CLI's report for the same options."""
    from nfit.api import run as run_spec
    from nfit.spec import FitSpec, SweepSpec, load_spec, spec_from_dict

    cli = run("image", str(tiny_rgb), *TINY, "--out", str(tmp_path / "cli"), "--json")
    assert cli.exit_code == 0, cli.output
    spec = FitSpec(kind="image", input=str(tiny_rgb), out=str(tmp_path / "api"),
                   options={"sigma": 3, "features": 16, "width": 32, "depth": 2, "steps": 40,
                            "lr": 1e-2, "split": "all", "device": "cpu", "precision": "fp32"})
    (tmp_path / "job.json").write_text(spec.to_json())
    loaded = load_spec(tmp_path / "job.json")
    assert loaded == spec
    report = run_spec(loaded)
    want = json.loads(cli.stdout)
    assert report["metrics"] == want["metrics"] and report["config"] == want["config"]
    assert json.loads((tmp_path / "api" / "report.json").read_text())["metrics"] == want["metrics"]
    # the `nfit run` command takes the same file
    again = run("run", str(tmp_path / "job.json"), "--json")
    assert again.exit_code == 2 and "already holds results" in again.stderr
    with pytest.raises(UsageError, match="did you mean 'checkpoint_every'"):
        spec_from_dict({**spec.to_dict(), "checkpoint_evry": 5})
    with pytest.raises(UsageError, match="unknown option 'sigmaa'"):
        SweepSpec(kind="image", input="x.png", options={"sigmaa": 3})


def test_sdf_default_sigma_lives_on_the_kind() -> None:
    from nfit.spec import FitSpec, KernelSpec

    assert FitSpec(kind="sdf", input="m.obj").config().sigma == 2.0
    assert KernelSpec(kind="sdf", input="m.obj").config().sigma == 2.0
    assert FitSpec(kind="image", input="p.png").config().sigma == 10.0
    assert FitSpec(kind="sdf", input="m.obj", options={"sigma": 4}).config().sigma == 4.0


def test_protocol_sets_the_kinds_recipe_under_the_flags():
    from nfit.config import merge_config
    from nfit.errors import UsageError

    cfg = merge_config({}, {"protocol": "paper", "steps": 5}, kind="image")
    assert (cfg.lr, cfg.steps, cfg.batch, cfg.split, cfg.sigma) == (1e-3, 5, "full", "paper", 10.0)
    basic = merge_config({}, {"protocol": "paper", "encoding": "basic", "lr": 3e-3}, kind="image")
    assert (basic.lr, basic.steps) == (3e-3, 2000)  # the flag over the recipe's 1e-2
    assert merge_config({}, {"protocol": "paper", "encoding": "none"}, kind="image").lr == 1e-2
    with pytest.raises(UsageError, match="not defined for sdf fits"):
        merge_config({}, {"protocol": "nope"}, kind="sdf")
    with pytest.raises(UsageError, match="applies to sdf fits only, not image"):
        merge_config({}, {"target": "sdf"}, kind="image")


def test_signals_come_on_stdin_and_renders_go_to_stdout(tiny_rgb: Path, tmp_path: Path) -> None:
    """`nfit image -` fits the piped file exactly as the file itself; `render --out -`
    writes the same bytes as a render to a file, and nothing else, to stdout."""
    piped = runner.invoke(app, ["image", "-", *TINY, "--out", str(tmp_path / "piped"), "--json"],
                          input=tiny_rgb.read_bytes())
    assert piped.exit_code == 0, piped.output
    direct = run("image", str(tiny_rgb), *TINY, "--out", str(tmp_path / "file"), "--json")
    a, b = json.loads(piped.stdout), json.loads(direct.stdout)
    assert a["metrics"] == b["metrics"] and a["signal"]["source"] == "-"
    model = tmp_path / "file" / "model.safetensors"
    assert oct(model.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the umask, not 0600
    to_file = run("render", str(model), "--out", str(tmp_path / "r.png"), "--size", "20x10", "--quiet")
    assert to_file.exit_code == 0, to_file.output
    to_stdout = runner.invoke(app, ["render", str(model), "--out", "-", "--size", "20x10"])
    assert to_stdout.exit_code == 0 and to_stdout.stdout_bytes == (tmp_path / "r.png").read_bytes()
    one_line_error(runner.invoke(app, ["volume", "-", "--steps", "2"], input=tiny_rgb.read_bytes()),
                   1, "a .png file, not a volume signal")
    one_line_error(runner.invoke(app, ["image", "-"], input=b""), 2, "standard input is empty")
    one_line_error(run("render", str(model), "--out", "-", "--format", "ply"), 2,
                   "unsupported output extension")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_help_and_argument_errors_do_not_load_torch() -> None:
    """`nfit --help`, a command's help and its argument errors answer without importing
    torch (the kinds' facts and the options are torch-free), so they are quick."""
    import subprocess
    import sys

    probe = ("import sys; from nfit.cli import main; sys.argv = ['nfit', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    for args in (["--help"], ["image", "--help"], ["ct", "--help"], ["batch", "--help"],
                 ["image", "x.png", "--steps", "many"], ["encodings"], ["image", "x.png", "--encoding", "gaus"]):
        proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert proc.stderr.strip().endswith("NO-TORCH"), (args, proc.stderr[-300:])


def test_the_catalog_and_the_registries_agree() -> None:
    """Every encoding, network and kind in ``nfit.catalog`` is registered by the module it
    names, with the catalog's facts, and nothing is registered that the catalog lacks."""
    import importlib

    from nfit.catalog import ENCODING_FACTS, KINDS, NETWORK_FACTS
    from nfit.encodings import ENCODINGS
    from nfit.networks import NETWORKS
    from nfit.signals import SIGNAL_KINDS

    assert set(ENCODINGS) == set(ENCODING_FACTS) and set(NETWORKS) == set(NETWORK_FACTS)
    for name, facts in ENCODING_FACTS.items():
        cls = ENCODINGS[name]
        assert cls.__module__ == facts.implementation and importlib.import_module(facts.implementation)
        assert (cls.params, cls.defaults, cls.uses_sigma, cls.trainable) == (
            facts.params, facts.defaults, facts.uses_sigma, facts.trainable)
    assert NETWORKS["siren"].defaults == {"encoding": "none", "depth": 5, "lr": 1e-4}
    for name, facts in KINDS.items():
        assert SIGNAL_KINDS[name].name == name and SIGNAL_KINDS[name].extensions == facts.extensions
