"""The PyTorch backend, host side: runs :mod:`caffe_cae.backends.torch_worker` as a subprocess.

Same jobs and events as the Caffe backend (see :mod:`caffe_cae.backends`); the worker is this
machine's Python with PyTorch, started in its own session (Ctrl-C reaches only the caller,
which asks the worker to snapshot and stop through its stdin). PyTorch is imported only in
the worker and in ``info()``; without it ``info()`` raises CaeError saying how to install it.
"""
import json
import os
import sys

from ..errors import CaeError
from . import Backend
from .session import WorkerSession

WORKER = "caffe_cae.backends.torch_worker"
BATCH_WORKER = "caffe_cae.backends.torch_batch_worker"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TorchBackend(Backend):
    """Caffe semantics executed by PyTorch (CPU, or CUDA with ``mode="gpu"``)."""

    name = "torch"
    label = "the PyTorch backend"
    capabilities = frozenset({"batch"})

    def __init__(self, python=None):
        self.python = python or sys.executable

    def info(self, mode="cpu"):
        """{backend, engine, torch_version, device, threads, mode, python}; CaeError when PyTorch
        is missing or ``mode`` gpu has no CUDA device."""
        from .torch_net import resolve_device, torch
        from .torch_worker import threads
        device = resolve_device(mode)
        return {"backend": self.name, "engine": "torch", "location": os.path.dirname(torch.__file__),
                "caffe_version": None, "torch_version": torch.__version__, "unpooling": True,
                "device": str(device), "threads": threads(), "mode": mode,
                "python": sys.version.split()[0], "recipe": None}

    def _start(self, command, job, cwd, stderr_path, worker=WORKER):
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        argv = [self.python, "-u", "-m", worker, command, json.dumps(job)]
        return WorkerSession(argv, cwd, stderr_path, env=env, label=self.label)

    def train_batch(self, job, cwd):
        """K runs at once (``grid --batch-runs``): job {"mode", "runs": [train jobs], "stderr_log"};
        events carry ``run`` (see :mod:`caffe_cae.backends.torch_batch_worker`)."""
        return self._start("train", job, cwd, job["stderr_log"], worker=BATCH_WORKER)


def check_available():
    """CaeError unless PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CaeError("--backend torch: PyTorch is not installed "
                       "(pip install 'caffe-cae[torch]', or pip install torch)") from None
