"""A training session on the host: the backend's events into a run directory.

:class:`Recorder` writes one run's side of a session (the worker's job, then every event into
the manifest, ``log.jsonl`` and the progress display, then the end, as :mod:`caffe_cae.train`
documents); :func:`run_session` and :func:`run_batch_session` drive one backend session for
one run or for K runs trained at once, turning SIGINT/SIGTERM into ``Session.stop()`` (a
second one into ``Session.kill()``).
"""
import json
import math
import os
import signal
import time

from .errors import CaeError
from .progress import Progress
from .rundir import now_iso


class RunFailed(Exception):
    """Training ended with status ``failed`` (message: why); the run directory says more."""


def engine_record(info):
    record = {k: info.get(k) for k in ("location", "caffe_version", "unpooling", "python", "recipe")}
    record["kind"] = info.get("engine")
    return record


def _account(manifest, session_info, t_start, it):
    """Update times: the session's and the run's (sum over sessions)."""
    t = time.time()
    session_info["ended"] = now_iso(t)
    session_info["to_iter"] = it
    session_info["wall_seconds"] = round(t - t_start, 3)
    manifest["ended"] = session_info["ended"]
    manifest["wall_seconds"] = round(sum(x.get("wall_seconds", 0.0) for x in manifest["sessions"]), 3)


class Recorder:
    """One run directory's side of a training session (``run``: a prepared run of
    :mod:`caffe_cae.train`)."""

    def __init__(self, run, stop_after, stream, tty, extra=None):
        self.run, self.be, self.manifest, self.rd = run, run.be, run.manifest, run.rundir
        self.stop_after, self.extra = stop_after, extra or {}
        self.stream, self.tty = stream, tty
        self.end = {"status": "failed", "message": "no end event"}
        self.received = []

    def begin(self):
        """Write the engine solver and the manifest's new session; returns the worker's job."""
        manifest, rd, s = self.manifest, self.rd, self.run.settings
        net, dim = manifest["net"], manifest["dim"]
        with open(rd.file(manifest["files"]["solver"]), encoding="utf-8") as f:
            rd.write_engine_solver(f.read(), net, dim)
        snap = rd.last_snapshot(manifest)
        resume = None
        if snap:
            resume = {"solverstate": snap["solverstate_path"], "caffemodel": snap["caffemodel_path"],
                      "iter": snap["iter"], "test_passes": snap.get("test_passes", 0),
                      "train_sum": snap.get("train_sum") or {}, "train_count": snap.get("train_count", 0)}
            rd.truncate_log(snap["iter"])
        elif os.path.exists(rd.log):
            os.unlink(rd.log)
        self.it = start_iter = snap["iter"] if snap else 0
        stages, train_period = self.run.schedule()
        job = {"solver": rd.engine_solver, "mode": manifest["mode"], "max_iter": manifest["max_iter"],
               "display": s["solver.display"], "test_interval": s["solver.test_interval"],
               "snapshot": s["solver.snapshot"], "snapshot_prefix": rd.snapshot_prefix(net, dim),
               "test_stages": stages, "train_period": train_period, "resume": resume,
               "stop_after": self.stop_after, "stderr_log": rd.engine_log}
        info = self.be.info(manifest["mode"])
        self.session_info = {"started": now_iso(), "from_iter": start_iter, "status": "running",
                             "backend": info["backend"], "engine": engine_record(info)}
        self.session_info.update(self.extra)
        used = [x.get("backend", "caffe") for x in manifest["sessions"]] + [info["backend"]]
        manifest["backend"] = "+".join(sorted(set(used), key=used.index))
        manifest["sessions"].append(self.session_info)
        manifest["status"] = "running"
        manifest["started"] = manifest["started"] or self.session_info["started"]
        manifest.update(self.extra)
        rd.write_manifest(manifest)
        label = "%s d%d" % (net, dim) + (" seed %s" % manifest["seed"] if self.extra else "")
        self.progress = Progress(label, manifest["max_iter"], self.stream, self.tty, initial=start_iter)
        self.t_start = time.time()
        self.log = open(rd.log, "a", encoding="utf-8")
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
            entry = {"iter": it, "caffemodel": os.path.relpath(event["caffemodel"], self.rd.path),
                     "solverstate": os.path.relpath(event["solverstate"], self.rd.path),
                     "train_sum": event.get("train_sum") or {}, "train_count": event.get("train_count", 0),
                     "test_passes": event.get("test_passes", 0), "time": now_iso()}
            manifest["snapshots"] = [x for x in manifest["snapshots"] if x["iter"] != it] + [entry]
            manifest["iterations"] = it
            _account(manifest, self.session_info, self.t_start, it)
            self.rd.write_manifest(manifest)
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

    def finish(self):
        """Record the session's end; returns the manifest or raises RunFailed."""
        manifest, end, it, received = self.manifest, self.end, self.it, self.received
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
        self.rd.write_manifest(manifest)
        if status == "failed":
            raise RunFailed("%s: %s" % (self.rd.path, manifest["failure"]["message"]))
        if status == "interrupted":
            self.progress.note("%s: interrupted at iteration %d (%s); snapshot saved; continue with --resume"
                               % (self.rd.path, manifest["iterations"], end.get("reason")))
        else:
            self.progress.note("%s: finished %d iterations in %.0f s"
                               % (self.rd.path, it, self.session_info["wall_seconds"]))
        return manifest


def _signals(session, progress, handle_signals):
    """SIGINT/SIGTERM -> session.stop() (again: kill). Returns (received list, restore function)."""
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


def _drive(session, recs, handle_signals, route):
    """Feed the session's events to ``route``; a worker that dies fails the runs without an end."""
    received, restore = _signals(session, recs[0].progress, handle_signals)
    try:
        try:
            for event in session.events():
                route(event.pop("event"), event)
        except CaeError as exc:
            for rec in recs:
                if rec.end.get("message") == "no end event":
                    rec.end = {"status": "failed", "message": str(exc)}
    finally:
        restore()
        for rec in recs:
            rec.close()
            rec.received = received


def run_session(rec, handle_signals):
    """One run's training session; returns its manifest (RunFailed when it failed)."""
    job = rec.begin()
    try:
        session = rec.be.train(job, rec.run.data_root)
    except BaseException:
        rec.close()
        raise
    _drive(session, [rec], handle_signals, rec.event)
    return rec.finish()


def run_batch_session(recs, handle_signals):
    """K runs in one batched session (capability ``batch``); events carry ``run``."""
    jobs = [rec.begin() for rec in recs]
    first_log = jobs[0]["stderr_log"]
    offset = os.path.getsize(first_log) if os.path.exists(first_log) else 0
    try:
        session = recs[0].be.train_batch({"mode": recs[0].manifest["mode"], "runs": jobs, "stderr_log": first_log},
                                         recs[0].run.data_root)
    except BaseException:
        for rec in recs:
            rec.close()
        raise

    def route(kind, event):
        if kind != "batch_end":
            recs[event.pop("run")].event(kind, event)

    _drive(session, recs, handle_signals, route)
    try:
        with open(first_log, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            text = f.read()
        for job in jobs[1:]:  # every run directory gets the worker's messages
            with open(job["stderr_log"], "a", encoding="utf-8") as f:
                f.write(text)
    except OSError:
        pass
