"""Running the grid here: ``jobs`` runs at once in this process's threads, each stage a
``python -m caffe_cae <stage>`` subprocess (in the grid's current directory) with BLAS/OpenMP
threads = cores // jobs, its output appended to ``OUT/logs/{id}.log``.

A run whose stages fail is tried once more at once (continuing where it stopped); a run that
fails twice is recorded as failed (``RUN_DIR/failed.json`` and the grid state) and is not
tried again unless ``retry_failed``. With ``config["batch_runs"]`` K > 1 (torch backend) the
runs of one (net, D) still to train from the same iteration are trained K at a time by one
``train --batch`` (:func:`run_batch`); extract and analyze stay per run. SIGTERM or Ctrl-C
stops the grid: running stages get SIGTERM, nothing is retried, the next grid continues.
"""
import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

from .. import REPO_ROOT
from ..rundir import MANIFEST
from . import progress
from .plan import STAGES, batch_name, batch_train_argv, count_unfinished, make_batches, read_json, \
    report_argv, report_dirs, stage_argv, stage_done
from .state import check_output_dir, locked_state, now, prepare, read_state, record_failure, summary, update_run

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Exit statuses of a stage stopped on purpose (SIGINT/SIGTERM): not a failure, not retried.
INTERRUPTED = (130, 143, -signal.SIGINT, -signal.SIGTERM)


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_env(threads):
    """This process's environment with ``threads`` BLAS/OpenMP threads and the package importable."""
    env = dict(os.environ)
    for name in THREAD_VARS:
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


class Stopper:
    """Shared by the workers of one grid: once stopped, no stage starts and running ones get SIGTERM."""

    def __init__(self):
        self.event = threading.Event()
        self._procs = set()
        self._lock = threading.Lock()

    def run(self, argv, **kwargs):
        """Run argv to its end (None if the grid is stopping); returns the exit status."""
        with self._lock:
            if self.event.is_set():
                return None
            proc = subprocess.Popen(argv, **kwargs)
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def stop(self, *_args):
        self.event.set()
        with self._lock:
            for proc in self._procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    def interrupted(self, rc):
        """Whether a stage that ended with ``rc`` was stopped on purpose (or the grid is stopping)."""
        return rc is None or rc in INTERRUPTED or self.event.is_set()


def run_logged(stopper, argv, log_path, stage, attempt, env):
    """Run one stage's ``argv`` with its output and two marker lines appended to ``log_path``."""
    started = time.monotonic()
    with open(log_path, "a") as f:
        f.write(f"\n=== {now()} {stage} attempt {attempt}: {' '.join(map(shlex.quote, argv))}\n")
        f.flush()
        rc = stopper.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        f.write(f"=== {now()} {stage} exit status {rc} after {time.monotonic() - started:.1f} s\n")
    return rc


def last_error_line(path):
    """The last non-empty line of a stage's output that is not a grid marker."""
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read()[-20000:].splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("=== ")]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:500]
    return lines[-1][:500] if lines else ""


def _log_path(out, run):
    return os.path.join(out, "logs", run["id"] + ".log")


def _forget_failure(out, run):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(out, run["dir"], "failed.json"))  # train wants a run directory of its own


def run_stages(out, run, config, env, attempts=2, display=None, stopper=None):
    """Bring one run to completion: its missing stages, tried up to ``attempts`` times.

    Returns "done", "failed" or "interrupted" (a stage ended by SIGINT/SIGTERM, or the grid
    is stopping: left for the next grid to continue); the state file and, for a failure,
    ``RUN_DIR/failed.json`` record it. ``display``: a :mod:`progress` display (plain lines).
    """
    display = display or progress.Lines()
    stopper = stopper or Stopper()
    run_dir = os.path.join(out, run["dir"])
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    log_path = _log_path(out, run)
    _forget_failure(out, run)
    previous = read_state(out)["runs"].get(run["id"], {})
    error = None
    for attempt in range(1, attempts + 1):
        update_run(out, run, status="running", attempt=attempt, host=os.uname().nodename,
                   pid=os.getpid(), log=os.path.relpath(log_path, out),
                   attempts=previous.get("attempts", 0) + attempt)
        error = None
        for stage in STAGES:
            if stage_done(run_dir, stage):
                continue
            display.stage(run["id"], stage, attempt)
            rc = run_logged(stopper, stage_argv(stage, run, run_dir, config), log_path, stage, attempt, env)
            if stopper.interrupted(rc):
                display.line(f"[grid] {run['id']}: {stage} interrupted; the next grid continues it")
                update_run(out, run, status="interrupted", error=None)
                return "interrupted"
            if rc != 0 or not stage_done(run_dir, stage):
                error = {"stage": stage, "exit_status": rc, "attempt": attempt,
                         "message": last_error_line(log_path)}
                display.line(f"[grid] {run['id']}: {stage} failed (exit status {rc}): {error['message']}")
                break
        if error is None:
            update_run(out, run, status="done", error=None, finished=now())
            return "done"
    record_failure(out, run, error, attempts, log_path)
    return "failed"


def run_batch(out, runs, config, env, attempts=2, display=None, stopper=None):
    """Train ``runs`` (one net and D, different seeds) at once with ``train --batch``, tried up to
    ``attempts`` times for the runs not finished, then extract and analyse each run alone
    (:func:`run_stages`). Returns {run id: "done" | "failed" | "interrupted"}. The batch's
    output goes to ``OUT/logs/{net}_d{D}_batch{seeds}.log`` and is appended to every run's log."""
    display = display or progress.Lines()
    stopper = stopper or Stopper()
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    batch_log = os.path.join(out, "logs", batch_name(runs) + ".log")
    states = read_state(out)["runs"]
    results, errors = {}, {}
    for run in runs:
        _forget_failure(out, run)
    pending = [r for r in runs if not stage_done(os.path.join(out, r["dir"]), "train")]
    for attempt in range(1, attempts + 1):
        if not pending:
            break
        for run in pending:
            update_run(out, run, status="running", attempt=attempt, host=os.uname().nodename, pid=os.getpid(),
                       log=os.path.relpath(_log_path(out, run), out),
                       attempts=states.get(run["id"], {}).get("attempts", 0) + attempt,
                       batched_with=[r["id"] for r in pending if r is not run])
        ids = ", ".join(r["id"] for r in pending)
        display.stage(ids, "train batched", attempt)
        offset = os.path.getsize(batch_log) if os.path.exists(batch_log) else 0
        rc = run_logged(stopper, batch_train_argv(pending, out, config), batch_log, "train", attempt, env)
        with open(batch_log, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        for run in pending:
            with open(_log_path(out, run), "a") as f:
                f.write(text)
        if stopper.interrupted(rc):
            display.line(f"[grid] {ids}: train interrupted; the next grid continues it")
            for run in pending:
                update_run(out, run, status="interrupted", error=None)
                results[run["id"]] = "interrupted"
            return results
        still = []
        for run in pending:
            run_dir = os.path.join(out, run["dir"])
            if stage_done(run_dir, "train"):
                continue
            failure = (read_json(os.path.join(run_dir, MANIFEST)) or {}).get("failure") or {}
            message = failure.get("message") or last_error_line(batch_log)
            errors[run["id"]] = {"stage": "train", "exit_status": rc, "attempt": attempt, "message": message}
            display.line(f"[grid] {run['id']}: train failed (exit status {rc}): {message}")
            still.append(run)
        pending = still
    for run in runs:
        if run in pending:
            record_failure(out, run, errors[run["id"]], attempts, batch_log)
            results[run["id"]] = "failed"
        else:
            results[run["id"]] = run_stages(out, run, config, env, attempts, display, stopper)
    return results


def make_report(out, plan, log=print):
    """Run the report over the grid; returns the report's exit status."""
    if not report_dirs(out, plan):
        log("[grid] report: no run directory; nothing to report")
        return 1
    argv = report_argv(out, plan)
    log(f"[grid] report: {' '.join(map(shlex.quote, argv[3:5]))} ... --out {argv[-1]}")
    with open(os.path.join(out, "report.log"), "a") as f:
        f.write(f"\n=== {now()} {' '.join(map(shlex.quote, argv))}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=thread_env(usable_cores())).returncode
    with locked_state(out) as state:
        state["report"] = {"status": "done" if rc == 0 else "failed", "exit_status": rc,
                           "path": os.path.join("report", "index.html"), "log": "report.log",
                           "finished": now()}
    if rc != 0:
        log(f"[grid] report failed (exit status {rc}): {last_error_line(os.path.join(out, 'report.log'))}")
    else:
        log(f"[grid] report: {os.path.abspath(os.path.join(out, 'report', 'index.html'))}")
    return rc


def run_local(out, plan, config, jobs, retry_failed=False, log=print, on_done=None, report=True, display=None):
    """Run the grid here with ``jobs`` workers; returns {"done": n, "failed": m, ...}.
    ``config["batch_runs"]`` > 1: runs of one (net, D) train at once (:func:`run_batch`).
    ``on_done(run)`` is called (in a worker thread) as each single run finishes; ``report``:
    make the grid's report at the end. ``display``: a :mod:`progress` display (default: plain
    lines through ``log``)."""
    display = display or progress.Lines(log)
    check_output_dir(out, count_unfinished(out, plan))
    todo = prepare(out, plan, config, retry_failed)
    threads = max(1, usable_cores() // max(1, jobs))
    env = thread_env(threads)
    display.line(f"[grid] {len(plan)} runs, {len(plan) - len(todo)} already finished or failed, "
                 f"{len(todo)} to do with {jobs} workers x {threads} threads")
    config = dict(config, threads=threads)
    stopper = Stopper()

    def work(unit):
        try:
            if len(unit) > 1:
                statuses = run_batch(out, unit, config, env, display=display, stopper=stopper)
            else:
                statuses = {unit[0]["id"]: run_stages(out, unit[0], config, env, display=display, stopper=stopper)}
                if statuses[unit[0]["id"]] == "done" and on_done is not None:
                    on_done(unit[0])
        finally:
            display.idle()
        for status in statuses.values():
            display.finished(status)
        return statuses

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopper.stop) if in_main else None
    try:
        units = make_batches(out, todo, config.get("batch_runs", 1))
        display.start(len(plan), len(plan) - len(todo), min(max(1, jobs), max(1, len(units))))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(work, unit) for unit in units]
            while True:
                try:
                    if not wait(futures, timeout=1.0).not_done:
                        break
                    display.tick()
                except KeyboardInterrupt:
                    stopper.stop()
            for fut in futures:
                fut.result()
    finally:
        display.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    counts = summary(out, plan)
    if stopper.event.is_set():
        display.line("[grid] interrupted: run the same command again to finish what is missing")
        return dict(counts, interrupted=True)
    if report:
        make_report(out, plan, log=display.line)
    return summary(out, plan)
