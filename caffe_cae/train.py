"""Training runs: render a net and its solver into a run directory, train it in a backend.

``train(RunSpec(net=..., dim=..., ...))`` makes (or continues) a run directory (file names in
:mod:`caffe_cae.rundir`):

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

``train_batch(runs, spec)`` trains runs of one (net, D) that differ by the seed at once in a
backend with the ``batch`` capability (torch), each run directory written as above.

Faults: SIGINT/SIGTERM (or ``Session.stop``) snapshot and end the run with status
``interrupted``; ``resume=True`` continues from the last snapshot with the same data order
(see :func:`caffe_cae.backends.protocol.run_schedule`); a non-finite loss ends the run with status
``failed`` and a message naming the iteration and the first non-finite blob; a finished
run is not overwritten without ``force``, an unfinished one not without ``resume`` or
``force``. Data paths (``data.dir``) are relative to ``data_root`` (default: the current
directory), where the worker runs; the run directory must be visible in the engine.
"""
import dataclasses
import math
import os
from typing import Optional

from . import render, specs
from .backends import resolve_backend
from .errors import CaeError
from .progress import Progress
from .recorder import Recorder, RunFailed, engine_record, run_batch_session, run_session
from .rundir import ENGINE_SOLVER, MANIFEST, RunDir, default_run_dir, git_info, host_info, now_iso

__all__ = ["RunSpec", "RunFailed", "train", "train_batch", "data_files"]

SYNTAX = "modern"


@dataclasses.dataclass
class RunSpec:
    """What ``caffe-cae train`` is asked for. ``overrides``: {setting: value} as ``--set``;
    ``iters``/``seed``/``mode`` set ``solver.max_iter``/``solver.random_seed``/``solver.solver_mode``;
    ``stop_after`` ends the session after that iteration as if interrupted; ``backend``: None
    (caffe; on resume the run's), a name from :data:`caffe_cae.backends.BACKENDS` or a Backend;
    ``data_root``: where data.dir is found [default: the current directory]."""

    net: Optional[str] = None
    dim: Optional[int] = None
    mode: Optional[str] = None
    iters: Optional[int] = None
    seed: Optional[int] = None
    out: Optional[str] = None
    resume: bool = False
    force: bool = False
    overrides: Optional[dict] = None
    data_root: Optional[str] = None
    stop_after: Optional[int] = None
    backend: object = None


@dataclasses.dataclass
class Run:
    """A run checked and resolved from a RunSpec: everything a session needs."""

    spec: RunSpec
    rundir: RunDir
    be: object
    info: dict
    manifest: Optional[dict]
    fresh: bool
    settings: dict
    given: dict
    full: dict
    data: dict
    data_root: str

    def schedule(self):
        """Test stages and data cycles: what the worker needs to run and resume the schedule."""
        s = self.settings
        batch = s["data.batch_size"]

        def period(rows):
            return rows // math.gcd(rows, batch)

        stages = [{"name": name, "iter": math.ceil(s[key] / batch), "period": period(self.data[split]["rows"])}
                  for name, split, key in (("test-on-train", "train", "data.train_size"),
                                           ("test-on-test", "test", "data.test_size"))]
        return stages, period(self.data["train"]["rows"])


def data_files(net, s, data_root):
    """What the net's HDF5Data layers read: {"train"|"test": {"list", "files", "rows", "images"}}.
    CaeError naming the list file or h5 file that is missing or wrong."""
    import h5py

    suffix, top = ("_pairs", "pair_data") if net == "siamese" else ("", "data")
    folder = s["data.dir"]
    out = {}
    for split in ("train", "test"):
        path = os.path.join(data_root, folder, split + suffix + ".txt")
        try:
            with open(path, encoding="utf-8") as f:
                entries = [line.strip() for line in f if line.strip()]
        except OSError:
            raise CaeError("%s: data list not found (run `caffe-cae data` (make data) in %s, or set data.dir)"
                           % (path, data_root)) from None
        if not entries:
            raise CaeError("%s: empty data list (expected one .h5 path per line)" % path)
        rows = 0
        h5s = []
        for entry in entries:
            h5 = os.path.join(data_root, entry)
            try:
                with h5py.File(h5, "r") as f:
                    if top not in f:
                        raise CaeError("%s (listed in %s): no dataset '%s'" % (h5, path, top))
                    rows += f[top].shape[0]
            except OSError as exc:
                raise CaeError("%s (listed in %s): cannot open as HDF5 (%s)" % (h5, path, exc)) from None
            h5s.append(os.path.abspath(h5))
        images = os.path.join(data_root, folder, split + ".h5")
        out[split] = {"list": os.path.abspath(path), "files": h5s, "rows": rows, "images": os.path.abspath(images)}
    return out


def train(spec=None, stream=None, tty=None, handle_signals=True, **fields):
    """Train (or continue) one run; returns its manifest. See the module docstring.

    ``spec``: a :class:`RunSpec` (or its fields as keywords). ``handle_signals``: turn
    SIGINT/SIGTERM into a snapshot and a clean end (main thread only). A run resumed in
    another backend records ``backend`` as e.g. ``caffe+torch`` and each session's backend.
    Raises CaeError on bad input and RunFailed when training fails."""
    spec = spec or RunSpec(**fields)
    _check_stop_after(spec.stop_after)
    run = _prepare(spec, stream, tty)
    if isinstance(run, dict):  # a finished run being resumed
        return run
    lock = _open_run(run)
    try:
        return run_session(Recorder(run, spec.stop_after, stream, tty), handle_signals)
    finally:
        lock.release()


def _check_stop_after(stop_after):
    if stop_after is not None and stop_after < 1:
        raise CaeError("--stop-after: expected a positive iteration, got %s" % stop_after)


def _same(name, given, recorded):
    if given is not None and given != recorded:
        raise CaeError("--%s %s: the run in this directory has %s %s; --resume continues it as recorded"
                       % (name, given, name, recorded))


def _resumed(spec, manifest):
    """The spec of a run being resumed: as recorded (CaeError when the spec disagrees)."""
    for name, recorded in (("net", manifest["net"]), ("dim", manifest["dim"]), ("seed", manifest["seed"]),
                           ("iters", manifest["max_iter"]), ("mode", manifest.get("mode"))):
        _same(name, getattr(spec, name), recorded)
    given = {k: str(v) for k, v in (spec.overrides or {}).items()}
    recorded = {k: str(v) for k, v in (manifest.get("overrides_given") or {}).items()}
    if given and given != recorded:
        raise CaeError("--set %s: the run in this directory was made with --set %s; --resume continues it as "
                       "recorded" % (" ".join("%s=%s" % kv for kv in sorted(given.items())),
                                     " ".join("%s=%s" % kv for kv in sorted(recorded.items())) or "(none)"))
    backend = spec.backend if spec.backend is not None else manifest.get("backend", "caffe").split("+")[-1]
    return dataclasses.replace(spec, net=manifest["net"], dim=manifest["dim"], seed=manifest["seed"],
                               mode=manifest.get("mode", "cpu"), iters=manifest["max_iter"],
                               overrides=manifest.get("overrides_given") or {},
                               data_root=spec.data_root or manifest.get("data_root"), backend=backend)


def _settings(spec, manifest, run_dir):
    """(settings, overrides given, full overrides, data) of the spec; CaeError for bad ones."""
    given = dict(spec.overrides or {})
    full = dict(given)
    for key, value in (("solver.max_iter", spec.iters), ("solver.random_seed", spec.seed),
                       ("solver.solver_mode", spec.mode.upper())):
        if value is not None:
            full[key] = value
    s = specs.settings(spec.net, full)
    specs.layers(spec.net, spec.dim, "train_test", SYNTAX, resolved=s)  # checks net and dim
    data = data_files(spec.net, s, spec.data_root)
    for split, key in (("train", "data.train_size"), ("test", "data.test_size")):
        if key not in given:
            full[key] = data[split]["rows"]
    s = specs.settings(spec.net, full)
    if manifest is not None and spec.resume and manifest.get("settings"):
        changed = ["%s %s -> %s" % (k, manifest["settings"].get(k), v) for k, v in sorted(s.items())
                   if manifest["settings"].get(k) != v]
        if changed:
            raise CaeError("%s: cannot resume: the settings (or the data in %s) differ from the run's: %s"
                           % (run_dir, spec.data_root, "; ".join(changed)))
    for key in ("solver.display", "solver.test_interval", "solver.snapshot"):
        if s[key] < 1:
            raise CaeError("--set %s=%s: expected a positive number of iterations" % (key, s[key]))
    return s, given, full, data


def _prepare(spec, stream, tty):
    """Check a run's spec and directory; the finished run's manifest when one is resumed,
    else a :class:`Run`."""
    mode = spec.mode.lower() if spec.mode else None
    if mode not in (None, "cpu", "gpu"):
        raise CaeError("--mode: expected cpu or gpu, got %r" % spec.mode)
    seed = 1 if spec.seed is None and not spec.resume else spec.seed
    out = spec.out
    if out is None:
        if spec.net is None or spec.dim is None:
            raise CaeError("--net and --dim are needed to name the run directory (or give --out)")
        out = default_run_dir(spec.net, spec.dim, seed if seed is not None else 1)
    rd = RunDir(out)
    manifest = rd.read_manifest(required=False) if os.path.isdir(rd.path) else None
    spec = dataclasses.replace(spec, mode=mode, seed=seed)
    if spec.resume and manifest is None:
        raise CaeError("%s: no run to resume (no %s); start it without --resume" % (rd.path, MANIFEST))
    if spec.resume:
        spec = _resumed(spec, manifest)
    if spec.net is None or spec.dim is None:
        raise CaeError("--net and --dim are required for a new run")
    spec = dataclasses.replace(spec, mode=spec.mode or "cpu",
                               data_root=os.path.abspath(spec.data_root or os.getcwd()))
    s, given, full, data = _settings(spec, manifest, rd.path)
    be = resolve_backend(spec.backend)
    info = be.info(spec.mode)  # CaeError for --mode gpu without a GPU
    if "visibility" in be.capabilities:
        be.check_visible([rd.path] + [data[split]["list"] for split in data], spec.data_root)
    fresh = _check_run_dir(rd, manifest, spec.resume, spec.force)
    if manifest is not None and not fresh and manifest.get("status") == "finished":
        Progress("%s d%d" % (spec.net, spec.dim), s["solver.max_iter"], stream, tty).note(
            "%s: already finished (%d iterations); nothing to resume" % (rd.path, manifest["iterations"]))
        return manifest
    return Run(spec=spec, rundir=rd, be=be, info=info, manifest=manifest, fresh=fresh, settings=s, given=given,
               full=full, data=data, data_root=spec.data_root)


def _check_run_dir(rd, manifest, resume, force):
    """Refuse to overwrite or mix runs. Returns True when a fresh run is to be made."""
    if manifest is None:
        if not rd.is_empty():
            raise CaeError("%s: not empty and not a run directory (no %s); choose another --out" % (rd.path, MANIFEST))
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
                       % (rd.path, what))
    if not resume:
        raise CaeError("%s: holds an unfinished run (%s, status %s); use --resume to continue it or --force to "
                       "start again" % (rd.path, what, status))
    return False


def _open_run(run):
    """Create and lock the run directory; a fresh run gets its files and manifest. Returns the lock."""
    run.rundir.make()
    lock = run.rundir.lock()
    try:
        if run.fresh:
            run.rundir.clear()
            run.manifest = _new_manifest(run)
    except BaseException:
        lock.release()
        raise
    return lock


def _new_manifest(run):
    spec, rd, s = run.spec, run.rundir, run.settings
    net, dim = spec.net, spec.dim
    paths = render.write_files(net, dim, rd.path, SYNTAX, run.full, net_dir=rd.path,
                               snapshot_prefix=rd.snapshot_prefix(net, dim))
    rd.make_snapshots()
    manifest = {
        "format": 1, "net": net, "dim": dim, "syntax": SYNTAX, "seed": spec.seed, "mode": spec.mode,
        "backend": run.info["backend"], "engine": engine_record(run.info),
        "settings": s, "overrides_given": {k: str(v) for k, v in run.given.items()},
        "solver": {k.split(".", 1)[1]: v for k, v in s.items() if k.startswith("solver.")},
        "max_iter": s["solver.max_iter"], "iterations": 0, "status": "created",
        "files": {kind: os.path.basename(p) for kind, p in paths.items()},
        "data_root": run.data_root, "data": run.data, "code_blob": specs.code_blob(net),
        "reconstruction_blob": specs.reconstruction_blob(net), "git": git_info(), "host": host_info(),
        "created": now_iso(), "started": None, "ended": None, "wall_seconds": 0.0, "sessions": [],
        "snapshots": [],
    }
    manifest["files"]["engine_solver"] = ENGINE_SOLVER
    rd.write_manifest(manifest)
    return manifest


def train_batch(runs, spec=None, stream=None, tty=None, handle_signals=True, **fields):
    """Train K runs of one (net, D) that differ only by the seed at once, as one batched
    computation (a backend with the ``batch`` capability; default torch). ``runs``: [(seed, out)];
    ``spec`` (or its fields as keywords): what they share (its ``seed`` and ``out`` unused).
    Each run directory is checked and written exactly as train() does for one run (a run with a
    manifest is continued when ``resume``); its manifest records ``batched_with`` (the other run
    directories of the session). Runs already finished are left alone; the others must all be
    new or all resume from the same iteration. Returns the manifests (in ``runs`` order); raises
    RunFailed naming the runs that failed (the others are recorded as usual)."""
    spec = spec or RunSpec(**dict({"backend": "torch"}, **fields))
    _check_stop_after(spec.stop_after)
    if len({os.path.abspath(out) for _, out in runs}) != len(runs):
        raise CaeError("--batch: the same run directory twice")
    prepared = [_prepare(dataclasses.replace(spec, seed=seed, out=out,
                                             resume=spec.resume and os.path.isfile(os.path.join(out, MANIFEST))),
                         stream, tty) for seed, out in runs]
    todo = [r for r in prepared if isinstance(r, Run)]
    for r in todo:
        if "batch" not in r.be.capabilities:
            raise CaeError("--batch: runs are trained batched by the torch backend only (use --backend torch)")
    starts = {(r.rundir.last_snapshot(r.manifest) or {}).get("iter", 0) if not r.fresh else 0 for r in todo}
    if len(starts) > 1:
        raise CaeError("--batch: the runs would resume from different iterations (%s); train them separately"
                       % ", ".join(map(str, sorted(starts))))
    locks, recs = [], []
    try:
        for r in todo:
            locks.append(_open_run(r))
        dirs = [r.rundir.path for r in todo]
        recs = [Recorder(r, spec.stop_after, stream, tty, extra={"batched_with": [d for d in dirs
                                                                                  if d != r.rundir.path]})
                for r in todo]
        if todo:
            run_batch_session(recs, handle_signals)
    finally:
        for lock in locks:
            lock.release()
    failed, out = [], []
    for r in prepared:
        if not isinstance(r, Run):
            out.append(r)
            continue
        try:
            out.append(recs[todo.index(r)].finish())
        except RunFailed as exc:
            failed.append(str(exc))
            out.append(r.manifest)
    if failed:
        raise RunFailed("; ".join(failed))
    return out
