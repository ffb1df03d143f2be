"""A backend's worker process on the host side: the one :class:`~caffe_cae.backends.Session`
every backend returns.

The worker runs in its own session (so a terminal's Ctrl-C reaches only the caller, which asks
the worker to snapshot and stop through its stdin), with the job as a JSON argument. Its
stdout carries one JSON event per line (:mod:`caffe_cae.backends.protocol`); its stderr is
appended to a log file, whose last error line is quoted when the worker dies without an
``end`` event. Standard library only.
"""
import json
import os
import subprocess

from ..errors import CaeError
from . import Session


class WorkerSession(Session):
    """One worker process; ``label`` names the backend in messages ("the Caffe engine")."""

    def __init__(self, argv, cwd, stderr_path, env=None, label="the backend"):
        self.stderr_path = stderr_path
        self.label = label
        os.makedirs(os.path.dirname(os.path.abspath(stderr_path)), exist_ok=True)
        self._err = open(stderr_path, "a")
        try:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._err, universal_newlines=True, bufsize=1,
                                         start_new_session=True, env=env)
        except OSError as exc:
            self._err.close()
            raise CaeError("cannot start %s's worker (%s): %s" % (label, argv[0], exc.strerror or exc)) from None
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
        """End the worker at once (no snapshot)."""
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
                if event.get("event") in ("end", "batch_end"):
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
            raise CaeError("%s's worker ended without finishing (exit %s): %s; full log: %s"
                           % (self.label, self.returncode, self._last_error_line(), self.stderr_path))
