"""Where a batch's jobs run: worker processes on this machine, or Ray tasks.

Both run each job through ``run_job`` (the one door, ``nfit.api.run``, with the batch's
rules: resume a saved state, otherwise start the job's directory over), and both report
``started(name)`` and ``finished(JobResult)`` to the batch as jobs come and go.

- ``LocalExecutor``: ``workers`` long-lived processes (torch is imported once per worker),
  each with ``cores // workers`` threads so they do not oversubscribe the machine. A worker
  that dies (SIGKILL, out of memory) is replaced and its job retried up to ``retries``
  times; with ``checkpoint_every`` the retry resumes from the last saved state.
- ``RayExecutor``: each job is a Ray task with declared resources (``num_cpus``,
  ``num_gpus`` fractions, so small fits share a GPU); Ray schedules and retries it
  (``max_retries``: a dead worker's task runs again and resumes the same way). The inputs
  and the batch directory must be on a filesystem every node sees (an NFS or cluster
  home): tasks read the signal and write the job's directory themselves, and the driver
  reads finished reports there to skip jobs on a rerun. Only the results travel back
  through Ray.

SIGINT (or SIGTERM) to the batch stops handing out jobs and asks the running ones to
stop at their next step: they save their state (``resume.safetensors``), and a rerun of
the same batch continues them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nfit.batch import RUNNING_DIR, JobResult, report_metrics, safe_name
from nfit.errors import Interrupted, NfitError, UsageError
from nfit.io import atomic_write_text

Started = Callable[[str], None]
Finished = Callable[[JobResult], None]


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_job(job: dict[str, Any], batch_dir: str, threads: int | None = None,
            attempt: int = 1) -> dict[str, Any]:
    """Run one batch job in this process; returns a ``JobResult`` as a dict, never raises
    for the job's own failures (they are the batch's data, not its errors)."""
    import torch

    from nfit.api import run
    from nfit.job import check_same_job, resume_state_of
    from nfit.resume import read_resume_header
    from nfit.spec import FitSpec, spec_from_dict

    if threads:
        torch.set_num_threads(int(threads))
    name = job["name"]
    marker = Path(batch_dir) / RUNNING_DIR / f"{safe_name(name)}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "attempt": attempt, "started": time.time()}))
    start = time.perf_counter()
    try:
        spec = spec_from_dict(job["spec"])
        out = Path(str(spec.out))
        spec.force = True  # the job's own directory: an unfinished or changed run starts over
        state = resume_state_of(out) if out.is_dir() else None
        if isinstance(spec, FitSpec) and state is not None:
            try:
                saved, _, _ = read_resume_header(state)
                check_same_job(state, saved, spec.kind, spec.config(), Path(spec.input))
                spec.resume = True
            except NfitError:
                spec.resume = False  # a state of other options or data: start over
        report = run(spec)
        return JobResult(name, "done", report_metrics(report), time.perf_counter() - start,
                         attempts=attempt).to_dict()
    except Interrupted as exc:
        return JobResult(name, "interrupted", {}, time.perf_counter() - start, str(exc),
                         attempt).to_dict()
    except KeyboardInterrupt:  # stopped before its fit began (or a Ray cancel)
        return JobResult(name, "interrupted", {}, time.perf_counter() - start,
                         "interrupted before its fit started", attempt).to_dict()
    except NfitError as exc:
        return JobResult(name, "failed", {}, time.perf_counter() - start, str(exc), attempt).to_dict()
    except Exception as exc:  # a bug or a library's error: recorded, the batch goes on
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return JobResult(name, "failed", {}, time.perf_counter() - start,
                         f"{type(exc).__name__}: {line}", attempt).to_dict()
    finally:
        marker.unlink(missing_ok=True)


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Within the block SIGINT/SIGTERM are recorded (the list gets the signal number)
    instead of stopping the driver, which then winds the batch down in order."""
    from nfit.job import stop_handler

    got: list[int] = []
    with stop_handler(lambda signum, frame: got.append(signum)):
        yield got


# ---------------------------------------------------------------------------- local


def _worker_main(conn: Any, batch_dir: str, threads: int) -> None:
    """A local worker: its own process group (a terminal's Ctrl-C reaches the driver,
    which asks each worker once), then jobs from the pipe until None."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    while True:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: a stop request has nothing to stop
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        job, attempt = message
        signal.signal(signal.SIGINT, signal.default_int_handler)
        conn.send(run_job(job, batch_dir, threads, attempt))


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None, retries: int = 2) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        if retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {retries}")
        self.workers, self.retries = workers, retries
        self.threads = threads or default_threads(workers)

    def run(self, jobs: list[dict[str, Any]], batch_dir: Path, started: Started,
            finished: Finished) -> None:
        import multiprocessing as mp
        from multiprocessing.connection import wait

        if not jobs:
            return
        ctx = mp.get_context("spawn")
        queue = deque((job, 1) for job in jobs)
        busy: dict[Any, tuple[Any, dict[str, Any], int]] = {}  # conn -> (process, job, attempt)
        idle: list[tuple[Any, Any]] = []
        stopping = False

        def spawn() -> tuple[Any, Any]:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, str(batch_dir), self.threads), daemon=True)
            proc.start()
            child.close()
            return proc, parent

        def dispatch() -> None:
            while queue and not stopping and (idle or len(busy) < self.workers):
                proc, conn = idle.pop() if idle else spawn()
                job, attempt = queue.popleft()
                conn.send((job, attempt))
                busy[conn] = (proc, job, attempt)
                started(job["name"])

        with stop_requests() as stops:
            dispatch()
            while busy:
                if stops and not stopping:
                    stopping = True
                    for proc, _, _ in busy.values():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGINT)
                if len(stops) > 1:  # a second request: stop now, the states of the last checkpoints kept
                    for proc, job, attempt in busy.values():
                        proc.kill()
                        finished(JobResult(job["name"], "interrupted", error="stopped at once (second interrupt)",
                                           attempts=attempt))
                    busy.clear()
                    break
                ready = wait([*busy, *(p.sentinel for p, _, _ in busy.values())], timeout=0.5)
                for conn, (proc, job, attempt) in list(busy.items()):
                    if conn not in ready and proc.sentinel not in ready:
                        continue
                    result = None
                    with contextlib.suppress(EOFError, OSError):
                        if conn.poll():
                            result = conn.recv()
                    if result is not None:
                        busy.pop(conn)
                        finished(JobResult(**result))
                        idle.append((proc, conn))
                        continue
                    if proc.is_alive() and proc.sentinel not in ready:
                        continue
                    busy.pop(conn)  # the worker died in the middle of the job
                    proc.join()
                    conn.close()
                    why = f"its worker died ({_exit_text(proc.exitcode)})"
                    if attempt <= self.retries and not stopping:
                        queue.appendleft((job, attempt + 1))  # resumes from its saved state
                    else:
                        finished(JobResult(job["name"], "failed", error=why, attempts=attempt))
                dispatch()
            for proc, conn in idle:
                with contextlib.suppress(OSError):
                    conn.send(None)
                proc.join(timeout=10)
        if stopping:
            raise Interrupted("batch interrupted; finished jobs are kept and running ones saved "
                              "their state: rerun the same command to continue", stops[0])


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# ---------------------------------------------------------------------------- ray


def _ray_job(job: dict[str, Any], batch_dir: str, threads: int) -> dict[str, Any]:
    """The Ray task: a job run on whichever worker Ray chose. A retry (after the worker
    died) finds the job's saved state and resumes it."""
    marker = Path(batch_dir) / RUNNING_DIR / f"{safe_name(job['name'])}.attempts"
    marker.parent.mkdir(parents=True, exist_ok=True)
    attempt = int(marker.read_text()) + 1 if marker.exists() else 1
    atomic_write_text(marker, str(attempt))
    try:
        return run_job(job, batch_dir, threads, attempt)
    finally:
        marker.unlink(missing_ok=True)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0, retries: int = 2) -> None:
        if not cpus_per_job > 0:
            raise UsageError(f"--cpus-per-job must be positive, got {cpus_per_job}")
        if gpus_per_job < 0:
            raise UsageError(f"--gpus-per-job must be 0 or more, got {gpus_per_job}")
        if retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {retries}")
        self.address, self.cpus, self.gpus, self.retries = address, cpus_per_job, gpus_per_job, retries

    def run(self, jobs: list[dict[str, Any]], batch_dir: Path, started: Started,
            finished: Finished) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'nfit[ray]'") from None
        if not jobs:
            return
        ours = not ray.is_initialized()
        if ours:
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local Ray"
                raise UsageError(f"--executor ray: cannot start or reach {where} "
                                 f"({str(exc).splitlines()[0]})") from None
        try:
            self._run(ray, jobs, batch_dir, started, finished)
        finally:
            if ours:
                ray.shutdown()

    def _run(self, ray: Any, jobs: list[dict[str, Any]], batch_dir: Path, started: Started,
             finished: Finished) -> None:
        task = ray.remote(_ray_job).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                            max_retries=self.retries, retry_exceptions=False)
        threads = max(1, int(self.cpus))
        refs = {task.remote(job, str(batch_dir), threads): job for job in jobs}
        for job in jobs:
            started(job["name"])
        stopping = False
        with stop_requests() as stops:
            while refs:
                if stops and not stopping:
                    stopping = True
                    for ref in refs:
                        ray.cancel(ref, force=False)  # a KeyboardInterrupt in the task: it saves
                elif len(stops) > 1 and stops[-1] != -1:  # a second request: kill the tasks' workers
                    stops.append(-1)
                    for ref in refs:
                        ray.cancel(ref, force=True)
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for ref in done:
                    job = refs.pop(ref)
                    try:
                        result = JobResult(**ray.get(ref))
                    except ray.exceptions.TaskCancelledError:
                        result = JobResult(job["name"], "interrupted", error="cancelled before it started")
                    except ray.exceptions.RayError as exc:
                        text = str(exc).strip().splitlines()
                        result = JobResult(job["name"], "failed", attempts=self.retries + 1,
                                           error=f"{type(exc).__name__}: {text[0] if text else ''}")
                    finished(result)
        if stopping:
            raise Interrupted("batch interrupted; finished jobs are kept and running ones saved "
                              "their state: rerun the same command to continue", stops[0])


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str = "local", *, workers: int = 1, address: str | None = None,
                  cpus_per_job: float = 1.0, gpus_per_job: float = 0.0,
                  retries: int = 2) -> LocalExecutor | RayExecutor:
    """The executor ``nfit batch --executor NAME`` uses; options of the other executor
    are refused (never silently ignored)."""
    if name not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "local":
        for flag, value, default in (("address", address, None), ("cpus_per_job", cpus_per_job, 1.0),
                                     ("gpus_per_job", gpus_per_job, 0.0)):
            if value != default:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --executor ray only")
        return LocalExecutor(workers=workers, retries=retries)
    if workers != 1:
        raise UsageError("--workers applies to --executor local; Ray runs as many jobs as its resources allow")
    return RayExecutor(address=address, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, retries=retries)
