"""Backends: what runs a net's training, extraction and benchmark.

One small interface so that the Caffe engine (``caffe``, the default) and a later PyTorch
backend (issue 8) are two choices behind the same calls. A backend is made by
:func:`get_backend` and offers:

- ``info(mode)`` -> dict describing it (``backend``, ``engine``, ``caffe_version``, ``mode``,
  ...); raises CaeError when ``mode`` ("cpu" or "gpu") cannot be had;
- ``train(job, cwd)`` -> a :class:`Session` whose ``events()`` yields dicts (see below);
- ``extract(job, cwd)`` and ``bench(job, cwd)`` -> a Session as well.

A job is a JSON-serialisable dict written by :mod:`caffe_cae.train`, :mod:`caffe_cae.extract`
or :mod:`caffe_cae.bench`; ``cwd`` is the directory the net's relative data paths are
resolved against (the one that holds ``data/hdf5``). Events are dicts with an ``event`` key:
``start``, ``progress``, ``testing``, ``log`` (one log.jsonl record), ``snapshot``, ``nonfinite``,
``result``, ``end`` (always last, with ``status``). ``Session.stop()`` asks the work to
snapshot and end early (it still ends with an ``end`` event).

This module imports only the standard library: the package is also imported inside the
Caffe engine, where :mod:`caffe_cae.backends.caffe_worker` runs.
"""

BACKENDS = ("caffe", "torch")


class Session:
    """A running piece of backend work: iterate ``events()``; ``stop()`` ends it early."""

    def events(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError


class Backend:
    """The interface every backend implements; see the module docstring."""

    name = None

    def info(self, mode="cpu"):
        raise NotImplementedError

    def train(self, job, cwd):
        raise NotImplementedError

    def extract(self, job, cwd):
        raise NotImplementedError

    def bench(self, job, cwd):
        raise NotImplementedError


def get_backend(name="caffe", **options):
    """The backend called ``name`` (only ``caffe`` for now); ``options`` go to its constructor
    (for ``caffe``: ``engine``, an engine from :func:`caffe_cae.engine.get_engine`)."""
    from ..errors import CaeError

    if name == "caffe":
        from .caffe_engine import CaffeBackend
        return CaffeBackend(**options)
    if name == "torch":
        from .torch_backend import TorchBackend, check_available
        check_available()
        return TorchBackend()
    raise CaeError("--backend %s: expected one of %s" % (name, ", ".join(BACKENDS)))
