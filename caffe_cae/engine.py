"""The Caffe engine: the one door through which everything runs real Caffe.

The engine is BVLC Caffe 1.0 (Debian's ``caffe`` source package, upstream commit 99bd997)
with this project's Unpooling layer, built by ``docker/build-caffe.sh``. Three kinds:

- ``host``: a ``python3`` on this machine whose ``import caffe`` registers ``Unpooling``;
- ``docker``: the image ``caffe-cae:cpu`` (``$CAFFE_CAE_DOCKER_IMAGE``) built from
  ``docker/Dockerfile.cpu``, run by a running Docker daemon;
- ``rootfs``: a Debian bullseye root file system (``debootstrap --variant=minbase``) in
  which the same script ran, cached in ``$CAFFE_CAE_CACHE/engine/<recipe hash>/`` (default
  ``~/.cache/caffe-cae``), entered with ``bwrap`` (no mount outlives the command). The hash
  covers the build script, the patch, the layer sources and ``caffe_cae/proto/caffe_cae.proto``,
  so the engine is rebuilt exactly when the recipe changes. The recipe is read from the
  package (``caffe_cae/docker`` is the repository's ``docker/``), so a wheel install finds the
  same recipe, hash and cached engine as the checkout. The Debian mirror debootstrap uses
  (``$CAFFE_CAE_DEBIAN_MIRROR``, else the first Debian mirror of the host's apt sources) is
  not part of the hash.

``CAFFE_CAE_ENGINE=auto|host|docker|rootfs`` chooses; ``auto`` takes the first of host,
docker, rootfs that can be had, building the root file system on first use.

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
archive; running it needs bwrap (root, or unprivileged user namespaces). The docker kind is
not exercised on machines without a Docker daemon. Paths inside the engine's own system
directories (/usr, /etc, /opt, ...) cannot be bound as working directories.
"""
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import PACKAGE_DIR, REPO_ROOT
from .errors import CaeError

KINDS = ("auto", "host", "docker", "rootfs")
#: Debian release and variant of the root file system (part of the recipe hash).
SUITE = "bullseye"
VARIANT = "minbase"
#: Bump to force a rebuild when the way engine.py drives the build changes.
BUILD_FORMAT = "1"
PREFIX = "/opt/caffe"
CAFFE_PYTHON_DIR = PREFIX + "/lib/python3/dist-packages"
RECIPE_IN_ROOTFS = "/opt/caffe-cae/recipe"
DEFAULT_IMAGE = "caffe-cae:cpu"
#: Where the rootfs and docker engines see a package installed outside a checkout (on PYTHONPATH).
PACKAGE_PARENT_IN_ENGINE = "/run/caffe-cae/python"
#: Environment variables passed through into the engine when set on the host.
PASS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GLOG_minloglevel",
            "GLOG_logtostderr", "GLOG_v", "MNIST_DIR", "CAFFE_CAE_REQUIRE_ENGINE", "TERM",
            "LANG", "LC_ALL", "TZ")
#: Top-level entries of the root file system that are not bound (replaced or empty).
ROOTFS_SKIP = {"dev", "proc", "sys", "tmp", "run", "root", "home", "mnt", "media", "srv", "boot",
               "build", "lost+found"}

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


def recipe_path(rel):
    """The file read for the recipe file ``rel`` (a repository-relative name, as hashed): under the
    package, whose docker/ is the repository's docker/ (a link in a checkout, a copy in a wheel)."""
    return os.path.join(PACKAGE_DIR, rel[len("caffe_cae/"):] if rel.startswith("caffe_cae/") else rel)


def recipe_files():
    """The files whose content defines the engine (sorted repository-relative paths)."""
    files = ["docker/build-caffe.sh", "docker/patch-caffe.py", "caffe_cae/proto/caffe_cae.proto"]
    layer_dir = recipe_path("docker/unpooling")
    if os.path.isdir(layer_dir):
        files += ["docker/unpooling/" + n for n in os.listdir(layer_dir)
                  if n.endswith((".hpp", ".cpp", ".cu"))]
    return sorted(files)


def recipe_contents():
    """{repository-relative path: bytes} of the recipe files, read once."""
    out = {}
    for rel in recipe_files():
        path = recipe_path(rel)
        try:
            with open(path, "rb") as f:
                out[rel] = f.read()
        except OSError as exc:
            raise CaeError("%s: cannot read engine recipe file (%s)" % (path, exc.strerror))
    return out


def recipe_hash(gpu=False, contents=None):
    """First 16 hex digits of the sha256 of the recipe files (names and contents)."""
    h = hashlib.sha256(("caffe-cae engine %s %s %s %s\n" % (BUILD_FORMAT, SUITE, VARIANT,
                                                              "gpu" if gpu else "cpu")).encode())
    for rel, data in sorted((contents or recipe_contents()).items()):
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def engine_dir(gpu=False, contents=None):
    """Where the root file system engine for the current recipe lives (built or not)."""
    return os.path.join(cache_root(), "engine", recipe_hash(gpu, contents) + ("-gpu" if gpu else ""))


def cache_root():
    """$CAFFE_CAE_CACHE, else ~/.cache/caffe-cae."""
    return os.path.abspath(os.environ.get("CAFFE_CAE_CACHE") or
                           os.path.join(os.path.expanduser("~"), ".cache", "caffe-cae"))


def _inside_env(env, extra_pythonpath):
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


class DockerEngine(Engine):
    """The Docker image built from docker/Dockerfile.cpu (``$CAFFE_CAE_DOCKER_IMAGE``)."""

    kind = "docker"

    def __init__(self, image=None):
        super().__init__(image or os.environ.get("CAFFE_CAE_DOCKER_IMAGE", DEFAULT_IMAGE))

    def command(self, argv, cwd=None, env=None):
        cwd = os.path.abspath(cwd or os.getcwd())
        cmd = ["docker", "run", "--rm", "-i", "-u", "%d:%d" % (os.getuid(), os.getgid()),
               "-v", "/tmp:/tmp"]
        for p in visible_paths(cwd):
            cmd += ["-v", "%s:%s" % (p, p)]
        cmd += ["-w", cwd]
        bind = package_bind()
        if bind:
            cmd += ["-v", "%s:%s:ro" % bind]
        inside = _inside_env(env, [CAFFE_PYTHON_DIR, engine_pythonpath()])
        inside.pop("PATH")
        for k, v in sorted(inside.items()):
            cmd += ["-e", "%s=%s" % (k, v)]
        return cmd + [self.location] + list(argv)

    @staticmethod
    def daemon_running():
        if not shutil.which("docker"):
            return False
        try:
            return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def ensure_image(self, log=sys.stderr):
        """Build the image from docker/Dockerfile.cpu when it is missing."""
        have = subprocess.run(["docker", "image", "inspect", self.location], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
        if have:
            return
        if not REPO_ROOT:
            raise CaeError("the Docker image %s is built from a checkout of caffe-cae: docker build -f "
                           "docker/Dockerfile.cpu -t %s . (or use the rootfs engine: caffe-cae engine build)"
                           % (self.location, self.location))
        print("[engine] building Docker image %s from docker/Dockerfile.cpu" % self.location, file=log)
        proc = subprocess.run(["docker", "build", "-f", os.path.join(REPO_ROOT, "docker", "Dockerfile.cpu"),
                               "-t", self.location, REPO_ROOT])
        if proc.returncode != 0:
            raise CaeError("docker build -f docker/Dockerfile.cpu -t %s failed (exit %d)"
                           % (self.location, proc.returncode))


class RootfsEngine(Engine):
    """A Debian bullseye root file system with the engine, entered with bwrap."""

    kind = "rootfs"

    def __init__(self, path):
        super().__init__(path)
        self.rootfs = os.path.join(path, "rootfs")

    def _bind_system(self):
        args = []
        for name in sorted(os.listdir(self.rootfs)):
            if name in ROOTFS_SKIP:
                continue
            full = os.path.join(self.rootfs, name)
            if os.path.islink(full):
                args += ["--symlink", os.readlink(full), "/" + name]
            elif os.path.isdir(full):
                args += ["--ro-bind", full, "/" + name]
        return args

    def command(self, argv, cwd=None, env=None, ro_binds=None):
        """As Engine.command; ``ro_binds`` {host path: top-level path inside} adds read-only
        binds (e.g. a host CUDA toolkit at /cuda for compile checks)."""
        cwd = os.path.abspath(cwd or os.getcwd())
        for top in ("/usr", "/etc", "/opt", "/var", "/bin", "/lib", "/sbin", "/proc", "/dev"):
            if cwd == "/" or cwd == top or cwd.startswith(top + "/"):
                raise CaeError("%s: cannot be the working directory in the rootfs engine (binding it would "
                               "shadow the engine's system directories); run from another directory" % cwd)
        cmd = ["bwrap", "--unshare-pid", "--die-with-parent"] + self._bind_system()
        cmd += ["--proc", "/proc", "--dev", "/dev", "--bind", "/tmp", "/tmp",
                "--dir", "/root", "--dir", "/run"]
        for p in visible_paths(cwd):
            cmd += ["--bind", p, p]
        bind = package_bind()
        if bind:
            cmd += ["--ro-bind", bind[0], bind[1]]
        for host, inside in sorted((ro_binds or {}).items()):
            cmd += ["--ro-bind", host, inside]
        cmd += ["--chdir", cwd, "--clearenv"]
        for k, v in sorted(_inside_env(env, [CAFFE_PYTHON_DIR, engine_pythonpath()]).items()):
            cmd += ["--setenv", k, v]
        return cmd + ["--"] + list(argv)

    def metadata(self):
        try:
            with open(os.path.join(self.location, "engine.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def status(self):
        info = super().status()
        meta = self.metadata()
        info.update(recipe=meta.get("recipe"), built=meta.get("built"), build_seconds=meta.get("build_seconds"))
        return info


#: Suites of Debian's own archive: an apt source for one of them is a Debian mirror (the
#: -security archive is not one, nor another distribution's or vendor's repository).
DEBIAN_SUITES = ("jessie", "stretch", "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental")
_SUITE_SUFFIXES = ("-updates", "-backports", "-proposed-updates", "-backports-sloppy")


def _debian_suite(suite):
    for suffix in _SUITE_SUFFIXES:
        if suite.endswith(suffix):
            suite = suite[:-len(suffix)]
            break
    return suite in DEBIAN_SUITES


def apt_source_files(apt_dir="/etc/apt"):
    """The host's apt source files in apt's order: sources.list, then sources.list.d/ (sorted)."""
    files = [os.path.join(apt_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")) +
                    glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources")))
    return [f for f in files if os.path.isfile(f)]


def parse_apt_sources(path):
    """[(types, uris, suites)] of the enabled entries of an apt source file: one-line format
    (``deb [options] URI SUITE COMPONENT...``) or, for ``*.sources``, deb822 paragraphs."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    entries = []
    if path.endswith(".sources"):
        for para in re.split(r"\n[ \t]*\n", text):
            fields, key = {}, None
            for line in para.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, value = line.split(":", 1)
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append((fields.get("types", "").split(), fields.get("uris", "").split(),
                            fields.get("suites", "").split()))
    else:
        for line in text.splitlines():
            m = re.match(r"\s*(deb|deb-src)\s+(?:\[[^\]]*\]\s*)?(\S+)\s+(\S+)", line.split("#", 1)[0])
            if m:
                entries.append(([m.group(1)], [m.group(2)], [m.group(3)]))
    return entries


def debian_mirror(apt_dir="/etc/apt"):
    """The Debian mirror for debootstrap: $CAFFE_CAE_DEBIAN_MIRROR, else the first URI of the host's
    apt sources that serves a Debian suite (see DEBIAN_SUITES). CaeError when there is none."""
    if os.environ.get("CAFFE_CAE_DEBIAN_MIRROR"):
        return os.environ["CAFFE_CAE_DEBIAN_MIRROR"]
    files = apt_source_files(apt_dir)
    for path in files:
        for types, uris, suites in parse_apt_sources(path):
            if "deb" in types and any(_debian_suite(s) for s in suites):
                for uri in uris:
                    if re.match(r"(https?|ftp|file):", uri):
                        return uri
    raise CaeError("no Debian mirror to build the engine from: none of %s names one (a deb entry for a Debian "
                   "suite such as bookworm); set CAFFE_CAE_DEBIAN_MIRROR to a Debian mirror's URL"
                   % (", ".join(files) or "%s/sources.list, %s/sources.list.d/*.list|*.sources" % (apt_dir, apt_dir)))


def _check_bwrap():
    """bwrap is installed and can make a sandbox here (root, or unprivileged user namespaces)."""
    if not shutil.which("bwrap"):
        raise CaeError("bwrap not found: the rootfs engine needs bubblewrap (apt-get install bubblewrap), "
                       "or set CAFFE_CAE_ENGINE=docker with a running Docker daemon")
    if os.geteuid() != 0:
        proc = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-pid", "true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, universal_newlines=True)
        if proc.returncode != 0:
            raise CaeError("bwrap cannot make a sandbox as uid %d (%s): run as root, enable unprivileged user "
                           "namespaces (sysctl kernel.unprivileged_userns_clone=1), or use CAFFE_CAE_ENGINE=docker"
                           % (os.geteuid(), (proc.stderr.strip().splitlines() or ["no message"])[-1]))


def _stream(cmd, log_file, log, prefix_only=True):
    """Run cmd, copy every output line to log_file and the stage lines to log; return status."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            errors="replace")
    last = []
    for line in proc.stdout:
        log_file.write(line)
        last = (last + [line.rstrip("\n")])[-30:]
        if not prefix_only or line.startswith("[engine]"):
            print(line.rstrip("\n"), file=log, flush=True)
    return proc.wait(), last


def _clean_stale(parent):
    """Remove half-built engines left by builds that were killed."""
    for name in os.listdir(parent):
        if not name.startswith(".tmp-"):
            continue
        pid = name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and os.path.exists("/proc/" + pid)
        if not alive:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _terminated(signum, frame):
    raise SystemExit("caffe-cae: engine build terminated (signal %d); nothing was kept" % signum)


def build_rootfs(gpu=False, log=sys.stderr, force=False):
    """Build (or reuse) the root file system engine; returns its RootfsEngine.

    Debootstraps Debian bullseye into a temporary directory beside the cache entry, runs
    docker/build-caffe.sh in it under bwrap (network on, as root), then renames it into
    place, so an interrupted build leaves nothing half-made. Needs root.
    """
    if gpu:
        raise CaeError("engine build --gpu: the GPU recipe is docker/Dockerfile.gpu (needs Docker and a CUDA "
                       "base image); the rootfs engine is CPU only")
    contents = recipe_contents()  # what is hashed is what is built, whatever changes meanwhile
    final = engine_dir(gpu, contents)
    parent = os.path.dirname(final)
    if os.path.isfile(os.path.join(final, "engine.json")) and not force:
        return RootfsEngine(final)
    _check_bwrap()
    if os.geteuid() != 0:
        raise CaeError("building the rootfs engine needs root (debootstrap): run `sudo make engine`, or use "
                       "Docker: docker build -f docker/Dockerfile.cpu -t %s . and CAFFE_CAE_ENGINE=docker"
                       % DEFAULT_IMAGE)
    if not shutil.which("debootstrap"):
        raise CaeError("debootstrap not found: apt-get install debootstrap (needed to build the rootfs engine)")
    mirror = debian_mirror()
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(final, "engine.json")) and not force:
            return RootfsEngine(final)
        _clean_stale(parent)
        tmp = os.path.join(parent, ".tmp-%s-%d" % (os.path.basename(final), os.getpid()))
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGTERM, _terminated)
        try:
            seconds = _build_into(tmp, gpu, log, contents, mirror)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
    print("[engine] ready in %.0f s: %s" % (seconds, final), file=log, flush=True)
    return RootfsEngine(final)


def _build_into(tmp, gpu, log, contents, mirror):
    start = time.time()
    rootfs = os.path.join(tmp, "rootfs")
    os.makedirs(tmp)
    log_path = os.path.join(tmp, "build.log")
    with open(log_path, "w") as log_file:
        print("[engine] 0/7 debootstrap --variant=%s %s (%s)" % (VARIANT, SUITE, mirror), file=log, flush=True)
        status, last = _stream(["debootstrap", "--variant=" + VARIANT, SUITE, rootfs, mirror], log_file, log)
        if status != 0:
            raise CaeError("debootstrap %s failed (exit %d): %s" % (SUITE, status, last[-1] if last else ""))
        recipe_dir = rootfs + RECIPE_IN_ROOTFS
        for rel, data in sorted(contents.items()):
            dest = os.path.join(recipe_dir, rel.replace("docker/", "", 1).replace("caffe_cae/proto/", "", 1))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
        cmd = ["bwrap", "--bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--perms", "1777",
               "--tmpfs", "/tmp", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf", "--cap-add", "ALL",
               "--unshare-pid", "--die-with-parent", "--clearenv",
               "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--setenv", "HOME", "/root", "--setenv", "LANG", "C.UTF-8",
               "--setenv", "JOBS", os.environ.get("CAFFE_CAE_JOBS", "2"), "--",
               "bash", RECIPE_IN_ROOTFS + "/build-caffe.sh"] + (["--gpu"] if gpu else []) + [RECIPE_IN_ROOTFS]
        status, last = _stream(cmd, log_file, log)
        if status != 0:
            kept = os.path.join(os.path.dirname(tmp), "last-failed-build.log")
            log_file.flush()
            shutil.copyfile(log_path, kept)
            raise CaeError("engine build failed (exit %d): %s; full log: %s"
                           % (status, last[-1] if last else "no output", kept))
        clean = ["bwrap", "--bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--cap-add", "ALL",
                 "--", "apt-get", "clean"]
        subprocess.run(clean, stdout=log_file, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    meta = {"recipe": recipe_hash(gpu, contents), "suite": SUITE, "mode": "gpu" if gpu else "cpu",
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(seconds, 1),
            "files": sorted(contents)}
    with open(os.path.join(tmp, "engine.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return seconds


def prune(keep, log=sys.stderr):
    """Remove the cached engines other than ``keep`` (a path); returns the removed paths.

    Takes the build lock, so it never removes a build under way; a command running in a
    removed engine at that moment loses its files."""
    parent = os.path.dirname(os.path.abspath(keep))
    removed = []
    if not os.path.isdir(parent):
        return removed
    with open(os.path.join(parent, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name)
            if path != os.path.abspath(keep) and os.path.isfile(os.path.join(path, "engine.json")):
                print("[engine] removing old engine %s" % path, file=log, flush=True)
                shutil.rmtree(path)
                removed.append(path)
    return removed


def find_rootfs(gpu=False):
    """The cached root file system engine for the current recipe, or None."""
    path = engine_dir(gpu)
    return RootfsEngine(path) if os.path.isfile(os.path.join(path, "engine.json")) else None


def get_engine(kind=None, build=True, log=sys.stderr):
    """The engine to use: ``kind`` or $CAFFE_CAE_ENGINE (default auto). Raises CaeError.

    ``build=False`` never builds (the rootfs must be cached, the Docker image present).
    """
    kind = kind or os.environ.get("CAFFE_CAE_ENGINE") or "auto"
    if kind not in KINDS:
        raise CaeError("CAFFE_CAE_ENGINE=%s: expected one of %s" % (kind, ", ".join(KINDS)))
    if kind in ("auto", "host"):
        eng = HostEngine.find()
        if eng:
            return eng
        if kind == "host":
            raise CaeError("CAFFE_CAE_ENGINE=host: %s has no pycaffe with an Unpooling layer; use "
                           "CAFFE_CAE_ENGINE=rootfs (make engine) or docker" % HostEngine().python)
    if kind in ("auto", "docker"):
        if DockerEngine.daemon_running():
            eng = DockerEngine()
            if build:
                eng.ensure_image(log)
            return eng
        if kind == "docker":
            raise CaeError("CAFFE_CAE_ENGINE=docker: no running Docker daemon (docker info fails); start it, "
                           "or use CAFFE_CAE_ENGINE=rootfs (make engine)")
    eng = find_rootfs()
    if eng:
        _check_bwrap()
        return eng
    if not build:
        raise CaeError("no Caffe engine: the rootfs engine for this recipe is not built; run `make engine` "
                       "(caffe-cae engine build)")
    return build_rootfs(log=log)

