"""The grid state ``OUT/grid.json`` (per-run status, attempts, error, log), kept under a lock
(``OUT/.grid.lock``) by every worker, local or Slurm, and the checks made before any training.

Limits: the free-space check is an estimate (:data:`MB_PER_RUN` per unfinished run).
"""
import contextlib
import datetime
import fcntl
import os
import shutil
import tempfile

from ..errors import CaeError
from ..rundir import MANIFEST
from ..files import write_json
from .plan import manifest_iters, read_json, run_complete

STATE_FILE = "grid.json"
#: Disk space one run needs, estimated: snapshots, codes.h5 with reconstructions, figures.
MB_PER_RUN = 80
#: Disk space always kept free on top of the runs' needs.
MB_MARGIN = 100
RUN_KEYS = ("net", "dim", "seed", "dir")


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_state(out):
    """The grid state as last written (no lock; ``{"runs": {}}`` when there is none)."""
    state = read_json(os.path.join(out, STATE_FILE)) or {}
    state.setdefault("runs", {})
    return state


@contextlib.contextmanager
def locked_state(out):
    """Yield the grid state (a dict) under an exclusive lock; it is written back on exit."""
    with open(os.path.join(out, ".grid.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = read_state(out)
            yield state
            write_json(os.path.join(out, STATE_FILE), state, sort_keys=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_run(out, run, **fields):
    with locked_state(out) as state:
        entry = state["runs"].setdefault(run["id"], {})
        entry.update({k: run[k] for k in RUN_KEYS})
        entry.update(fields)
        entry["updated"] = now()


def record_failure(out, run, error, attempts, log_path):
    """Mark ``run`` failed in the state and in ``RUN_DIR/failed.json`` (when the directory exists)."""
    run_dir = os.path.join(out, run["dir"])
    if os.path.isdir(run_dir):
        write_json(os.path.join(run_dir, "failed.json"),
                   dict(error, attempts=attempts, log=os.path.abspath(log_path)), sort_keys=True)
    update_run(out, run, status="failed", error=error, finished=now())


def prepare(out, plan, config, retry_failed=False):
    """Record the plan in the state file; return the runs still to do (order kept).

    A run marked failed is left alone unless ``retry_failed``; a run whose directory holds
    a training run of another length is refused (CaeError), nothing is overwritten.
    """
    for run in plan:
        manifest = read_json(os.path.join(out, run["dir"], MANIFEST))
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
            entry.update({k: run[k] for k in RUN_KEYS})
            if run_complete(os.path.join(out, run["dir"])):
                entry["status"] = "done"
                entry.pop("error", None)
            elif entry.get("status") == "failed" and not retry_failed:
                pass
            else:
                entry["status"] = "pending"
                todo.append(run)
    return todo


def summary(out, plan):
    """{status: number of the plan's runs} from the state file."""
    runs = read_state(out)["runs"]
    counts = {}
    for run in plan:
        status = runs.get(run["id"], {}).get("status", "pending")
        counts[status] = counts.get(status, 0) + 1
    return counts


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
