"""The rootfs engine: a Debian bullseye root file system (``debootstrap --variant=minbase``) in which
docker/build-caffe.sh ran, cached in ``$CAFFE_CAE_CACHE/engine/<recipe hash>[-gpu]/``, entered with
``bwrap`` (no mount outlives the command). A GPU engine (``engine build --gpu``) first installs
Debian's CUDA (docker/cuda-toolkit.sh) and, when run on a host with an NVIDIA driver, binds the
driver's devices and libraries (see :mod:`caffe_cae.engine.gpu`)."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from ..errors import CaeError
from . import gpu as gpu_binds
from .base import Engine, engine_pythonpath, inside_env, package_bind, visible_paths
from .recipe import (CAFFE_PYTHON_DIR, GPU_ARCHS, PREFIX, RECIPE_IN_ROOTFS, SUITE, VARIANT, debian_mirror, engine_dir,
                     recipe_contents, recipe_hash, recipe_in_engine)

#: Top-level entries of the root file system that are not bound (replaced or empty).
ROOTFS_SKIP = {"dev", "proc", "sys", "tmp", "run", "root", "home", "mnt", "media", "srv", "boot",
               "build", "lost+found"}


class RootfsEngine(Engine):
    """A Debian bullseye root file system with the engine, entered with bwrap."""

    kind = "rootfs"

    def __init__(self, path, nvidia=None):
        """``nvidia``: (bwrap args, library dir) of the NVIDIA binds (gpu.bwrap_args); by default
        those of this host for a GPU engine (a directory ending in -gpu), none for a CPU engine."""
        super().__init__(path)
        self.rootfs = os.path.join(path, "rootfs")
        if nvidia is None:
            nvidia = gpu_binds.bwrap_args() if path.rstrip("/").endswith("-gpu") else ([], None)
        self.nvidia = nvidia

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
        nvidia_args, nvidia_libs = self.nvidia
        cmd += nvidia_args + ["--chdir", cwd, "--clearenv"]
        inside = inside_env(env, [CAFFE_PYTHON_DIR, engine_pythonpath()])
        if nvidia_libs:
            inside["LD_LIBRARY_PATH"] = nvidia_libs
        for k, v in sorted(inside.items()):
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


def check_bwrap():
    """bwrap is installed and can make a sandbox here (root, or unprivileged user namespaces)."""
    if not shutil.which("bwrap"):
        raise CaeError("bwrap not found: the rootfs engine needs bubblewrap (apt-get install bubblewrap), "
                       "or use Docker: make docker and CAFFE_CAE_ENGINE=docker")
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


def build_rootfs(gpu=False, log=sys.stderr, force=False, archs=None):
    """Build (or reuse) the root file system engine; returns its RootfsEngine.

    Debootstraps Debian bullseye into a temporary directory beside the cache entry (a GPU
    build starts from a copy of the cached CPU engine instead, where there is one), runs
    docker/build-caffe.sh in it under bwrap (network on, as root), then renames it into
    place, so an interrupted build leaves nothing half-made. Needs root. ``gpu``: CUDA from
    Debian (docker/cuda-toolkit.sh) and Caffe for the compute capabilities ``archs``
    (default GPU_ARCHS); no GPU is needed to build.
    """
    archs = " ".join((archs or GPU_ARCHS).split())
    contents = recipe_contents(gpu)  # what is hashed is what is built, whatever changes meanwhile
    final = engine_dir(gpu, contents, archs)
    parent = os.path.dirname(final)
    if os.path.isfile(os.path.join(final, "engine.json")) and not force:
        return RootfsEngine(final)
    check_bwrap()
    if os.geteuid() != 0:
        raise CaeError("building the rootfs engine needs root (debootstrap): run `sudo make engine`, or use "
                       "Docker: make docker and CAFFE_CAE_ENGINE=docker")
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
        base = find_rootfs(False) if gpu else None
        try:
            seconds = _build_into(tmp, gpu and archs, log, contents, mirror, base)
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


def _start_from(base, rootfs, log, log_file):
    """Copy the CPU engine ``base`` (same build-caffe.sh, so the same Debian system and build
    packages) into ``rootfs``, less its Caffe and recipe: the GPU build then skips debootstrap
    and the package downloads (about 7 minutes) and compiles the same source."""
    print("[engine] 0/7 system: a copy of the CPU engine %s (its Caffe removed)" % base.location, file=log, flush=True)
    status, last = _stream(["cp", "-a", "--reflink=auto", base.rootfs, rootfs], log_file, log)
    if status != 0:
        raise CaeError("copying the CPU engine %s failed (exit %d): %s"
                       % (base.location, status, last[-1] if last else ""))
    for inside in (PREFIX, RECIPE_IN_ROOTFS):
        if os.path.exists(rootfs + inside):
            shutil.rmtree(rootfs + inside)


def _build_into(tmp, archs, log, contents, mirror, base=None):
    """Build into ``tmp``; ``archs``: the GPU engine's compute capabilities, or None (CPU);
    ``base``: a CPU RootfsEngine to start a GPU build from (else debootstrap)."""
    start = time.time()
    rootfs = os.path.join(tmp, "rootfs")
    os.makedirs(tmp)
    log_path = os.path.join(tmp, "build.log")
    with open(log_path, "w") as log_file:
        if base is not None:
            _start_from(base, rootfs, log, log_file)
        else:
            print("[engine] 0/7 debootstrap --variant=%s %s (%s)" % (VARIANT, SUITE, mirror), file=log, flush=True)
            status, last = _stream(["debootstrap", "--variant=" + VARIANT, SUITE, rootfs, mirror], log_file, log)
            if status != 0:
                raise CaeError("debootstrap %s failed (exit %d): %s" % (SUITE, status, last[-1] if last else ""))
        recipe_dir = rootfs + RECIPE_IN_ROOTFS
        for rel, data in sorted(contents.items()):
            dest = os.path.join(recipe_dir, recipe_in_engine(rel))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
        cmd = ["bwrap", "--bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--perms", "1777",
               "--tmpfs", "/tmp", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf", "--cap-add", "ALL",
               "--unshare-pid", "--die-with-parent", "--clearenv",
               "--setenv", "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--setenv", "HOME", "/root", "--setenv", "LANG", "C.UTF-8",
               "--setenv", "JOBS", os.environ.get("CAFFE_CAE_JOBS", "2"), "--setenv", "CUDA_ARCH_BIN", archs or "",
               "--", "bash", "-c", build_command(bool(archs), RECIPE_IN_ROOTFS)]
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
    meta = {"recipe": recipe_hash(bool(archs), contents, archs or None), "suite": SUITE,
            "mode": "gpu" if archs else "cpu", "archs": archs or None,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(seconds, 1),
            "started_from": base.metadata().get("recipe") if base is not None else "debootstrap",
            "files": sorted(contents)}
    with open(os.path.join(tmp, "engine.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return seconds


def prune(keep, log=sys.stderr):
    """Remove the cached engines of the same device (CPU, or GPU: a name ending in -gpu) other than
    ``keep`` (a path); returns the removed paths.

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
            same_device = name.endswith("-gpu") == keep.rstrip("/").endswith("-gpu")
            if path != os.path.abspath(keep) and same_device and os.path.isfile(os.path.join(path, "engine.json")):
                print("[engine] removing old engine %s" % path, file=log, flush=True)
                shutil.rmtree(path)
                removed.append(path)
    return removed


def build_command(gpu, recipe_dir):
    """The shell command that builds the engine from the recipe directory (docker/Dockerfile runs the same)."""
    if gpu:
        return 'bash %s/cuda-toolkit.sh && bash %s/build-caffe.sh --gpu %s' % (recipe_dir, recipe_dir, recipe_dir)
    return "bash %s/build-caffe.sh %s" % (recipe_dir, recipe_dir)


def find_rootfs(gpu=False, archs=None):
    """The cached root file system engine for the current recipe, or None."""
    path = engine_dir(gpu, archs=archs)
    return RootfsEngine(path) if os.path.isfile(os.path.join(path, "engine.json")) else None
