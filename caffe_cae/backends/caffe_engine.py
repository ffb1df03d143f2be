"""The Caffe backend, host side: runs :mod:`caffe_cae.backends.caffe_worker` inside the engine.

The worker is started through ``Engine.command`` (see :mod:`caffe_cae.engine`) in its own
session (so a terminal's Ctrl-C reaches only this process, which then asks the worker to
snapshot and stop through its stdin), with the job as a JSON argument. Its stdout carries
one JSON event per line; its stderr (Caffe's own messages) is appended to a log file, and
the last line of it is quoted when the worker dies without an ``end`` event.
"""
import json
import os
import subprocess

from ..errors import CaeError
from . import Backend, Session

WORKER = "caffe_cae.backends.caffe_worker"


class WorkerSession(Session):
    """One worker process inside the engine."""

    def __init__(self, argv, cwd, stderr_path, env=None):
        self.stderr_path = stderr_path
        os.makedirs(os.path.dirname(os.path.abspath(stderr_path)), exist_ok=True)
        self._err = open(stderr_path, "a")
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._err, universal_newlines=True, bufsize=1,
                                         start_new_session=True, env=env)
        except OSError as exc:
            self._err.close()
            raise CaeError("cannot start the Caffe engine (%s): %s" % (argv[0], exc.strerror or exc)) from None
        self.returncode = None
        self._stopped = False

    def stop(self):
        """Ask the worker to snapshot and end (idempotent)."""
        if self._stopped or self.proc.poll() is not None:
            return
        self._stopped = True
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()

    def _last_error_line(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                lines = [line.strip() for line in f.read().splitlines()[-40:] if line.strip()]
        except OSError:
            return "no output"
        for line in reversed(lines):
            if line.startswith(("F", "E")) and "]" in line:  # glog FATAL/ERROR lines
                return line.split("]", 1)[1].strip()
        return lines[-1] if lines else "no output"

    def events(self):
        """Yield the worker's events; a worker that dies without ``end`` raises CaeError."""
        ended = False
        try:
            for line in self.proc.stdout:
                line = line.strip()
                if not line.startswith("{"):
                    if line:
                        self._err.write(line + "\n")
                        self._err.flush()
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    self._err.write(line + "\n")
                    continue
                if event.get("event") == "end":
                    ended = True
                yield event
        except BaseException:  # Ctrl-C or the caller stopped listening: the worker goes too
            self.kill()
            raise
        finally:
            try:
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            self.returncode = self.proc.wait()
            self._err.close()
        if not ended:
            raise CaeError("the Caffe engine's worker ended without finishing (exit %s): %s; full log: %s"
                           % (self.returncode, self._last_error_line(), self.stderr_path))


class CaffeBackend(Backend):
    """Caffe 1.0 with Unpooling, in the engine of :func:`caffe_cae.engine.get_engine`."""

    name = "caffe"

    def __init__(self, engine=None):
        self._engine = engine
        self._status = None

    @property
    def engine(self):
        if self._engine is None:
            from ..engine import get_engine
            self._engine = get_engine()
        return self._engine

    def info(self, mode="cpu"):
        """{backend, engine, location, caffe_version, unpooling, mode, python}; CaeError when
        the engine cannot run ``mode``."""
        if self._status is None:
            self._status = self.engine.status()
        st = self._status
        if not st.get("caffe_version"):
            raise CaeError("%s engine at %s: no pycaffe found" % (st.get("kind"), st.get("location")))
        if mode == "gpu" and st.get("mode") != "gpu":
            raise CaeError("--mode gpu: no GPU here: the %s engine's Caffe %s is a CPU-only build; use --mode cpu"
                           % (st.get("kind"), st.get("caffe_version")))
        if mode == "gpu" and not os.path.exists("/dev/nvidiactl"):
            raise CaeError("--mode gpu: no GPU here: /dev/nvidiactl is missing (no NVIDIA driver); use --mode cpu")
        return {"backend": self.name, "engine": st.get("kind"), "location": st.get("location"),
                "caffe_version": st.get("caffe_version"), "unpooling": st.get("unpooling"),
                "mode": mode, "python": st.get("python"), "recipe": st.get("recipe")}

    def check_visible(self, paths, cwd):
        """CaeError when a path cannot be seen inside the engine (rootfs and docker kinds)."""
        if getattr(self.engine, "kind", None) not in ("rootfs", "docker"):
            return
        from ..engine import visible_paths
        roots = visible_paths(os.path.abspath(cwd)) + ["/tmp"]
        for path in paths:
            full = os.path.abspath(path)
            if not any(full == r or full.startswith(r.rstrip("/") + "/") for r in roots):
                raise CaeError("%s: not visible inside the %s engine, which sees only %s; put it under one of them"
                               % (path, self.engine.kind, ", ".join(roots)))

    def _start(self, command, job, cwd, stderr_path):
        argv = self.engine.command([self.engine.python, "-u", "-m", WORKER, command, json.dumps(job)],
                                   cwd=cwd, env={"PYTHONUNBUFFERED": "1"})
        return WorkerSession(argv, cwd, stderr_path)

    def train(self, job, cwd):
        return self._start("train", job, cwd, job["stderr_log"])

    def extract(self, job, cwd):
        return self._start("extract", job, cwd, job["stderr_log"])

    def bench(self, job, cwd):
        return self._start("bench", job, cwd, job["stderr_log"])
