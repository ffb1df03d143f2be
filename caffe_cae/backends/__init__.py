"""Backends: what runs a net's training, extraction and benchmark.

Two backends stand behind the same small interface: the Caffe engine (``caffe``, the default;
:mod:`~caffe_cae.backends.caffe_backend`) and Caffe's semantics executed by PyTorch
(``torch``; :mod:`~caffe_cae.backends.torch_backend`). :func:`get_backend` makes one; a
:class:`Backend` offers

- ``name``, ``label`` (how messages name it) and ``capabilities``, a frozenset of optional
  features: ``"batch"`` (``train_batch(job, cwd)``: K runs at once) and ``"visibility"``
  (``check_visible(paths, cwd)``: CaeError for a path the backend cannot see);
- ``info(mode)`` -> dict describing it (``backend``, ``engine``, ``caffe_version``, ``mode``,
  ...); raises CaeError when ``mode`` ("cpu" or "gpu") cannot be had;
- ``train(job, cwd)``, ``extract(job, cwd)``, ``bench(job, cwd)`` -> a :class:`Session`.

A job is a JSON-serialisable dict written by :mod:`caffe_cae.train`, :mod:`caffe_cae.extract`
or :mod:`caffe_cae.bench`; ``cwd`` is the directory the net's relative data paths are
resolved against (the one that holds ``data/hdf5``). Events are dicts with an ``event`` key:
``start``, ``progress``, ``testing``, ``log`` (one log.jsonl record), ``snapshot``, ``nonfinite``,
``result``, ``end`` (always last, with ``status``); see :mod:`caffe_cae.backends.protocol`.
Both backends run their work in a worker process (:mod:`caffe_cae.backends.session`).

This module imports only the standard library: the package is also imported inside the
Caffe engine, where :mod:`caffe_cae.backends.caffe_worker` runs.
"""

BACKENDS = ("caffe", "torch")
#: the optional features a backend may declare in ``capabilities``
CAPABILITIES = frozenset({"batch", "visibility"})


class Session:
    """A running piece of backend work."""

    def events(self):
        """Yield the work's events (dicts); the last is ``end``. CaeError when the work dies."""
        raise NotImplementedError

    def stop(self):
        """Ask the work to snapshot and end early (it still ends with an ``end`` event)."""
        raise NotImplementedError

    def kill(self):
        """End the work at once, without a snapshot."""
        raise NotImplementedError


class Backend:
    """The interface every backend implements; see the module docstring."""

    name = None
    label = None
    capabilities = frozenset()

    def info(self, mode="cpu"):
        raise NotImplementedError

    def _start(self, command, job, cwd, stderr_path):
        raise NotImplementedError

    def train(self, job, cwd):
        return self._start("train", job, cwd, job["stderr_log"])

    def extract(self, job, cwd):
        return self._start("extract", job, cwd, job["stderr_log"])

    def bench(self, job, cwd):
        return self._start("bench", job, cwd, job["stderr_log"])

    def train_batch(self, job, cwd):
        """Capability ``batch``: K runs at once (job {"mode", "runs", "stderr_log"})."""
        raise NotImplementedError

    def check_visible(self, paths, cwd):
        """Capability ``visibility``: CaeError naming a path the backend cannot see."""
        raise NotImplementedError


def get_backend(name="caffe", **options):
    """The backend called ``name`` (one of :data:`BACKENDS`); ``options`` go to its
    constructor (caffe: ``engine``, an engine from :func:`caffe_cae.engine.get_engine`;
    torch: ``python``, the interpreter that runs the worker)."""
    from ..errors import CaeError

    if name == "caffe":
        from .caffe_backend import CaffeBackend
        return CaffeBackend(**options)
    if name == "torch":
        from .torch_backend import TorchBackend, check_available
        check_available()
        return TorchBackend(**options)
    raise CaeError("--backend %s: expected one of %s" % (name, ", ".join(BACKENDS)))


def resolve_backend(backend):
    """A Backend from None (caffe), a name or a Backend."""
    if backend is None or isinstance(backend, str):
        return get_backend(backend or "caffe")
    return backend
