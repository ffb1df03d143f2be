"""The Caffe engine: the one door through which everything runs real Caffe.

The engine is BVLC Caffe 1.0 (Debian's ``caffe`` source package, upstream commit 99bd997)
with this project's Unpooling layer, built by ``docker/build-caffe.sh``. Three kinds:

- ``host``: a ``python3`` on this machine whose ``import caffe`` registers ``Unpooling`` (the
  kind used inside the caffe-cae image);
- ``docker``: the image ``caffe-cae:cpu`` (``$CAFFE_CAE_DOCKER_IMAGE``) or ``caffe-cae:gpu`` built
  from ``docker/Dockerfile`` (``make docker``, ``make docker-gpu``), through a Docker daemon or a
  podman service (:mod:`.docker`);
- ``rootfs``: a Debian bullseye root file system (``debootstrap --variant=minbase``) in
  which the same script ran, cached in ``$CAFFE_CAE_CACHE/engine/<recipe hash>[-gpu]/`` (default
  ``~/.cache/caffe-cae``), entered with ``bwrap`` (:mod:`.rootfs`; the GPU one binds the host's
  NVIDIA devices and driver libraries, :mod:`.gpu`). The hash covers the build script, the patch,
  the layer sources and ``caffe_cae/proto/caffe_cae.proto`` (:mod:`.recipe`), so the engine is
  rebuilt exactly when the recipe changes. The recipe is read from the package
  (``caffe_cae/docker`` is the repository's ``docker/``), so a wheel install finds the same recipe,
  hash and cached engine as the checkout. The Debian mirror debootstrap uses
  (``$CAFFE_CAE_DEBIAN_MIRROR``, else the first Debian mirror of the host's apt sources) is not
  part of the hash.

``CAFFE_CAE_ENGINE=auto|host|docker|rootfs`` chooses; ``auto`` takes the first of host,
docker (a Docker daemon answering ``docker info`` and the image built), rootfs that can be had,
building the root file system on first use. On a host with an NVIDIA driver, a built GPU engine
(rootfs or image) is preferred to the CPU one; it runs ``--mode cpu`` as well.

API (used by the other stages)::

    eng = get_engine()                      # or get_engine("rootfs"); CaeError if none
    eng.command(["python3", "-m", "caffe_cae.train", ...], cwd=..., env={...})  # host argv
    eng.run(argv, cwd=None, env=None, **subprocess_kwargs)  # -> CompletedProcess
    eng.status()                            # {"kind", "location", "caffe_version", ...}
    eng.python                              # "python3"

Inside the engine the current directory (or ``cwd``), the repository and the data
directory (``$MNIST_DIR`` if set, and ``<repo>/data``) are visible at the same absolute
paths, ``/tmp`` is the host's, ``PYTHONPATH`` holds pycaffe and the repository root (so
``python3 -m caffe_cae.xxx`` works; a package installed from a wheel is bound alone at
``/run/caffe-cae/python/caffe_cae``, as its site-packages would shadow the engine's numpy),
``GLOG_minloglevel`` defaults to 2, and the thread variables (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ...) are passed through.

Limits: building the root file system needs root (debootstrap, bwrap) and Debian's package
archive; running it needs bwrap (root, or unprivileged user namespaces). Building an image
needs a checkout (the image's harness is the checkout). Paths inside the engine's own system
directories (/usr, /etc, /opt, ...) cannot be bound as working directories.
"""
import os
import sys

from ..errors import CaeError
from . import gpu
from .base import (PACKAGE_PARENT_IN_ENGINE, PASS_ENV, Engine, HostEngine, engine_pythonpath,  # noqa: F401
                   package_bind, visible_paths)
from .docker import DockerEngine, answers, build_image, docker_host, image_hash  # noqa: F401
from .recipe import (CAFFE_PYTHON_DIR, GPU_ARCHS, PREFIX, SUITE, VARIANT, apt_source_files,  # noqa: F401
                     cache_root, debian_mirror, engine_dir, parse_apt_sources, recipe_contents, recipe_files,
                     recipe_hash, recipe_path)
from .rootfs import RootfsEngine, build_rootfs, check_bwrap, find_rootfs, prune  # noqa: F401

KINDS = ("auto", "host", "docker", "rootfs")
DEFAULT_IMAGE = "caffe-cae:cpu"


def get_engine(kind=None, build=True, log=sys.stderr):
    """The engine to use: ``kind`` or $CAFFE_CAE_ENGINE (default auto). Raises CaeError.

    ``build=False`` never builds (the rootfs must be cached, the Docker image present).
    """
    kind = kind or os.environ.get("CAFFE_CAE_ENGINE") or "auto"
    if kind not in KINDS:
        raise CaeError("CAFFE_CAE_ENGINE=%s: expected one of %s" % (kind, ", ".join(KINDS)))
    on_gpu = gpu.host_has_gpu()
    if kind in ("auto", "host"):
        eng = HostEngine.find()
        if eng:
            return eng
        if kind == "host":
            raise CaeError("CAFFE_CAE_ENGINE=host: %s has no pycaffe with an Unpooling layer; use "
                           "CAFFE_CAE_ENGINE=rootfs (make engine) or docker" % HostEngine().python)
    if kind == "docker" or (kind == "auto" and answers(dict(os.environ))):
        if on_gpu:
            try:
                return DockerEngine.find(gpu=True, build=False)
            except CaeError:
                pass
        return DockerEngine.find(build=build, log=log)
    eng = (on_gpu and find_rootfs(gpu=True)) or find_rootfs()
    if eng:
        check_bwrap()
        return eng
    if not build:
        raise CaeError("no Caffe engine: the rootfs engine for this recipe is not built; run `make engine` "
                       "(caffe-cae engine build)")
    return build_rootfs(log=log)
