"""What every engine kind shares: the Engine interface, the environment and paths a command sees
inside an engine, and the host kind (a pycaffe on this machine)."""
import json
import os
import shutil
import subprocess

from .. import PACKAGE_DIR, REPO_ROOT
from ..errors import CaeError
from .recipe import PREFIX

#: Where the rootfs and docker engines see a package installed outside a checkout (on PYTHONPATH).
PACKAGE_PARENT_IN_ENGINE = "/run/caffe-cae/python"
#: Environment variables passed through into the engine when set on the host.
PASS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GLOG_minloglevel",
            "GLOG_logtostderr", "GLOG_v", "MNIST_DIR", "CAFFE_CAE_REQUIRE_ENGINE", "TERM",
            "LANG", "LC_ALL", "TZ")

_PROBE = r"""
import json, os, sys
os.environ.setdefault("GLOG_minloglevel", "2")
import importlib.util
if importlib.util.find_spec("caffe") is None:
    print(json.dumps({"caffe": False})); sys.exit(0)
import caffe
with open("/proc/self/maps") as f:
    gpu = "libcudart" in f.read()
print(json.dumps({"caffe": True, "caffe_version": getattr(caffe, "__version__", "unknown"),
                  "unpooling": "Unpooling" in list(caffe.layer_type_list()),
                  "mode": "gpu" if gpu else "cpu", "python": sys.version.split()[0],
                  "pycaffe": os.path.dirname(caffe.__file__)}))
"""


def inside_env(env, extra_pythonpath):
    """Environment for a command in the engine: defaults, pass-through, then ``env``."""
    out = {"PATH": PREFIX + "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/tmp", "LANG": "C.UTF-8", "GLOG_minloglevel": "2", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(extra_pythonpath)}
    for name in PASS_ENV:
        if name in os.environ:
            out[name] = os.environ[name]
    out.update({k: str(v) for k, v in (env or {}).items()})
    return out


def engine_pythonpath():
    """The directory on the engine's PYTHONPATH from which ``import caffe_cae`` works: the checkout
    (bound at its own path), else PACKAGE_PARENT_IN_ENGINE (see package_bind)."""
    return REPO_ROOT or PACKAGE_PARENT_IN_ENGINE


def package_bind():
    """(host dir, dir inside the engine) for a package installed outside a checkout, else None: the
    package directory alone, since the site-packages around it holds host builds of numpy etc."""
    return None if REPO_ROOT else (PACKAGE_DIR, PACKAGE_PARENT_IN_ENGINE + "/caffe_cae")


def visible_paths(cwd):
    """Absolute host paths bound into the engine at the same place (outermost only)."""
    paths = [cwd] + ([REPO_ROOT, os.path.join(REPO_ROOT, "data")] if REPO_ROOT else [])
    if os.environ.get("MNIST_DIR"):
        paths.append(os.environ["MNIST_DIR"])
    keep = []
    for p in sorted({os.path.abspath(p) for p in paths if os.path.isdir(p)}, key=len):
        if p == "/tmp" or p.startswith("/tmp/"):
            continue  # /tmp is bound whole
        if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in keep):
            keep.append(p)
    return keep


class Engine:
    """A way to run commands next to a Caffe with Unpooling. See the module docstring."""

    kind = None
    python = "python3"

    def __init__(self, location):
        self.location = location

    def command(self, argv, cwd=None, env=None):
        """The host argv that runs ``argv`` inside the engine (for subprocess.Popen)."""
        raise NotImplementedError

    def run(self, argv, cwd=None, env=None, **subprocess_kwargs):
        """Run ``argv`` inside the engine; returns subprocess.CompletedProcess."""
        return subprocess.run(self.command(argv, cwd=cwd, env=env), **subprocess_kwargs)

    def probe(self):
        """What the engine's python sees of pycaffe (a dict; raises CaeError on failure)."""
        proc = self.run([self.python, "-c", _PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        universal_newlines=True)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CaeError("%s engine at %s: pycaffe probe failed: %s" % (self.kind, self.location, tail))
        return json.loads(lines[-1])

    def status(self):
        """{kind, location, caffe_version, unpooling, mode, python, pycaffe, ...}."""
        info = {"kind": self.kind, "location": self.location}
        probe = self.probe()
        info.update(probe)
        info.pop("caffe", None)
        if not probe.get("caffe"):
            info.update(caffe_version=None, unpooling=False)
        return info


class HostEngine(Engine):
    """pycaffe of a python on this machine (``$CAFFE_CAE_HOST_PYTHON``, default python3)."""

    kind = "host"

    def __init__(self, python=None):
        self.python = python or os.environ.get("CAFFE_CAE_HOST_PYTHON", "python3")
        super().__init__(shutil.which(self.python) or self.python)

    def command(self, argv, cwd=None, env=None):
        cwd = os.path.abspath(cwd or os.getcwd())
        pythonpath = [os.path.dirname(PACKAGE_DIR)]
        pythonpath += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        inside = dict(os.environ)
        inside.setdefault("GLOG_minloglevel", "2")
        inside["PYTHONPATH"] = os.pathsep.join(pythonpath)
        inside.update({k: str(v) for k, v in (env or {}).items()})
        return ["env", "-i", "-C", cwd] + ["%s=%s" % kv for kv in sorted(inside.items())] + list(argv)

    @classmethod
    def find(cls):
        """The host engine if its pycaffe has Unpooling, else None."""
        eng = cls()
        if not shutil.which(eng.python):
            return None
        try:
            info = eng.probe()
        except (CaeError, ValueError, OSError):
            return None
        return eng if info.get("caffe") and info.get("unpooling") else None
