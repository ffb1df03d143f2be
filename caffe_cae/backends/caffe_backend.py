"""The Caffe backend, host side: runs :mod:`caffe_cae.backends.caffe_worker` inside the engine.

The worker is started through ``Engine.command`` (see :mod:`caffe_cae.engine`) as a
:class:`~caffe_cae.backends.session.WorkerSession`; its stderr (Caffe's own messages) goes to
the job's ``stderr_log``.
"""
import json
import os

from ..errors import CaeError
from . import Backend
from .session import WorkerSession

WORKER = "caffe_cae.backends.caffe_worker"


class CaffeBackend(Backend):
    """Caffe 1.0 with Unpooling, in the engine of :func:`caffe_cae.engine.get_engine`."""

    name = "caffe"
    label = "the Caffe engine"
    capabilities = frozenset({"visibility"})

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

    def check_visible(self, paths, cwd):  # capability "visibility"
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
        return WorkerSession(argv, cwd, stderr_path, label=self.label)
