"""`nfit batch` and `nfit table`: jobs from signals x options, local and Ray executors,
skipping finished jobs, recording failures, retrying killed workers, SIGINT, the tables."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nfit.batch import Batch, expand, infer_kind, load_manifest
from nfit.errors import UsageError
from nfit.formats.images import write_image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NFIT_TEST_THREADS": "1"}
#: small fits: fast, yet long enough (LONG: 300 steps) to be killed in the middle
FIT = ["--width", "32", "--depth", "2", "--features", "16", "--lr", "1e-2", "--eval-every", "100"]
LONG = ["--steps", "300", "--checkpoint-every", "10"]


def nfit(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfit", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def signals(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("signals")
    paths = []
    y, x = np.mgrid[0:24, 0:24] / 24.0
    for i in range(2):
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (i + 1) * x), 0.5 + 0.4 * np.cos(2 * np.pi * y),
                        0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
        paths.append(folder / f"wave{i}.png")
        write_image(paths[-1], img)
    return paths


def rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "batch.csv") as fh:
        return {r["job"]: r for r in csv.DictReader(fh)}


def report(out: Path, job: str) -> dict:
    return json.loads((out / job / "report.json").read_text())


# ---------------------------------------------------------------------------- building jobs


def test_jobs_are_the_product_of_signals_options_and_seeds(signals, tmp_path):
    jobs = expand(signals, {"encoding": "none,gauss", "sigma": 10, "steps": 5}, tmp_path, seeds=2)
    assert [j.name for j in jobs] == [f"wave{i}/{c}-seed{s}" for i in range(2)
                                      for c in ("none", "gauss-s10") for s in range(2)]
    assert jobs[3].spec.options == {"encoding": "gauss", "sigma": 10.0, "steps": 5, "seed": 1}
    assert jobs[3].spec.out == str(tmp_path / "wave0/gauss-s10-seed1")
    # an option that varies names the configuration; equal specs hash equal, others not
    lr = expand(signals[:1], {"lr": [1e-3, 1e-2]}, tmp_path)
    assert [j.config for j in lr] == ["gauss-lr0.001", "gauss-lr0.01"]
    again = expand(signals[:1], {"lr": "0.001,0.01"}, tmp_path / "elsewhere")
    assert [j.hash for j in again] == [j.hash for j in lr] and lr[0].hash != lr[1].hash


def test_a_sweep_batch_is_one_stacked_sweep_per_signal(signals, tmp_path):
    from nfit.spec import SweepSpec

    jobs = expand(signals, {"steps": 5}, tmp_path, command="sweep",
                  sweep={"encodings": "basic,gauss", "sigmas": "3,10", "seeds": 2})
    assert [j.name for j in jobs] == ["wave0/sweep", "wave1/sweep"]
    assert all(isinstance(j.spec, SweepSpec) and j.spec.sigmas == "3,10" and j.spec.seeds == 2 for j in jobs)
    assert jobs[0].spec.marker == "sweep.json"
    with pytest.raises(UsageError, match="sweep's 'encodings'"):
        expand(signals, {"encoding": "gauss"}, tmp_path, command="sweep", sweep={})


def test_batch_input_errors_name_the_problem(signals, tmp_path):
    with pytest.raises(UsageError, match="did you mean 'levels'"):
        expand(signals, {"levls": 4}, tmp_path)
    with pytest.raises(UsageError, match="not both"):
        expand(signals, {"seed": "1,2"}, tmp_path, seeds=2)
    with pytest.raises(UsageError, match="fits image and volume; pass --kind"):
        infer_kind("scan.tif")
    with pytest.raises(UsageError, match="cannot use 'x' as float"):
        expand(signals, {"sigma": "1,x"}, tmp_path)
    # two folders holding the same file name get their folder in the job's name
    other = tmp_path / "other"
    other.mkdir()
    twin = other / signals[0].name
    twin.write_bytes(signals[0].read_bytes())
    names = [j.signal for j in expand([signals[0], twin], {}, tmp_path)]
    assert len(set(names)) == 2 and names[1].startswith("other")


def test_manifest_reads_globs_beside_it_and_explicit_specs(signals, tmp_path):
    manifest = tmp_path / "jobs.yaml"
    folder = signals[0].parent
    manifest.write_text(f"signals: ['{folder}/wave*.png']\nseeds: [3]\noptions: {{encoding: [basic, posenc]}}\n"
                        f"jobs:\n  - {{input: {signals[0]}, name: quick, options: {{steps: 3}}}}\n")
    jobs, out = load_manifest(manifest, None)
    assert out == Path("runs") / "jobs"
    assert [j.name for j in jobs] == ["wave0/basic-seed3", "wave0/posenc-seed3", "wave1/basic-seed3",
                                      "wave1/posenc-seed3", "wave0/quick"]
    assert jobs[-1].spec.kind == "image" and jobs[-1].spec.options == {"steps": 3}
    manifest.write_text("signal: x.png\n")
    with pytest.raises(UsageError, match="did you mean 'signals'"):
        load_manifest(manifest, None)


# ---------------------------------------------------------------------------- local executor


@pytest.fixture(scope="module")
def local_batch(signals, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two real signals and a broken one x two encodings, two workers."""
    broken = signals[0].parent / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path_factory.mktemp("batch") / "b"
    done = nfit("batch", *signals, broken, "--encoding", "basic,gauss", "--steps", "60", *FIT,
                "--workers", "2", "--out", out, "--jsonl")
    return out, done


def test_local_batch_writes_every_job_and_the_tables(local_batch):
    out, done = local_batch
    assert done.returncode == 1, done.stderr
    assert "2 of 6 jobs failed (broken/basic, broken/gauss)" in done.stderr
    table = rows(out)
    assert {j: r["status"] for j, r in table.items()} == {
        "wave0/basic": "done", "wave0/gauss": "done", "wave1/basic": "done", "wave1/gauss": "done",
        "broken/basic": "failed", "broken/gauss": "failed"}
    assert "broken.png" in table["broken/gauss"]["error"] and "\n" not in table["broken/gauss"]["error"]
    # each row is its job's own report; stdout holds one JSON line per job and nothing else
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["job"] for line in lines) == sorted(table)
    for job in ("wave0/gauss", "wave1/basic"):
        assert float(table[job]["test_psnr"]) == report(out, job)["test"]["psnr"]
    # table.csv: mean and sample std over the signals, per configuration
    gauss = [report(out, f"wave{i}/gauss")["test"]["psnr"] for i in range(2)]
    with open(out / "table.csv") as fh:
        summary = {r["config"]: r for r in csv.DictReader(fh)}
    assert float(summary["gauss"]["test_psnr"]) == pytest.approx(np.mean(gauss), abs=1e-12)
    assert float(summary["gauss"]["test_psnr_std"]) == pytest.approx(np.std(gauss, ddof=1), abs=1e-12)
    assert summary["gauss"]["done"] == "2" and summary["gauss"]["failed"] == "1"
    assert "| gauss |" in (out / "table.md").read_text()
    assert (out / "table.png").stat().st_size > 1000 and not (out / ".running").exists()


def test_rerun_skips_finished_jobs_and_retries_failed_ones(local_batch, signals):
    out, _ = local_batch
    before = (out / "wave0/gauss/report.json").stat().st_mtime_ns
    again = nfit("batch", *signals, signals[0].parent / "broken.png", "--encoding", "basic,gauss",
                 "--steps", "60", *FIT, "--out", out, "--jsonl")
    assert again.returncode == 1
    status = {json.loads(line)["job"]: json.loads(line)["status"] for line in again.stdout.splitlines()}
    assert status == {"wave0/basic": "skipped", "wave0/gauss": "skipped", "wave1/basic": "skipped",
                      "wave1/gauss": "skipped", "broken/basic": "failed", "broken/gauss": "failed"}
    assert (out / "wave0/gauss/report.json").stat().st_mtime_ns == before
    shown = nfit("table", out, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["summary"][1]["config"] == "gauss"


@pytest.fixture(scope="module")
def reference(signals, tmp_path_factory) -> Path:
    """The uninterrupted long fit every interrupted batch must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "b"
    done = nfit("batch", signals[0], *FIT, *LONG, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def start_batch(out: Path, signal_path: Path, *extra: object) -> tuple[subprocess.Popen, Path]:
    """Start a long batch of one job; return it once the job has saved a checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "nfit", "batch", str(signal_path), *FIT, *LONG,
                             "--out", str(out), "--quiet", *map(str, extra)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = out / signal_path.stem / "gauss"
    deadline = time.monotonic() + 180
    while not (job / "resume.safetensors").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    return proc, job


def running_pid(out: Path) -> int:
    [marker] = list((out / ".running").glob("*.json"))
    return int(json.loads(marker.read_text())["pid"])


def kill_worker_and_check(out: Path, signal_path: Path, reference: Path, *extra: object) -> None:
    """SIGKILL the job's worker after its first checkpoint: the batch retries the job, which
    resumes from the state and ends exactly where an uninterrupted run ends."""
    proc, _ = start_batch(out, signal_path, *extra)
    os.kill(running_pid(out), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    [entry] = Batch.load(out).results.values()
    assert entry.status == "done" and entry.attempts == 2
    assert report(out, "wave0/gauss")["metrics"] == report(reference, "wave0/gauss")["metrics"]


def test_killed_worker_is_retried_and_resumes_to_the_same_result(signals, reference, tmp_path):
    kill_worker_and_check(tmp_path / "b", signals[0], reference)


def test_sigint_stops_the_batch_with_state_saved_and_a_rerun_continues(signals, reference, tmp_path):
    out = tmp_path / "b"
    proc, job = start_batch(out, signals[0])
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "rerun the same command to continue" in stderr
    assert (job / "resume.safetensors").exists() and not (job / "report.json").exists()
    assert Batch.load(out).results["wave0/gauss"].status == "interrupted"
    again = nfit("batch", signals[0], *FIT, *LONG, "--out", out, "--quiet")
    assert again.returncode == 0, again.stderr
    assert report(out, "wave0/gauss")["metrics"] == report(reference, "wave0/gauss")["metrics"]


# ---------------------------------------------------------------------------- ray


def test_ray_gives_the_local_results_and_retries_a_killed_worker(signals, reference, tmp_path):
    """A real local Ray: the same job, its worker killed mid-fit, Ray's retry resumes it."""
    pytest.importorskip("ray")
    kill_worker_and_check(tmp_path / "b", signals[0], reference, "--executor", "ray", "--retries", "1")
