"""Training runs: render a net and its solver into a run directory, train it in a backend.

``train(net, dim, mode, iters, seed, out, ...)`` makes (or continues) a run directory:

- ``{net}_d{D}_train_test.prototxt``, ``{net}_d{D}_deploy.prototxt``, ``{net}_d{D}_solver.prototxt``:
  the rendered files (modern syntax); the solver names the net and the snapshot prefix by
  absolute paths, so ``caffe train -solver`` run from the data root uses them as they are;
- ``engine_solver.prototxt``: the solver pycaffe loads: the same with ``snapshot`` and
  ``display`` at 0 and ``test_interval`` at 2^31-1 (never reached), because the worker keeps that schedule itself (pycaffe
  cannot hand test losses back); rewritten at each session for the run's current place;
- ``manifest.json``: net, D, syntax, seed, every resolved setting (``settings``) and the
  overrides given, the data used, backend and engine (kind, Caffe version), CPU/GPU, git
  commit, host, sessions (start, end, iterations, status), wall time, ``iterations``,
  ``max_iter``, ``snapshots`` and ``status`` (running, finished, interrupted, failed);
- ``log.jsonl``: ``{"iter", "phase": "train", "loss": {...}}`` every display interval (the
  mean over the interval's iterations) and ``{"iter", "phase": "test-on-train" |
  "test-on-test", "loss": {...}}`` (means over the whole stage) at every test interval and
  at the end; loss keys ``cross_entropy``/``euclidean``, or ``contrastive``;
- ``snapshots/{net}_d{D}_iter_K.caffemodel`` and ``.solverstate``; ``engine.log`` (Caffe's
  own messages).

``train_batch(runs, ...)`` trains runs of one (net, D) that differ by the seed at once in the
torch backend (:mod:`caffe_cae.backends.torch_batch`), each run directory written as above.

Faults: SIGINT/SIGTERM (or ``Session.stop``) snapshot and end the run with status
``interrupted``; ``resume=True`` continues from the last snapshot with the same data order
(see :mod:`caffe_cae.backends.caffe_worker`); a non-finite loss ends the run with status
``failed`` and a message naming the iteration and the first non-finite blob; a finished
run is not overwritten without ``force``, an unfinished one not without ``resume`` or
``force``. Data paths (``data.dir``) are relative to ``data_root`` (default: the current
directory), where the worker runs; the run directory must be visible in the engine.
"""
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from . import REPO_ROOT, files, render, specs
from .errors import CaeError

SYNTAX = "modern"
MANIFEST = "manifest.json"
LOG = "log.jsonl"
ENGINE_SOLVER = "engine_solver.prototxt"
#: solver fields the worker schedules itself, and their values in engine_solver.prototxt
#: (Caffe insists on test_interval > 0 when there are test nets: the largest int32 is never reached)
SCHEDULED = {"test_interval": 2147483647, "snapshot": 0, "display": 0}


class RunFailed(Exception):
    """Training ended with status ``failed`` (message: why); the run directory says more."""


# -- small helpers ----------------------------------------------------------------------

def now_iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def write_json(path, value):
    """Write JSON to ``path`` atomically (sorted keys)."""
    files.write_json(path, value, sort_keys=True)


def read_manifest(run_dir):
    """The run's manifest (dict) or None when there is none; CaeError when unreadable."""
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise CaeError("%s: not a readable run manifest (%s)" % (path, exc)) from None
    if not isinstance(value, dict) or "net" not in value:
        raise CaeError("%s: not a caffe-cae run manifest (no 'net')" % path)
    return value


def default_run_dir(net, dim, seed):
    return os.path.join("runs", "%s_d%d_run%d" % (net, dim, seed))


def git_info():
    if not REPO_ROOT:  # installed from a wheel: no checkout to describe
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


# -- data -------------------------------------------------------------------------------

def data_files(net, s, data_root):
    """What the net's HDF5Data layers read: {"train"|"test": {"list", "files", "rows"}}.
    CaeError naming the list file or h5 file that is missing or wrong."""
    import h5py

    suffix, top = ("_pairs", "pair_data") if net == "siamese" else ("", "data")
    folder = s["data.dir"]
    out = {}
    for split in ("train", "test"):
        rel = os.path.join(folder, split + suffix + ".txt")
        path = os.path.join(data_root, rel)
        try:
            with open(path, encoding="utf-8") as f:
                entries = [line.strip() for line in f if line.strip()]
        except OSError:
            raise CaeError("%s: data list not found (run `caffe-cae data` (make data) in %s, or set data.dir)"
                           % (path, data_root)) from None
        if not entries:
            raise CaeError("%s: empty data list (expected one .h5 path per line)" % path)
        rows = 0
        files = []
        for entry in entries:
            h5 = os.path.join(data_root, entry)
            try:
                with h5py.File(h5, "r") as f:
                    if top not in f:
                        raise CaeError("%s (listed in %s): no dataset '%s'" % (h5, path, top))
                    rows += f[top].shape[0]
            except OSError as exc:
                raise CaeError("%s (listed in %s): cannot open as HDF5 (%s)" % (h5, path, exc)) from None
            files.append(os.path.abspath(h5))
        images = os.path.join(data_root, folder, split + ".h5")
        out[split] = {"list": os.path.abspath(path), "files": files, "rows": rows,
                      "images": os.path.abspath(images)}
    return out


def schedule(s, data):
    """Test stages and data cycles: what the worker needs to run and resume the schedule."""
    batch = s["data.batch_size"]

    def period(rows):
        return rows // math.gcd(rows, batch)

    stages = []
    for name, split, key in (("test-on-train", "train", "data.train_size"), ("test-on-test", "test", "data.test_size")):
        stages.append({"name": name, "iter": math.ceil(s[key] / batch), "period": period(data[split]["rows"])})
    return stages, period(data["train"]["rows"])


# -- run directory ------------------------------------------------------------------------

class RunLock:
    """An exclusive lock on ``run_dir/.lock`` (CaeError when another process holds it)."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, ".lock")
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


def _check_run_dir(run_dir, manifest, resume, force):
    """Refuse to overwrite or mix runs. Returns True when a fresh run is to be made."""
    if manifest is None:
        if resume:
            raise CaeError("%s: no run to resume (no %s); start it without --resume" % (run_dir, MANIFEST))
        if os.path.isdir(run_dir) and [n for n in os.listdir(run_dir) if n != ".lock"]:
            raise CaeError("%s: not empty and not a run directory (no %s); choose another --out" % (run_dir, MANIFEST))
        return True
    status = manifest.get("status")
    what = "%s d%s, %s/%s iterations" % (manifest.get("net"), manifest.get("dim"), manifest.get("iterations"),
                                         manifest.get("max_iter"))
    if force:
        return True
    if status == "finished":
        if resume:
            return False
        raise CaeError("%s: holds a finished run (%s); use --force to overwrite it or --out for another directory"
                       % (run_dir, what))
    if not resume:
        raise CaeError("%s: holds an unfinished run (%s, status %s); use --resume to continue it or --force to "
                       "start again" % (run_dir, what, status))
    return False


def _clear_run_dir(run_dir):
    for name in os.listdir(run_dir):
        if name == ".lock":
            continue
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def engine_solver_text(solver_text, run_dir, net, dim):
    """The solver pycaffe loads: scheduled fields at 0, paths for the run's current place."""
    lines = []
    for line in solver_text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in SCHEDULED:
            line = "%s: %d" % (key, SCHEDULED[key])
        elif key == "net":
            line = 'net: "%s"' % os.path.join(run_dir, render.file_name(net, dim, "train_test"))
        elif key == "snapshot_prefix":
            line = 'snapshot_prefix: "%s"' % snapshot_prefix(run_dir, net, dim)
        lines.append(line)
    return "\n".join(lines) + "\n"


def snapshot_prefix(run_dir, net, dim):
    return os.path.join(run_dir, "snapshots", "%s_d%d" % (net, dim))


def _truncate_log(path, last_iter):
    """Keep only the log records up to ``last_iter`` (those after it are made again)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["iter"] <= last_iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jsonl")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def last_snapshot(run_dir, manifest):
    """The newest snapshot recorded in the manifest whose two files exist, or None."""
    for snap in reversed(manifest.get("snapshots") or []):
        model = os.path.join(run_dir, snap["caffemodel"])
        state = os.path.join(run_dir, snap["solverstate"])
        if os.path.isfile(model) and os.path.isfile(state):
            return dict(snap, caffemodel_path=os.path.abspath(model), solverstate_path=os.path.abspath(state))
    return None


# -- progress -----------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on a terminal; plain lines (at log records) otherwise."""

    def __init__(self, label, total, stream=None, tty=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self.total = total
        self.marks = []  # (time, iter)
        self.width = 0

    def rate(self):
        if len(self.marks) < 2:
            return None
        (t0, i0), (t1, i1) = self.marks[0], self.marks[-1]
        return (i1 - i0) / (t1 - t0) if t1 > t0 and i1 > i0 else None

    def _text(self, it, loss):
        rate = self.rate()
        losses = " ".join("%s %.4g" % (k[:2] if k != "contrastive" else "con", v) for k, v in sorted(loss.items()))
        eta = "--:--"
        if rate:
            eta = _clock((self.total - it) / rate)
        frac = it / self.total if self.total else 1.0
        bar = "#" * int(frac * 20)
        return "%s [%-20s] %d/%d %s | %s it/s | ETA %s" % (
            self.label, bar, it, self.total, losses, "%.1f" % rate if rate else "-", eta)

    def update(self, it, loss, t=None):
        self.marks.append((t or time.time(), it))
        self.marks = self.marks[-40:]
        if self.tty:
            text = self._text(it, loss)
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
            self.stream.flush()

    def status(self, text):
        """A passing state (e.g. a test pass) shown in place of the bar on a terminal."""
        if self.tty:
            line = "%s %s" % (self.label, text)
            self.stream.write("\r" + line.ljust(self.width))
            self.width = max(self.width, len(line))
            self.stream.flush()

    def record(self, record):
        if self.tty:
            if record["phase"] != "train":
                self.note("%s iter %d %s" % (record["phase"], record["iter"], _fmt_losses(record["loss"])))
            return
        rate = self.rate()
        self.stream.write("%s iter %d/%d %s %s%s\n" % (
            self.label, record["iter"], self.total, record["phase"], _fmt_losses(record["loss"]),
            " (%.1f it/s)" % rate if rate and record["phase"] == "train" else ""))
        self.stream.flush()

    def note(self, text):
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0
            self.stream.flush()


def _clock(seconds):
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return "%d:%02d:%02d" % (h, rest // 60, rest % 60) if h else "%d:%02d" % (rest // 60, rest % 60)


def _fmt_losses(loss):
    return " ".join("%s=%.6g" % kv for kv in sorted(loss.items()))


# -- the run ------------------------------------------------------------------------------

def _overrides(overrides, iters, seed, mode):
    out = dict(overrides or {})
    if iters is not None:
        out["solver.max_iter"] = iters
    if seed is not None:
        out["solver.random_seed"] = seed
    if mode is not None:
        out["solver.solver_mode"] = mode.upper()
    return out


def _same(name, given, recorded):
    if given is not None and given != recorded:
        raise CaeError("--%s %s: the run in this directory has %s %s; --resume continues it as recorded"
                       % (name, given, name, recorded))


def train(net=None, dim=None, mode=None, iters=None, seed=None, out=None, resume=False, force=False,
          overrides=None, data_root=None, stop_after=None, backend=None, stream=None, tty=None,
          handle_signals=True):
    """Train (or continue) one run; returns its manifest. See the module docstring.

    ``overrides``: {setting: value} as ``--set``; ``iters``/``seed``/``mode`` set
    ``solver.max_iter``/``solver.random_seed``/``solver.solver_mode``. ``stop_after`` ends
    the session after that iteration as if interrupted (status ``interrupted``).
    ``handle_signals``: turn SIGINT/SIGTERM into a snapshot and a clean end (main thread
    only). ``backend``: None (caffe; on resume the run's), a name from
    :data:`caffe_cae.backends.BACKENDS` or a Backend; a run resumed in another backend
    records ``backend`` as e.g. ``caffe+torch`` and each session's backend. Raises CaeError on bad input and RunFailed when training fails."""
    if stop_after is not None and stop_after < 1:
        raise CaeError("--stop-after: expected a positive iteration, got %s" % stop_after)
    run = _prepare(net, dim, mode, iters, seed, out, resume, force, overrides, data_root, backend, stream, tty)
    if "finished" in run:
        return run["finished"]
    lock = _open_run(run)
    try:
        return _session(run["be"], run["manifest"], run["run_dir"], run["s"], run["data"], run["data_root"],
                        stop_after, stream, tty, handle_signals)
    finally:
        lock.release()


def _prepare(net, dim, mode, iters, seed, out, resume, force, overrides, data_root, backend, stream, tty):
    """Check a run's arguments and directory (train()'s); {"finished": manifest} for a finished
    run being resumed, else what _open_run and _session need."""
    mode = mode.lower() if mode else None
    if mode not in (None, "cpu", "gpu"):
        raise CaeError("--mode: expected cpu or gpu, got %r" % mode)
    if seed is None and not resume:
        seed = 1
    if out is None:
        if net is None or dim is None:
            raise CaeError("--net and --dim are needed to name the run directory (or give --out)")
        out = default_run_dir(net, dim, seed if seed is not None else 1)
    run_dir = os.path.abspath(out)
    manifest = read_manifest(run_dir) if os.path.isdir(run_dir) else None
    if resume and manifest is None:
        raise CaeError("%s: no run to resume (no %s); start it without --resume" % (run_dir, MANIFEST))
    if resume and manifest is not None:
        _same("net", net, manifest["net"])
        _same("dim", dim, manifest["dim"])
        _same("seed", seed, manifest["seed"])
        _same("iters", iters, manifest["max_iter"])
        _same("mode", mode, manifest.get("mode"))
        given = {k: str(v) for k, v in (overrides or {}).items()}
        recorded = {k: str(v) for k, v in (manifest.get("overrides_given") or {}).items()}
        if given and given != recorded:
            raise CaeError("--set %s: the run in this directory was made with --set %s; --resume continues it as "
                           "recorded" % (" ".join("%s=%s" % kv for kv in sorted(given.items())),
                                         " ".join("%s=%s" % kv for kv in sorted(recorded.items())) or "(none)"))
        net, dim, seed, mode = manifest["net"], manifest["dim"], manifest["seed"], manifest.get("mode", "cpu")
        iters = manifest["max_iter"]
        overrides = manifest.get("overrides_given") or {}
        data_root = data_root or manifest.get("data_root")
    if net is None or dim is None:
        raise CaeError("--net and --dim are required for a new run")
    mode = mode or "cpu"
    data_root = os.path.abspath(data_root or os.getcwd())
    given = dict(overrides or {})
    full = _overrides(given, iters, seed, mode)
    s = specs.settings(net, full)
    specs.layers(net, dim, "train_test", SYNTAX, resolved=s)  # checks net and dim
    data = data_files(net, s, data_root)
    for split, key in (("train", "data.train_size"), ("test", "data.test_size")):
        if key not in given:
            full[key] = data[split]["rows"]
    s = specs.settings(net, full)
    if resume and manifest is not None and manifest.get("settings"):
        changed = ["%s %s -> %s" % (k, manifest["settings"].get(k), v) for k, v in sorted(s.items())
                   if manifest["settings"].get(k) != v]
        if changed:
            raise CaeError("%s: cannot resume: the settings (or the data in %s) differ from the run's: %s"
                           % (run_dir, data_root, "; ".join(changed)))
    for key in ("solver.display", "solver.test_interval", "solver.snapshot"):
        if s[key] < 1:
            raise CaeError("--set %s=%s: expected a positive number of iterations" % (key, s[key]))

    if backend is None and resume and manifest is not None:
        backend = manifest.get("backend", "caffe").split("+")[-1]
    be = resolve_backend(backend)
    info = be.info(mode)  # CaeError for --mode gpu without a GPU
    if hasattr(be, "check_visible"):
        be.check_visible([run_dir] + [data[split]["list"] for split in data], data_root)

    fresh = _check_run_dir(run_dir, manifest, resume, force)
    if manifest is not None and not fresh and manifest.get("status") == "finished":
        note = Progress("%s d%d" % (net, dim), s["solver.max_iter"], stream, tty)
        note.note("%s: already finished (%d iterations); nothing to resume" % (run_dir, manifest["iterations"]))
        return {"finished": manifest}
    return {"be": be, "info": info, "manifest": manifest, "run_dir": run_dir, "fresh": fresh, "net": net, "dim": dim,
            "seed": seed, "mode": mode, "s": s, "given": given, "full": full, "data": data, "data_root": data_root}


def _open_run(run):
    """Create and lock the run directory; a fresh run gets its files and manifest. Returns the lock."""
    run_dir = run["run_dir"]
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise CaeError("%s: cannot create the run directory (%s)" % (run_dir, exc.strerror)) from None
    lock = RunLock(run_dir)
    try:
        if run["fresh"]:
            _clear_run_dir(run_dir)
            run["manifest"] = _new_manifest(run["net"], run["dim"], run["seed"], run["mode"], run["s"], run["given"],
                                            run["full"], run["data"], run["data_root"], run["info"], run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def _new_manifest(net, dim, seed, mode, s, given, full, data, data_root, info, run_dir):
    paths = render.write_files(net, dim, run_dir, SYNTAX, full, net_dir=run_dir,
                               snapshot_prefix=snapshot_prefix(run_dir, net, dim))
    os.makedirs(os.path.join(run_dir, "snapshots"), exist_ok=True)
    manifest = {
        "format": 1, "net": net, "dim": dim, "syntax": SYNTAX, "seed": seed, "mode": mode,
        "backend": info["backend"], "engine": _engine_record(info),
        "settings": s, "overrides_given": {k: str(v) for k, v in given.items()},
        "solver": {k.split(".", 1)[1]: v for k, v in s.items() if k.startswith("solver.")},
        "max_iter": s["solver.max_iter"], "iterations": 0, "status": "created",
        "files": {kind: os.path.basename(p) for kind, p in paths.items()},
        "data_root": data_root, "data": data, "code_blob": specs.code_blob(net),
        "reconstruction_blob": specs.reconstruction_blob(net), "git": git_info(), "host": host_info(),
        "created": now_iso(), "started": None, "ended": None, "wall_seconds": 0.0, "sessions": [],
        "snapshots": [],
    }
    manifest["files"]["engine_solver"] = ENGINE_SOLVER
    write_json(os.path.join(run_dir, MANIFEST), manifest)
    return manifest


def resolve_backend(backend):
    """A Backend from None (caffe), a name or a Backend."""
    from .backends import get_backend

    if backend is None or isinstance(backend, str):
        return get_backend(backend or "caffe")
    return backend


def _engine_record(info):
    record = {k: info.get(k) for k in ("location", "caffe_version", "unpooling", "python", "recipe")}
    record["kind"] = info.get("engine")
    return record


class _Recorder:
    """One run directory's side of a training session: the job, then every event into the
    manifest, log.jsonl and the progress display, then the end (as train() documents)."""

    def __init__(self, be, manifest, run_dir, s, data, stop_after, stream, tty, extra=None):
        self.be, self.manifest, self.run_dir, self.s, self.data = be, manifest, run_dir, s, data
        self.stop_after, self.extra = stop_after, extra or {}
        self.progress = Progress("%s d%d" % (manifest["net"], manifest["dim"]), manifest["max_iter"], stream, tty)
        self.mpath = os.path.join(run_dir, MANIFEST)
        self.end = {"status": "failed", "message": "no end event"}

    def begin(self):
        """Write the engine solver and the manifest's new session; returns the worker's job."""
        manifest, run_dir, s = self.manifest, self.run_dir, self.s
        net, dim = manifest["net"], manifest["dim"]
        with open(os.path.join(run_dir, manifest["files"]["solver"]), encoding="utf-8") as f:
            solver_text = f.read()
        files.write_text(os.path.join(run_dir, ENGINE_SOLVER), engine_solver_text(solver_text, run_dir, net, dim))
        stages, train_period = schedule(s, self.data)
        snap = last_snapshot(run_dir, manifest)
        resume = None
        if snap:
            resume = {"solverstate": snap["solverstate_path"], "caffemodel": snap["caffemodel_path"],
                      "iter": snap["iter"], "test_passes": snap.get("test_passes", 0),
                      "train_sum": snap.get("train_sum") or {}, "train_count": snap.get("train_count", 0)}
        self.it = start_iter = snap["iter"] if snap else 0
        self.log_path = os.path.join(run_dir, LOG)
        if snap:
            _truncate_log(self.log_path, start_iter)
        elif os.path.exists(self.log_path):
            os.unlink(self.log_path)
        job = {"solver": os.path.join(run_dir, ENGINE_SOLVER), "mode": manifest["mode"],
               "max_iter": manifest["max_iter"], "display": s["solver.display"],
               "test_interval": s["solver.test_interval"], "snapshot": s["solver.snapshot"],
               "snapshot_prefix": snapshot_prefix(run_dir, net, dim), "test_stages": stages,
               "train_period": train_period, "resume": resume, "stop_after": self.stop_after,
               "stderr_log": os.path.join(run_dir, "engine.log")}
        info = self.be.info(manifest["mode"])
        self.session_info = {"started": now_iso(), "from_iter": start_iter, "status": "running",
                             "backend": info["backend"], "engine": _engine_record(info)}
        self.session_info.update(self.extra)
        used = [x.get("backend", "caffe") for x in manifest["sessions"]] + [info["backend"]]
        manifest["backend"] = "+".join(sorted(set(used), key=used.index))
        manifest["sessions"].append(self.session_info)
        manifest["status"] = "running"
        manifest["started"] = manifest["started"] or self.session_info["started"]
        manifest.update(self.extra)
        write_json(self.mpath, manifest)
        self.t_start = time.time()
        self.log = open(self.log_path, "a", encoding="utf-8")
        return job

    def event(self, kind, event):
        manifest, progress = self.manifest, self.progress
        if kind == "progress":
            self.it = event["iter"]
            progress.update(self.it, event.get("loss", {}))
        elif kind == "testing":
            progress.status("testing: %s (%d batches)" % (event["stage"], event["batches"]))
        elif kind == "log":
            self.log.write(json.dumps(event, sort_keys=True) + "\n")
            self.log.flush()
            progress.record(event)
        elif kind == "snapshot":
            it = self.it = event["iter"]
            entry = {"iter": it, "caffemodel": os.path.relpath(event["caffemodel"], self.run_dir),
                     "solverstate": os.path.relpath(event["solverstate"], self.run_dir),
                     "train_sum": event.get("train_sum") or {}, "train_count": event.get("train_count", 0),
                     "test_passes": event.get("test_passes", 0), "time": now_iso()}
            manifest["snapshots"] = [x for x in manifest["snapshots"] if x["iter"] != it] + [entry]
            manifest["iterations"] = it
            _account(manifest, self.session_info, self.t_start, it)
            write_json(self.mpath, manifest)
        elif kind == "nonfinite":
            manifest["failure"] = {k: event.get(k) for k in ("message", "iter", "first", "params")}
            manifest["failure"]["loss"] = {k: v if math.isfinite(v) else repr(v)
                                           for k, v in (event.get("loss") or {}).items()}
            self.it = event["iter"] - 1
        elif kind == "end":
            self.end = event

    def close(self):
        self.log.close()
        self.progress.close()

    def finish(self, received):
        """Record the session's end; returns the manifest or raises RunFailed."""
        import signal

        manifest, end, it = self.manifest, self.end, self.it
        status = end.get("status", "failed")
        if received and status == "failed" and not manifest.get("failure"):
            status = "interrupted"
        if received and status == "interrupted":
            end["reason"] = signal.Signals(received[0]).name
        if status == "finished":
            it = end.get("iter", it)
        elif status == "interrupted":
            it = end.get("iter", manifest["iterations"])
        manifest["iterations"] = it
        manifest["status"] = status
        _account(manifest, self.session_info, self.t_start, it)
        self.session_info["status"] = status
        if end.get("reason"):
            self.session_info["reason"] = end["reason"]
            manifest["interrupted_by"] = end["reason"]
        if status == "failed":
            manifest["failure"] = manifest.get("failure") or {"message": end.get("message")}
        write_json(self.mpath, manifest)
        if status == "failed":
            raise RunFailed("%s: %s" % (self.run_dir, manifest["failure"]["message"]))
        if status == "interrupted":
            self.progress.note("%s: interrupted at iteration %d (%s); snapshot saved; continue with --resume"
                               % (self.run_dir, manifest["iterations"], end.get("reason")))
        else:
            self.progress.note("%s: finished %d iterations in %.0f s"
                               % (self.run_dir, it, self.session_info["wall_seconds"]))
        return manifest


def _signals(session, progress, handle_signals):
    """SIGINT/SIGTERM -> session.stop() (again: kill). Returns (received list, restore function)."""
    import signal

    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        if len(received) == 1:
            progress.note("%s: stopping: snapshot, then exit (again to abort)" % signal.Signals(signum).name)
            session.stop()
        else:
            session.kill()

    old = {}
    if handle_signals:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: signals stay with the caller
            pass

    def restore():
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return received, restore


def _session(be, manifest, run_dir, s, data, data_root, stop_after, stream, tty, handle_signals):
    rec = _Recorder(be, manifest, run_dir, s, data, stop_after, stream, tty)
    job = rec.begin()
    try:
        session = be.train(job, data_root)
    except BaseException:
        rec.close()
        raise
    received, restore = _signals(session, rec.progress, handle_signals)
    try:
        try:
            for event in session.events():
                rec.event(event.pop("event"), event)
        except CaeError as exc:
            rec.end = {"status": "failed", "message": str(exc)}
    finally:
        restore()
        rec.close()
    return rec.finish(received)


def train_batch(runs, net=None, dim=None, mode=None, iters=None, resume=False, force=False, overrides=None,
                data_root=None, stop_after=None, backend="torch", stream=None, tty=None, handle_signals=True):
    """Train K runs of one (net, D) that differ only by the seed at once, as one batched
    computation (torch backend, :mod:`caffe_cae.backends.torch_batch`). ``runs``: [(seed, out)].
    Each run directory is checked and written exactly as train() does for one run (a run with a
    manifest is continued when ``resume``); its manifest records ``batched_with`` (the other run
    directories of the session). Runs already finished are left alone; the others must all be
    new or all resume from the same iteration. Returns the manifests (in ``runs`` order); raises
    RunFailed naming the runs that failed (the others are recorded as usual)."""
    if stop_after is not None and stop_after < 1:
        raise CaeError("--stop-after: expected a positive iteration, got %s" % stop_after)
    if len({os.path.abspath(out) for _, out in runs}) != len(runs):
        raise CaeError("--batch: the same run directory twice")
    prepared = [_prepare(net, dim, mode, iters, seed, out,
                         resume and os.path.isfile(os.path.join(out, MANIFEST)), force, overrides, data_root,
                         backend, stream, tty) for seed, out in runs]
    todo = [r for r in prepared if "finished" not in r]
    for r in todo:
        if getattr(r["be"], "name", None) != "torch" or not hasattr(r["be"], "train_batch"):
            raise CaeError("--batch: runs are trained batched by the torch backend only (use --backend torch)")
    starts = {(last_snapshot(r["run_dir"], r["manifest"]) or {}).get("iter", 0) if not r["fresh"] else 0
              for r in todo}
    if len(starts) > 1:
        raise CaeError("--batch: the runs would resume from different iterations (%s); train them separately"
                       % ", ".join(map(str, sorted(starts))))
    locks, recs = [], []
    try:
        for r in todo:
            locks.append(_open_run(r))
        dirs = [r["run_dir"] for r in todo]
        for r in todo:
            others = [d for d in dirs if d != r["run_dir"]]
            rec = _Recorder(r["be"], r["manifest"], r["run_dir"], r["s"], r["data"], stop_after, stream, tty,
                            extra={"batched_with": others})
            rec.progress.label += " seed %s" % r["manifest"]["seed"]
            recs.append(rec)
        if todo:
            _batch_session(todo[0]["be"], recs, todo[0]["data_root"], todo[0]["mode"], handle_signals)
    finally:
        for lock in locks:
            lock.release()
    failed, out = [], []
    for r in prepared:
        if "finished" in r:
            out.append(r["finished"])
            continue
        try:
            rec = recs[todo.index(r)]
            out.append(rec.finish(getattr(rec, "received", [])))
        except RunFailed as exc:
            failed.append(str(exc))
            out.append(r["manifest"])
    if failed:
        raise RunFailed("; ".join(failed))
    return out


def _batch_session(be, recs, data_root, mode, handle_signals):
    """Run the batch worker and route its events (each with ``run``) to the runs' recorders."""
    jobs = [rec.begin() for rec in recs]
    first_log = jobs[0]["stderr_log"]
    offset = os.path.getsize(first_log) if os.path.exists(first_log) else 0
    try:
        session = be.train_batch({"mode": mode, "runs": jobs, "stderr_log": first_log}, data_root)
    except BaseException:
        for rec in recs:
            rec.close()
        raise
    received, restore = _signals(session, recs[0].progress, handle_signals)
    try:
        try:
            for event in session.events():
                kind = event.pop("event")
                if kind == "batch_end":
                    continue
                recs[event.pop("run")].event(kind, event)
        except CaeError as exc:
            for rec in recs:
                if rec.end.get("message") == "no end event":
                    rec.end = {"status": "failed", "message": str(exc)}
    finally:
        restore()
        for rec in recs:
            rec.close()
    try:
        with open(first_log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            text = f.read()
        for job in jobs[1:]:  # every run directory gets the worker's messages
            with open(job["stderr_log"], "a", encoding="utf-8") as f:
                f.write(text)
    except OSError:
        pass
    for rec in recs:
        rec.received = received
    return received


def _account(manifest, session_info, t_start, it):
    """Update times: the session's and the run's (sum over sessions)."""
    t = time.time()
    session_info["ended"] = now_iso(t)
    session_info["to_iter"] = it
    session_info["wall_seconds"] = round(t - t_start, 3)
    manifest["ended"] = session_info["ended"]
    manifest["wall_seconds"] = round(sum(x.get("wall_seconds", 0.0) for x in manifest["sessions"]), 3)
