"""The run directory: the one place that knows a run's file names and paths.

A run directory (``caffe-cae train --out``) holds:

- :data:`MANIFEST` (``manifest.json``): what the run is and where it stands (see
  :mod:`caffe_cae.train`); read with :func:`read_manifest`, written with :func:`write_manifest`;
- :data:`LOG` (``log.jsonl``): the loss records; :meth:`RunDir.truncate_log` drops the records
  a resumed run makes again;
- :data:`SNAPSHOTS`/``{net}_d{D}_iter_K.caffemodel`` and ``.solverstate``
  (:meth:`RunDir.snapshot_prefix`, :meth:`RunDir.last_snapshot`);
- :data:`ENGINE_SOLVER` and :data:`ENGINE_LOG` (the backend's own messages);
- :data:`LOCK`: held by the process working on the run (:class:`RunLock`);
- after extraction :func:`codes_name` (``codes.h5``, ``codes_train.h5``) and :data:`BLOBS`
  (``blobs_digit5.h5``); after analysis :data:`ANALYSIS`.

Provenance recorded in manifests and benchmarks: :func:`now_iso`, :func:`git_info`,
:func:`host_info`. Every file is written through :mod:`caffe_cae.files`.
"""
import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import time

from . import REPO_ROOT, files
from .errors import CaeError

MANIFEST = "manifest.json"
LOG = "log.jsonl"
ENGINE_SOLVER = "engine_solver.prototxt"
ENGINE_LOG = "engine.log"
SNAPSHOTS = "snapshots"
LOCK = ".lock"
DIGIT = 5
BLOBS = "blobs_digit%d.h5" % DIGIT
ANALYSIS = "analysis.json"
SPLITS = ("test", "train")
#: solver fields the worker schedules itself, and their values in the engine solver (Caffe
#: insists on test_interval > 0 when there are test nets: the largest int32 is never reached)
SCHEDULED = {"test_interval": 2147483647, "snapshot": 0, "display": 0}


def codes_name(split):
    """``codes.h5`` for the test split (the paper's), ``codes_<split>.h5`` otherwise."""
    return "codes.h5" if split == "test" else "codes_%s.h5" % split


def default_run_dir(net, dim, seed):
    return os.path.join("runs", "%s_d%d_run%d" % (net, dim, seed))


def snapshot_prefix(folder, net, dim):
    return os.path.join(folder, SNAPSHOTS, "%s_d%d" % (net, dim))


def engine_solver_text(solver_text, folder, net, dim):
    """The solver the backend loads: the scheduled fields (:data:`SCHEDULED`) turned off, the
    net and snapshot prefix at ``folder``'s current place."""
    from .render import file_name

    lines = []
    for line in solver_text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in SCHEDULED:
            line = "%s: %d" % (key, SCHEDULED[key])
        elif key == "net":
            line = 'net: "%s"' % os.path.join(folder, file_name(net, dim, "train_test"))
        elif key == "snapshot_prefix":
            line = 'snapshot_prefix: "%s"' % snapshot_prefix(folder, net, dim)
        lines.append(line)
    return "\n".join(lines) + "\n"


def read_manifest(run_dir, required=True):
    """The run's manifest (a dict with ``net`` and ``dim``). A missing one is a CaeError
    ("not a run directory") when ``required``, else None; an unreadable one always a CaeError."""
    path = os.path.join(run_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        if not required:
            return None
        raise CaeError("%s: not a run directory (no %s); train first" % (run_dir, MANIFEST)) from None
    except (OSError, ValueError) as exc:
        raise CaeError("%s: not readable JSON (%s)" % (path, exc)) from None
    if not isinstance(value, dict) or "net" not in value or "dim" not in value:
        raise CaeError("%s: not a caffe-cae run manifest (expected 'net' and 'dim')" % path)
    return value


def write_manifest(run_dir, manifest):
    files.write_json(os.path.join(run_dir, MANIFEST), manifest, sort_keys=True)


class RunDir:
    """Paths and housekeeping of one run directory (``path`` made absolute)."""

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def log(self):
        return self.file(LOG)

    @property
    def engine_solver(self):
        return self.file(ENGINE_SOLVER)

    @property
    def engine_log(self):
        return self.file(ENGINE_LOG)

    def codes(self, split="test"):
        return self.file(codes_name(split))

    @property
    def blobs(self):
        return self.file(BLOBS)

    def read_manifest(self, required=True):
        return read_manifest(self.path, required)

    def write_manifest(self, manifest):
        write_manifest(self.path, manifest)

    def snapshot_prefix(self, net, dim):
        return snapshot_prefix(self.path, net, dim)

    def write_engine_solver(self, solver_text, net, dim):
        files.write_text(self.engine_solver, engine_solver_text(solver_text, self.path, net, dim))

    def last_snapshot(self, manifest):
        """The newest snapshot recorded in the manifest whose two files exist, or None; with
        ``caffemodel_path`` and ``solverstate_path`` (absolute)."""
        for snap in reversed(manifest.get("snapshots") or []):
            model, state = self.file(snap["caffemodel"]), self.file(snap["solverstate"])
            if os.path.isfile(model) and os.path.isfile(state):
                return dict(snap, caffemodel_path=model, solverstate_path=state)
        return None

    def truncate_log(self, last_iter):
        """Keep only the log records up to ``last_iter`` (those after it are made again)."""
        if not os.path.exists(self.log):
            return
        kept = []
        with open(self.log, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line)["iter"] <= last_iter:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue
        files.write_text(self.log, "".join(kept))

    def is_empty(self):
        """True when the directory is missing or holds nothing but the lock."""
        return not os.path.isdir(self.path) or not [n for n in os.listdir(self.path) if n != LOCK]

    def clear(self):
        """Remove everything but the lock (a run started again with --force)."""
        for name in os.listdir(self.path):
            if name == LOCK:
                continue
            path = self.file(name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)

    def make(self):
        files.ensure_dir(self.path, "run directory")

    def make_snapshots(self):
        files.ensure_dir(os.path.join(self.path, SNAPSHOTS), "snapshot directory")

    def lock(self):
        return RunLock(self.path)


class RunLock:
    """An exclusive lock on ``run_dir/.lock`` (CaeError when another process holds it)."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK)
        self.handle = open(self.path, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise CaeError("%s: the run is in use by another caffe-cae process" % run_dir) from None

    def release(self):
        if self.handle:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


# -- provenance ---------------------------------------------------------------------------

def now_iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def git_info():
    """{commit, dirty} of the checkout the package runs from (None, None from a wheel)."""
    if not REPO_ROOT:
        return {"commit": None, "dirty": None}

    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO_ROOT] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, universal_newlines=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def host_info():
    """{hostname, platform, cpu, cpus, threads} of this machine."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
            "cpus": os.cpu_count(), "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                                                if k in os.environ}}
