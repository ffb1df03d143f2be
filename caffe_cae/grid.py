"""The paper's grid: every (net, D, seed) trained, extracted and analysed, then one report.

A run is a dict ``{"id", "net", "dim", "seed", "dir"}``; its directory is
``OUT/{net}_d{D}/run{seed}``. Each run goes through the stages train -> extract -> analyze,
each a ``python -m caffe_cae <stage>`` subprocess (run in the grid's current directory)
whose output goes to ``OUT/logs/{id}.log``.
A stage is skipped when its output says it is complete:

* train: ``manifest.json`` with a finished ``status`` (a run left unfinished is continued
  with ``train --resume``);
* extract: ``codes.h5`` and ``blobs_digit5.h5``;
* analyze: ``analysis.json``.

So re-running the grid after an interruption finishes only what is missing. A run whose
stages fail is tried once more at once (continuing where it stopped); a run that fails
twice is recorded as failed (``RUN_DIR/failed.json`` and the grid state) and is not tried
again unless ``retry_failed``. The grid state ``OUT/grid.json`` (per-run status, attempts,
error, log) is updated under a lock (``OUT/.grid.lock``) by every worker, local or Slurm.

With ``config["batch_runs"]`` K > 1 (torch backend, local executor), the runs of one
(net, D) still to train from the same iteration are trained K at a time by one
``train --batch`` (:func:`make_batches`, :func:`run_batch`); extract and analyze stay per run.

Executors: ``local`` runs ``jobs`` runs at once in this process's threads, each
subprocess with BLAS/OpenMP threads = cores // jobs; ``slurm`` writes an array script
(one task per unfinished run, at most ``jobs`` at once) and a report script that depends
on it (``afterany``), and submits them with ``sbatch`` (shared file system assumed).

Limits: the free-space check is an estimate (:data:`MB_PER_RUN` per unfinished run); a
run's completion is judged from its files, so a run directory edited by hand is trusted.
"""
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

from . import REPO_ROOT
from .errors import CaeError
from .specs import NETS, PAPER_DIMS

STAGES = ("train", "extract", "analyze")
#: manifest.json "status" values of a finished training run.
TRAIN_DONE = ("complete", "completed", "done", "finished")
#: Disk space one run needs, estimated: snapshots, codes.h5 with reconstructions, figures.
MB_PER_RUN = 80
#: Disk space always kept free on top of the runs' needs.
MB_MARGIN = 100
STATE_FILE = "grid.json"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# -- the plan -------------------------------------------------------------------------

def parse_nets(text):
    """``all`` or a comma list of net names -> tuple of nets (CaeError on unknown names)."""
    if text.strip() == "all":
        return NETS
    nets = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in nets if n not in NETS]
    if bad or not nets:
        raise CaeError(f"--nets: expected 'all' or a comma list of {', '.join(NETS)}; got {text!r}")
    return nets


def parse_dims(text):
    """``paper`` (None: each net's paper dims) or a comma list of positive integers."""
    if text.strip() == "paper":
        return None
    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise CaeError(f"--dims: expected 'paper' or a comma list of positive integers; got {text!r}")
    return dims


def expand(nets, dims, runs):
    """The grid's runs in a fixed order: nets, then dims (paper's if None), then seeds 1..runs."""
    if runs < 1:
        raise CaeError(f"--runs: expected a positive integer, got {runs}")
    plan = []
    for net in nets:
        for dim in (PAPER_DIMS[net] if dims is None else dims):
            for seed in range(1, runs + 1):
                rel = f"{net}_d{dim}/run{seed}"
                plan.append({"id": f"{net}_d{dim}_run{seed}", "net": net, "dim": dim,
                             "seed": seed, "dir": rel})
    return plan


# -- stage completion -----------------------------------------------------------------

def read_json(path):
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def manifest_iters(manifest):
    """The iteration count a manifest asked for, or None if it does not say."""
    for key in ("iters", "max_iter"):
        if isinstance(manifest.get(key), int):
            return manifest[key]
    solver = manifest.get("solver")
    if isinstance(solver, dict) and isinstance(solver.get("max_iter"), int):
        return solver["max_iter"]
    return None


def stage_done(run_dir, stage):
    """Whether ``stage`` of the run in ``run_dir`` has finished (judged from its files)."""
    if stage == "train":
        manifest = read_json(os.path.join(run_dir, "manifest.json"))
        return bool(manifest) and str(manifest.get("status", "")).lower() in TRAIN_DONE
    if stage == "extract":
        return all(os.path.isfile(os.path.join(run_dir, n)) for n in ("codes.h5", "blobs_digit5.h5"))
    if stage == "analyze":
        return os.path.isfile(os.path.join(run_dir, "analysis.json"))
    raise ValueError(stage)


def run_complete(run_dir):
    return all(stage_done(run_dir, s) for s in STAGES)


def count_unfinished(out, plan):
    return sum(not run_complete(os.path.join(out, run["dir"])) for run in plan)


def train_started(run_dir):
    """A training run was begun in ``run_dir`` (so it is continued with --resume)."""
    return os.path.isfile(os.path.join(run_dir, "manifest.json"))


def stage_argv(stage, run, run_dir, config):
    """The command line of one stage of one run."""
    base = [sys.executable, "-m", "caffe_cae"]
    if stage == "train":
        argv = base + ["train", "--net", run["net"], "--dim", str(run["dim"]), "--mode", config["mode"],
                       "--iters", str(config["iters"]), "--seed", str(run["seed"]), "--out", run_dir]
        for pair in config.get("sets", ()):
            argv += ["--set", pair]
        if config.get("data_root"):
            argv += ["--data-root", config["data_root"]]
        if config.get("backend", "caffe") != "caffe":
            argv += ["--backend", config["backend"]]
        if train_started(run_dir):
            argv.append("--resume")
        return argv
    if stage == "extract" and config.get("backend", "caffe") != "caffe":
        return base + [stage, "--backend", config["backend"], run_dir]
    if stage == "analyze":
        return base + ["analyze", "--jobs", str(config.get("threads", 1)),
                       *config.get("analyze_args", ()), run_dir]
    return base + [stage, run_dir]


def resume_point(run_dir):
    """The iteration a started run continues from (its last snapshot; 0 when none or new)."""
    manifest = read_json(os.path.join(run_dir, "manifest.json")) or {}
    iters = [s.get("iter", 0) for s in manifest.get("snapshots") or []
             if os.path.isfile(os.path.join(run_dir, s.get("caffemodel", "")))
             and os.path.isfile(os.path.join(run_dir, s.get("solverstate", "")))]
    return max(iters) if iters else 0


def make_batches(out, runs, size):
    """Units of work, order kept: runs whose training is still to do grouped by (net, D, resume
    point) into batches of up to ``size`` (trained at once by ``train --batch``); each other run
    alone. ``size`` 1: every run alone."""
    units, open_batches = [], {}
    for run in runs:
        run_dir = os.path.join(out, run["dir"])
        if size <= 1 or stage_done(run_dir, "train"):
            units.append([run])
            continue
        key = (run["net"], run["dim"], resume_point(run_dir))
        unit = open_batches.get(key)
        if unit is None or len(unit) >= size:
            unit = open_batches[key] = []
            units.append(unit)
        unit.append(run)
    return units


def batch_train_argv(runs, out, config):
    """``caffe-cae train --batch SEED:DIR ...`` for runs of one (net, D) trained at once."""
    first = runs[0]
    argv = [sys.executable, "-m", "caffe_cae", "train", "--net", first["net"], "--dim", str(first["dim"]),
            "--mode", config["mode"], "--iters", str(config["iters"]), "--backend", config.get("backend", "torch")]
    for pair in config.get("sets", ()):
        argv += ["--set", pair]
    if config.get("data_root"):
        argv += ["--data-root", config["data_root"]]
    for run in runs:
        argv += ["--batch", "%d:%s" % (run["seed"], os.path.join(out, run["dir"]))]
    if any(train_started(os.path.join(out, run["dir"])) for run in runs):
        argv.append("--resume")
    return argv


def batch_name(runs):
    return "%s_d%d_batch%s" % (runs[0]["net"], runs[0]["dim"], "-".join(str(r["seed"]) for r in runs))


# -- the state file -------------------------------------------------------------------

@contextlib.contextmanager
def locked_state(out):
    """Yield the grid state (a dict) under an exclusive lock; it is written back on exit."""
    with open(os.path.join(out, ".grid.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_json(os.path.join(out, STATE_FILE)) or {}
            state.setdefault("runs", {})
            yield state
            write_json(os.path.join(out, STATE_FILE), state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_json(path, value):
    """Write ``value`` as JSON to ``path`` atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def update_run(out, run, **fields):
    with locked_state(out) as state:
        entry = state["runs"].setdefault(run["id"], {})
        entry.update({k: run[k] for k in ("net", "dim", "seed", "dir")})
        entry.update(fields)
        entry["updated"] = _now()


# -- checks before any training -------------------------------------------------------

def check_output_dir(out, n_pending):
    """Create ``out`` if needed and check it is writable with room for ``n_pending`` runs."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise CaeError(f"--out {out}: cannot create the output directory ({exc.strerror})")
    if not os.path.isdir(out):
        raise CaeError(f"--out {out}: expected a directory, found a file")
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise CaeError(f"--out {out}: output directory is not writable ({exc.strerror})")
    need = n_pending * MB_PER_RUN + MB_MARGIN
    free = shutil.disk_usage(out).free // 2 ** 20
    if n_pending and free < need:
        raise CaeError(f"--out {out}: {free} MB free, the {n_pending} unfinished runs need about "
                       f"{need} MB ({MB_PER_RUN} MB each + {MB_MARGIN} MB margin)")


# -- one run --------------------------------------------------------------------------

def thread_env(threads):
    """This process's environment with ``threads`` BLAS/OpenMP threads and the package importable."""
    env = dict(os.environ)
    for name in THREAD_VARS:
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return env


#: Exit statuses of a stage stopped on purpose (SIGINT/SIGTERM): not a failure, not retried.
INTERRUPTED = (130, 143, -signal.SIGINT, -signal.SIGTERM)


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


def run_stages(out, run, config, env, attempts=2, log=print, stopper=None):
    """Bring one run to completion: its missing stages, tried up to ``attempts`` times.

    Returns "done", "failed" or "interrupted" (a stage ended by SIGINT/SIGTERM, or the grid
    is stopping: left for the next grid to continue); the state file and, for a failure,
    ``RUN_DIR/failed.json`` record it.
    """
    stopper = stopper or Stopper()
    run_dir = os.path.join(out, run["dir"])
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    log_path = os.path.join(out, "logs", run["id"] + ".log")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, "failed.json"))  # train wants a run directory of its own
    previous = (read_json(os.path.join(out, STATE_FILE)) or {}).get("runs", {}).get(run["id"], {})
    error = None
    for attempt in range(1, attempts + 1):
        update_run(out, run, status="running", attempt=attempt, host=os.uname().nodename,
                   pid=os.getpid(), log=os.path.relpath(log_path, out),
                   attempts=previous.get("attempts", 0) + attempt)
        error = None
        for stage in STAGES:
            if stage_done(run_dir, stage):
                continue
            argv = stage_argv(stage, run, run_dir, config)
            log(f"[grid] {run['id']}: {stage} (attempt {attempt})")
            started = time.monotonic()
            with open(log_path, "a") as f:
                f.write(f"\n=== {_now()} {stage} attempt {attempt}: {' '.join(map(shlex.quote, argv))}\n")
                f.flush()
                rc = stopper.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
                f.write(f"=== {_now()} {stage} exit status {rc} after {time.monotonic() - started:.1f} s\n")
            if rc is None or rc in INTERRUPTED or stopper.event.is_set():
                log(f"[grid] {run['id']}: {stage} interrupted; the next grid continues it")
                update_run(out, run, status="interrupted", error=None)
                return "interrupted"
            if rc != 0 or not stage_done(run_dir, stage):
                error = {"stage": stage, "exit_status": rc, "attempt": attempt,
                         "message": _last_error_line(log_path)}
                log(f"[grid] {run['id']}: {stage} failed (exit status {rc}): {error['message']}")
                break
        if error is None:
            update_run(out, run, status="done", error=None, finished=_now())
            return "done"
    if os.path.isdir(run_dir):
        write_json(os.path.join(run_dir, "failed.json"),
                   dict(error, attempts=attempts, log=os.path.abspath(log_path)))
    update_run(out, run, status="failed", error=error, finished=_now())
    return "failed"


def _last_error_line(path):
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


def run_batch(out, runs, config, env, attempts=2, log=print, stopper=None):
    """Train ``runs`` (one net and D, different seeds) at once with ``train --batch``, tried up to
    ``attempts`` times for the runs not finished, then extract and analyse each run alone
    (:func:`run_stages`). Returns {run id: "done" | "failed" | "interrupted"}. The batch's
    output goes to ``OUT/logs/{net}_d{D}_batch{seeds}.log`` and is appended to every run's log."""
    stopper = stopper or Stopper()
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    batch_log = os.path.join(out, "logs", batch_name(runs) + ".log")
    states = (read_json(os.path.join(out, STATE_FILE)) or {}).get("runs", {})
    results, errors = {}, {}
    for run in runs:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, run["dir"], "failed.json"))
    pending = [r for r in runs if not stage_done(os.path.join(out, r["dir"]), "train")]
    for attempt in range(1, attempts + 1):
        if not pending:
            break
        for run in pending:
            update_run(out, run, status="running", attempt=attempt, host=os.uname().nodename, pid=os.getpid(),
                       log=os.path.relpath(os.path.join(out, "logs", run["id"] + ".log"), out),
                       attempts=states.get(run["id"], {}).get("attempts", 0) + attempt,
                       batched_with=[r["id"] for r in pending if r is not run])
        argv = batch_train_argv(pending, out, config)
        ids = ", ".join(r["id"] for r in pending)
        log(f"[grid] {ids}: train batched (attempt {attempt})")
        started = time.monotonic()
        offset = os.path.getsize(batch_log) if os.path.exists(batch_log) else 0
        with open(batch_log, "a") as f:
            f.write(f"\n=== {_now()} train attempt {attempt}: {' '.join(map(shlex.quote, argv))}\n")
            f.flush()
            rc = stopper.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
            f.write(f"=== {_now()} train exit status {rc} after {time.monotonic() - started:.1f} s\n")
        with open(batch_log, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        for run in pending:
            with open(os.path.join(out, "logs", run["id"] + ".log"), "a") as f:
                f.write(text)
        if rc is None or rc in INTERRUPTED or stopper.event.is_set():
            log(f"[grid] {ids}: train interrupted; the next grid continues it")
            for run in pending:
                update_run(out, run, status="interrupted", error=None)
                results[run["id"]] = "interrupted"
            return results
        still = []
        for run in pending:
            run_dir = os.path.join(out, run["dir"])
            if stage_done(run_dir, "train"):
                continue
            failure = (read_json(os.path.join(run_dir, "manifest.json")) or {}).get("failure") or {}
            message = failure.get("message") or _last_error_line(batch_log)
            errors[run["id"]] = {"stage": "train", "exit_status": rc, "attempt": attempt, "message": message}
            log(f"[grid] {run['id']}: train failed (exit status {rc}): {message}")
            still.append(run)
        pending = still
    for run in runs:
        if run in pending:
            run_dir = os.path.join(out, run["dir"])
            error = errors[run["id"]]
            if os.path.isdir(run_dir):
                write_json(os.path.join(run_dir, "failed.json"),
                           dict(error, attempts=attempts, log=os.path.abspath(batch_log)))
            update_run(out, run, status="failed", error=error, finished=_now())
            results[run["id"]] = "failed"
        else:
            results[run["id"]] = run_stages(out, run, config, env, attempts, log, stopper)
    return results


# -- the grid -------------------------------------------------------------------------

def prepare(out, plan, config, retry_failed=False):
    """Record the plan in the state file; return the runs still to do (order kept).

    A run marked failed is left alone unless ``retry_failed``; a run whose directory holds
    a training run of another length is refused (CaeError), nothing is overwritten.
    """
    for run in plan:
        manifest = read_json(os.path.join(out, run["dir"], "manifest.json"))
        iters = manifest_iters(manifest) if manifest else None
        if iters is not None and iters != config["iters"]:
            raise CaeError(f"{os.path.join(out, run['dir'], 'manifest.json')}: run trained for {iters} "
                           f"iterations, the grid asks for {config['iters']} (use another --out)")
    todo = []
    with locked_state(out) as state:
        state["config"] = dict(config)
        state["plan"] = [run["id"] for run in plan]
        for run in plan:
            entry = state["runs"].setdefault(run["id"], {"attempts": 0})
            entry.update({k: run[k] for k in ("net", "dim", "seed", "dir")})
            run_dir = os.path.join(out, run["dir"])
            if run_complete(run_dir):
                entry["status"] = "done"
                entry.pop("error", None)
            elif entry.get("status") == "failed" and not retry_failed:
                pass
            else:
                entry["status"] = "pending"
                todo.append(run)
    return todo


def summary(out, plan):
    state = read_json(os.path.join(out, STATE_FILE)) or {"runs": {}}
    counts = {}
    for run in plan:
        status = state["runs"].get(run["id"], {}).get("status", "pending")
        counts[status] = counts.get(status, 0) + 1
    return counts


def report_argv(out, plan):
    """``caffe-cae report`` over the grid's runs, done and failed alike (every run directory
    that exists; a run that failed before training began shows as failed from its
    ``failed.json``)."""
    dirs = [os.path.join(out, run["dir"]) for run in plan if os.path.isdir(os.path.join(out, run["dir"]))]
    return [sys.executable, "-m", "caffe_cae", "report", *dirs, "--out", os.path.join(out, "report")]


def make_report(out, plan, log=print):
    """Run the report over the grid; returns the report's exit status."""
    argv = report_argv(out, plan)
    if "report" == argv[-3]:  # no run directory between `report` and `--out DIR`
        log("[grid] report: no run directory; nothing to report")
        return 1
    log(f"[grid] report: {' '.join(map(shlex.quote, argv[3:5]))} ... --out {argv[-1]}")
    with open(os.path.join(out, "report.log"), "a") as f:
        f.write(f"\n=== {_now()} {' '.join(map(shlex.quote, argv))}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=thread_env(usable_cores())).returncode
    with locked_state(out) as state:
        state["report"] = {"status": "done" if rc == 0 else "failed", "exit_status": rc,
                           "path": os.path.join("report", "index.html"), "log": "report.log",
                           "finished": _now()}
    if rc != 0:
        log(f"[grid] report failed (exit status {rc}): {_last_error_line(os.path.join(out, 'report.log'))}")
    else:
        log(f"[grid] report: {os.path.abspath(os.path.join(out, 'report', 'index.html'))}")
    return rc


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_local(out, plan, config, jobs, retry_failed=False, log=print, on_done=None, report=True):
    """Run the grid here with ``jobs`` workers; returns {"done": n, "failed": m, ...}.
    ``config["batch_runs"]`` > 1: runs of one (net, D) train at once (:func:`run_batch`).
    ``on_done(run)`` is called (in a worker thread) as each single run finishes; ``report``:
    make the grid's report at the end."""
    check_output_dir(out, count_unfinished(out, plan))
    todo = prepare(out, plan, config, retry_failed)
    threads = max(1, usable_cores() // max(1, jobs))
    env = thread_env(threads)
    log(f"[grid] {len(plan)} runs, {len(plan) - len(todo)} already finished or failed, "
        f"{len(todo)} to do with {jobs} workers x {threads} threads")
    lock = threading.Lock()

    config = dict(config, threads=threads)
    stopper = Stopper()

    def work(unit):
        def say(msg):
            with lock:
                log(msg)
        if len(unit) > 1:
            return run_batch(out, unit, config, env, log=say, stopper=stopper)
        status = run_stages(out, unit[0], config, env, log=say, stopper=stopper)
        if status == "done" and on_done is not None:
            on_done(unit[0])
        return status

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stopper.stop) if in_main else None
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            units = make_batches(out, todo, config.get("batch_runs", 1))
            futures = [pool.submit(work, unit) for unit in units]
            while True:
                try:
                    if not wait(futures, timeout=1.0).not_done:
                        break
                except KeyboardInterrupt:
                    stopper.stop()
            for fut in futures:
                fut.result()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    counts = summary(out, plan)
    if stopper.event.is_set():
        log("[grid] interrupted: run the same command again to finish what is missing")
        return dict(counts, interrupted=True)
    if report:
        make_report(out, plan, log=log)
    return summary(out, plan)


# -- Slurm ----------------------------------------------------------------------------

def slurm_scripts(out, todo_file, n_tasks, config, jobs, cpus_per_task=1, partition=None,
                  time_limit=None, extra=()):
    """(array script, report script) texts for ``n_tasks`` runs listed in ``todo_file``."""
    out = os.path.abspath(out)
    logs = os.path.join(out, "slurm", "logs")
    py = shlex.quote(sys.executable)
    common = [f"#SBATCH --chdir={os.getcwd()}"]
    if partition:
        common.append(f"#SBATCH --partition={partition}")
    common += [f"#SBATCH {x}" for x in extra]
    array = ["#!/bin/bash", "#SBATCH --job-name=cae-grid",
             f"#SBATCH --array=0-{n_tasks - 1}%{max(1, jobs)}",
             f"#SBATCH --cpus-per-task={cpus_per_task}",
             f"#SBATCH --output={logs}/%A_%a.out"] + common
    if time_limit:
        array.append(f"#SBATCH --time={time_limit}")
    array += ["# One task per unfinished run of the grid: train -> extract -> analyze (tried twice).",
              "set -u",
              f"export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cpus_per_task}}}",
              "export OPENBLAS_NUM_THREADS=$OMP_NUM_THREADS MKL_NUM_THREADS=$OMP_NUM_THREADS",
              f"exec {py} -m caffe_cae.grid task {shlex.quote(out)} {shlex.quote(todo_file)} "
              "\"$SLURM_ARRAY_TASK_ID\""]
    report = ["#!/bin/bash", "#SBATCH --job-name=cae-report", "#SBATCH --cpus-per-task=1",
              f"#SBATCH --output={logs}/report_%j.out"] + common + [
              "# After every task of the array has ended (afterany): the report over the grid.",
              "set -u",
              f"exec {py} -m caffe_cae.grid report {shlex.quote(out)}"]
    return "\n".join(array) + "\n", "\n".join(report) + "\n"


def submit_slurm(out, plan, config, jobs, dry_run=False, retry_failed=False, cpus_per_task=1,
                 partition=None, time_limit=None, extra=(), log=print, env=None):
    """Write the scripts and submit the array and the report job; returns (array_id, report_id).
    ``--batch-runs`` > 1 is refused (one array task is one run)."""
    if config.get("batch_runs", 1) > 1:
        raise CaeError("--batch-runs with --executor slurm: not supported (one array task trains one run); "
                       "use --executor local or --batch-runs 1")
    if dry_run:
        todo = [r for r in plan if not run_complete(os.path.join(out, r["dir"]))]
        array, report = slurm_scripts(out, os.path.join(os.path.abspath(out), "slurm", "tasks.json"),
                                      max(1, len(todo)), config, jobs, cpus_per_task, partition,
                                      time_limit, extra)
        log(f"# {len(todo)} array tasks\n# --- grid_array.sh\n{array}# --- grid_report.sh "
            f"(sbatch --dependency=afterany:<array job>)\n{report}")
        return None, None
    if shutil.which("sbatch", path=(env or os.environ).get("PATH")) is None:
        raise CaeError("--executor slurm: sbatch not found on PATH (is this a Slurm login node?); "
                       "use --executor local")
    check_output_dir(out, count_unfinished(out, plan))
    todo = prepare(out, plan, config, retry_failed)
    sdir = os.path.join(os.path.abspath(out), "slurm")
    os.makedirs(os.path.join(sdir, "logs"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_json(os.path.join(sdir, f"plan-{stamp}.json"), {"plan": plan, "config": config})
    tasks_file = os.path.join(sdir, f"tasks-{stamp}.json")
    write_json(tasks_file, {"tasks": todo, "config": config, "plan": plan})
    array, report = slurm_scripts(out, tasks_file, len(todo), config, jobs, cpus_per_task,
                                  partition, time_limit, extra)
    paths = {}
    for name, text in (("grid_array.sh", array), ("grid_report.sh", report)):
        paths[name] = os.path.join(sdir, name)
        with open(paths[name], "w") as f:
            f.write(text)
    array_id = None
    if todo:
        array_id = _sbatch([paths["grid_array.sh"]], env)
        log(f"[grid] submitted {len(todo)} runs as job array {array_id} (at most {jobs} at once); "
            f"logs in {os.path.join(sdir, 'logs')}")
    dep = [f"--dependency=afterany:{array_id}"] if array_id else []
    report_id = _sbatch(dep + [paths["grid_report.sh"]], env)
    log(f"[grid] report job {report_id}: {os.path.join(os.path.abspath(out), 'report', 'index.html')}")
    with locked_state(out) as state:
        state["slurm"] = {"array_job": array_id, "report_job": report_id, "tasks_file": tasks_file,
                          "submitted": _now()}
    return array_id, report_id


def _sbatch(args, env):
    res = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise CaeError(f"sbatch {args[-1]}: {res.stderr.strip() or 'failed'} (exit status {res.returncode})")
    return res.stdout.strip().split(";")[0]


def slurm_task(out, tasks_file, index):
    """Entry point of one array task: run the ``index``-th unfinished run of ``tasks_file``."""
    spec = read_json(tasks_file)
    if spec is None:
        raise CaeError(f"{tasks_file}: missing or not a grid task list")
    try:
        run = spec["tasks"][int(index)]
    except (IndexError, ValueError):
        raise CaeError(f"{tasks_file}: no task {index}")
    if run_complete(os.path.join(out, run["dir"])):
        update_run(out, run, status="done")
        return "done"
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    return run_stages(out, run, dict(spec["config"], threads=threads), thread_env(threads),
                      log=lambda m: print(m, flush=True))


def slurm_report(out):
    """Entry point of the report job: mark runs that never ran, then make the report."""
    state = read_json(os.path.join(out, STATE_FILE)) or {}
    plan_ids = state.get("plan", [])
    plan = []
    with locked_state(out) as st:
        for rid in plan_ids:
            entry = st["runs"].get(rid, {})
            run = {"id": rid, **{k: entry.get(k) for k in ("net", "dim", "seed", "dir")}}
            plan.append(run)
            if run_complete(os.path.join(out, run["dir"])):
                entry["status"] = "done"
            elif entry.get("status") in ("pending", "running"):
                # The task ended without recording an outcome (cancelled, time limit, node lost):
                # not a failure of the run; submitting the grid again continues it.
                entry["status"] = "interrupted"
                entry["error"] = {"stage": "unknown", "message": "the Slurm task ended without "
                                  "finishing the run (cancelled, time limit or node failure?)"}
    rc = make_report(out, plan, log=lambda m: print(m, flush=True))
    counts = summary(out, plan)
    print(f"[grid] {counts}", flush=True)
    return rc


def main(argv=None):
    """``python -m caffe_cae.grid task OUT TASKS INDEX`` | ``report OUT`` (Slurm job entry points)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 4 and argv[0] == "task":
            return 0 if slurm_task(argv[1], argv[2], argv[3]) == "done" else 1
        if len(argv) == 2 and argv[0] == "report":
            return slurm_report(argv[1])
    except CaeError as exc:
        print(f"caffe-cae: error: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m caffe_cae.grid task OUT TASKS_JSON INDEX | report OUT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
