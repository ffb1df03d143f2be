"""The docker engine: the image built from docker/Dockerfile (``caffe-cae:cpu``, ``caffe-cae:gpu``),
run by the ``docker`` CLI.

The Docker API is a running Docker daemon's when ``docker info`` answers; otherwise, where podman
is installed, a podman service this module starts on demand (``podman system service``, socket
``$CAFFE_CAE_CACHE/podman/docker.sock``, runtime runc, host network, no default ulimits: see
CONTAINERS_CONF) and that keeps serving for later commands; the docker CLI builds and inspects
images through it, and containers are run with ``podman run`` on the same images (run_argv).
Every command carries its own environment (argv starts with ``env``), so callers set nothing.
Containers run with ``--init``; the harness's wheels for the image are downloaded on the host
(``pip download``, the host's index and certificates) into the build context.

Images are cached by recipe hash, as the rootfs engine is: the hash covers docker/Dockerfile, the
build arguments and every file of the build context (the engine recipe under recipe/, the harness
under harness/), and is the image's label LABEL; an image whose label matches is not rebuilt, and
a rebuild after a harness change reuses the engine layer from Docker's layer cache. The base
``debian:bullseye`` is pulled, or made locally where no registry answers (debootstrap, as root).
"""
import configparser
import fcntl
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .. import PACKAGE_DIR, REPO_ROOT
from ..errors import CaeError
from .base import Engine, engine_pythonpath, inside_env, package_bind, visible_paths
from .gpu import host_has_gpu
from .recipe import (CAFFE_PYTHON_DIR, GPU_ARCHS, SUITE, VARIANT, cache_root, debian_mirror, digest,
                     engine_dir, recipe_contents, recipe_in_engine)
from .rootfs import build_rootfs

IMAGES = {False: "caffe-cae:cpu", True: "caffe-cae:gpu"}
BASE_IMAGE = "debian:" + SUITE
#: A rootfs engine's file system as an image (tagged with the engine's directory name), the base of
#: the caffe-cae images where the rootfs engine can be built.
ENGINE_IMAGE = "caffe-cae-engine"
LABEL = "org.caffe-cae.recipe"
#: The GPU image's compute capabilities (space-separated; the PTX is the last one's).
ARCHS_LABEL = "org.caffe-cae.archs"
#: The podman service's configuration: what makes containers run on hosts with hybrid cgroups
#: (crun fails there: runc) and without permission to set ulimits; the host network, as Docker's
#: default bridge needs privileges a rootless or nested podman may not have.
CONTAINERS_CONF = """[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
"""
#: The image's Python (Debian bullseye's) and what pip download, which evaluates environment markers
#: with the host's Python, would leave out for it: matplotlib's backports for Python < 3.10.
IMAGE_PYTHON = "3.9"
PY39_BACKPORTS = ("importlib-resources>=3.2.0", "zipp>=3.1.0")
#: The harness in the build context (under harness/): what `pip install` of the checkout reads.
HARNESS_FILES = ("setup.cfg", "pyproject.toml")  # README.md: only the long description
HARNESS_DIRS = ("caffe_cae", "templates", "docker")


def dockerfile():
    return os.path.join(PACKAGE_DIR, "docker", "Dockerfile")


def _walk(root, rel):
    """{context path: bytes or ('link', target)} of the files under REPO_ROOT/rel (no caches)."""
    out = {}
    top = os.path.join(root, rel)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info")
                             and not os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames) + [d for d in os.listdir(dirpath) if os.path.islink(os.path.join(dirpath, d))
                                          and os.path.isdir(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                out[key] = ("link", os.readlink(path))
            elif not name.endswith(".pyc"):
                with open(path, "rb") as f:
                    out[key] = f.read()
    return out


def image_context():
    """{path in the build context: bytes or ('link', target)}: recipe/ (the GPU recipe, which holds the
    CPU one) and harness/. The same for both images, which differ by their build arguments."""
    if not REPO_ROOT:
        raise CaeError("the caffe-cae image is built from a checkout of caffe-cae (its harness is the checkout); "
                       "this package was installed from a wheel: use the rootfs engine (caffe-cae engine build)")
    ctx = {"recipe/" + recipe_in_engine(rel): data for rel, data in recipe_contents(gpu=True).items()}
    for name in HARNESS_FILES:
        with open(os.path.join(REPO_ROOT, name), "rb") as f:
            ctx["harness/" + name] = f.read()
    for name in HARNESS_DIRS:
        ctx.update({"harness/" + k: v for k, v in _walk(REPO_ROOT, name).items()})
    return ctx


def harness_requirements():
    """The harness's dependencies (setup.cfg's install_requires), the build tools of an editable
    install, and the backports the image's Python needs."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO_ROOT, "setup.cfg"))
    reqs = [r.strip() for r in cfg["options"]["install_requires"].splitlines() if r.strip()]
    return reqs + ["pip>=23", "setuptools>=61", "wheel"] + list(PY39_BACKPORTS)


def download_wheels(dest):
    """pip download (this host's pip configuration) of the harness's wheels for the image's Python."""
    machine = os.uname().machine
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", IMAGE_PYTHON,
            "--implementation", "cp", "--abi", "cp" + IMAGE_PYTHON.replace(".", ""), "--abi", "abi3", "--abi", "none",
            "--platform", "any", "-d", dest]
    for tag in ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux2010", "manylinux_2_12"):
        argv += ["--platform", "%s_%s" % (tag, machine)]
    # the host's pins (PIP_CONSTRAINT, pip.conf) are for its own Python, not the image's
    proc = subprocess.run(argv + harness_requirements(), env=dict(os.environ, PIP_CONSTRAINT=""),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        raise CaeError("pip download of the image's Python packages failed: %s"
                       % (proc.stdout.strip().splitlines() or ["no output"])[-1])


def engine_base(gpu=False, archs=None):
    """The base image holding the rootfs engine of the current recipe (caffe-cae-engine:<its recipe
    hash>), where this host can build rootfs engines (root, debootstrap, bwrap); else None: the
    image compiles the engine itself from debian:bullseye (docker/Dockerfile, ENGINE=build)."""
    if os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which("bwrap"):
        return None
    return "%s:%s" % (ENGINE_IMAGE, os.path.basename(engine_dir(gpu, archs=archs)))


def build_args(gpu=False, archs=None, base=None):
    return {"GPU": "1" if gpu else "0", "CUDA_ARCH_BIN": " ".join((archs or GPU_ARCHS).split()),
            "BASE": base or BASE_IMAGE, "ENGINE": "prebuilt" if base else "build"}


def image_hash(gpu=False, archs=None, context=None, base="auto"):
    """The image's recipe hash: Dockerfile, build arguments (the base: the rootfs engine's recipe, as
    engine_base chooses unless given; None: compiled in the image), every file of the context."""
    base = engine_base(gpu, archs) if base == "auto" else base
    with open(dockerfile(), "rb") as f:
        files = {"Dockerfile": f.read()}
    for key, value in (context or image_context()).items():
        files[key] = value if isinstance(value, bytes) else ("\0link\0" + value[1]).encode()
    args = "".join("%s=%s\n" % kv for kv in sorted(build_args(gpu, archs, base).items()))
    return digest(("caffe-cae image %s %s\n%s" % (SUITE, VARIANT, args), files))


# -- the Docker API: a daemon, or a podman service -----------------------------------------------

def answers(env):
    """`docker info` succeeds with the environment ``env`` (False without the docker CLI)."""
    try:
        return subprocess.run(["docker", "info"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def podman_socket():
    return os.path.join(cache_root(), "podman", "docker.sock")


def docker_host():
    """The DOCKER_HOST for the docker CLI: None when ``docker info`` answers as the environment
    is, else the podman service's socket (started here when not running). CaeError without either."""
    if not shutil.which("docker"):
        raise CaeError("docker not found: the docker engine needs the docker CLI (apt-get install docker.io) and "
                       "a Docker daemon or podman (apt-get install podman runc); or use the rootfs engine")
    if answers(dict(os.environ)):
        return None
    sock = podman_socket()
    host = "unix://" + sock
    env = dict(os.environ, DOCKER_HOST=host)
    if os.path.exists(sock) and answers(env):
        return host
    if not shutil.which("podman"):
        raise CaeError("no Docker API: `docker info` fails and podman is not installed; start a Docker daemon, or "
                       "apt-get install podman runc (caffe-cae then serves the API with podman)")
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    conf = os.path.join(os.path.dirname(sock), "containers.conf")
    with open(conf, "w") as f:
        f.write(CONTAINERS_CONF)
    if os.path.exists(sock):
        os.unlink(sock)
    with open(os.path.join(os.path.dirname(sock), "service.log"), "ab") as log:
        subprocess.Popen(["podman", "system", "service", "--time=0", host], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, env=dict(os.environ, CONTAINERS_CONF=conf),
                         start_new_session=True)
    for _ in range(60):
        time.sleep(0.5)
        if os.path.exists(sock) and answers(env):
            return host
    raise CaeError("podman system service did not answer on %s within 30 s; see %s" % (
        sock, os.path.join(os.path.dirname(sock), "service.log")))


def docker_argv(host):
    """The start of every docker command: the CLI with its DOCKER_HOST (classic builder)."""
    return ["env"] + (["DOCKER_HOST=" + host] if host else []) + ["DOCKER_BUILDKIT=0", "docker"]


def run_argv(host):
    """The start of every container run: ``docker run``, or for caffe-cae's podman service ``podman run``
    on the same images (podman 4.3's Docker API reports exit status 0 for every ``run --rm``)."""
    if host == "unix://" + podman_socket():
        return ["env", "CONTAINERS_CONF=" + os.path.join(os.path.dirname(podman_socket()), "containers.conf"),
                "podman", "run"]
    return docker_argv(host) + ["run"]


def docker(host, *args, **kwargs):
    return subprocess.run(docker_argv(host) + list(args), **kwargs)


def image_label(host, image, label=LABEL):
    """The recipe label (or ``label``) of ``image``, None when there is no such image."""
    proc = docker(host, "image", "inspect", "-f", '{{index .Config.Labels "%s"}}' % label, image,
                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_base(host, log=sys.stderr):
    """debian:bullseye: present, pulled, or made here with debootstrap (no registry)."""
    if image_label(host, BASE_IMAGE) is not None:
        return
    print("[engine] docker pull %s" % BASE_IMAGE, file=log, flush=True)
    pulled = docker(host, "pull", "-q", BASE_IMAGE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    universal_newlines=True, timeout=600)
    if pulled.returncode == 0:
        return
    reason = (pulled.stderr.strip().splitlines() or ["no message"])[-1]
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise CaeError("docker pull %s failed (%s) and it cannot be made here (needs root and debootstrap)"
                       % (BASE_IMAGE, reason))
    mirror = debian_mirror()
    print("[engine] no registry (%s): making %s with debootstrap --variant=%s (%s)" % (reason, BASE_IMAGE, VARIANT,
                                                                                       mirror), file=log, flush=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        root = os.path.join(tmp, "rootfs")
        proc = subprocess.run(["debootstrap", "--variant=" + VARIANT, SUITE, root, mirror], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            raise CaeError("debootstrap %s failed (exit %d): %s" % (SUITE, proc.returncode,
                                                                    proc.stdout.strip().splitlines()[-1:]))
        for deb in glob.glob(os.path.join(root, "var", "cache", "apt", "archives", "*.deb")):
            os.unlink(deb)  # what debootstrap downloaded (apt-get clean)
        import_rootfs(host, root, BASE_IMAGE)


def _write_context(ctx, root):
    for key, value in ctx.items():
        path = os.path.join(root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(value, bytes):
            with open(path, "wb") as f:
                f.write(value)
            if key.endswith(".sh"):
                os.chmod(path, 0o755)
        else:
            os.symlink(value[1], path)
    shutil.copyfile(dockerfile(), os.path.join(root, "Dockerfile"))


def default_image(gpu=False):
    """caffe-cae:gpu, or $CAFFE_CAE_DOCKER_IMAGE (default caffe-cae:cpu)."""
    return IMAGES[True] if gpu else os.environ.get("CAFFE_CAE_DOCKER_IMAGE", IMAGES[False])


def build_image(gpu=False, archs=None, force=False, log=sys.stderr):
    """Build (or reuse) the image; returns its DockerEngine. ``archs``: the GPU image's compute
    capabilities (default GPU_ARCHS; .ci/run builds one)."""
    host = docker_host()
    image = default_image(gpu)
    ctx = image_context()
    base = engine_base(gpu, archs)
    want = image_hash(gpu, archs, ctx, base)
    if image_label(host, image) == want and not force:
        return DockerEngine(image, host, gpu)
    os.makedirs(cache_root(), exist_ok=True)
    with open(os.path.join(cache_root(), ".image-build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a build that waited may find it made
        if image_label(host, image) != want or force:
            _build(host, image, gpu, archs, ctx, want, base, log)
    return DockerEngine(image, host, gpu)


def import_rootfs(host, root, tag):
    """``docker import`` of the file system ``root`` as the image ``tag``."""
    tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
    imported = docker(host, "import", "-", tag, stdin=tar.stdout, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE, universal_newlines=True)
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        raise CaeError("docker import %s failed: %s" % (tag, imported.stderr.strip()[-300:]))


def ensure_engine_base(host, base, gpu, archs, log=sys.stderr):
    """The image ``base``: the rootfs engine (built when missing) imported once."""
    if image_label(host, base) is not None:
        return
    eng = build_rootfs(gpu, log=log, archs=archs)
    print("[engine] docker import of the rootfs engine %s as %s" % (eng.location, base), file=log, flush=True)
    import_rootfs(host, os.path.join(eng.location, "rootfs"), base)


def _build(host, image, gpu, archs, ctx, want, base, log):
    if base:
        ensure_engine_base(host, base, gpu, archs, log)
    else:
        ensure_base(host, log)
    start = time.time()
    print("[engine] docker build %s (recipe %s%s, engine %s)" % (
        image, want, ", sm " + build_args(gpu, archs)["CUDA_ARCH_BIN"] if gpu else "",
        "from " + base if base else "compiled in the image"), file=log, flush=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        _write_context(ctx, tmp)
        print("[engine] pip download of the harness's packages for Python %s" % IMAGE_PYTHON, file=log, flush=True)
        download_wheels(os.path.join(tmp, "wheels"))
        argv = ["build", "--label", "%s=%s" % (LABEL, want), "-t", image]
        if gpu:
            argv += ["--label", "%s=%s" % (ARCHS_LABEL, build_args(gpu, archs)["CUDA_ARCH_BIN"])]
        for kv in sorted(build_args(gpu, archs, base).items()):
            argv += ["--build-arg", "%s=%s" % kv]
        proc = subprocess.Popen(docker_argv(host) + argv + [tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, errors="replace")
        last = []
        log_path = os.path.join(cache_root(), "image-build.log")
        with open(log_path, "w") as log_file:
            for line in proc.stdout:
                log_file.write(line)
                last = (last + [line.rstrip("\n")])[-5:]
                if line.startswith(("[engine]", "STEP", "Step")):
                    print(line.rstrip("\n"), file=log, flush=True)
        if proc.wait() != 0:
            raise CaeError("docker build of %s failed (exit %d): %s; full log: %s"
                           % (image, proc.returncode, " | ".join(last), log_path))
    print("[engine] image %s ready in %.0f s" % (image, time.time() - start), file=log, flush=True)


class DockerEngine(Engine):
    """A container of the caffe-cae image per command; ``gpu``: the GPU image, run with the host's
    GPUs where it has an NVIDIA driver (``--gpus all``: Docker with the NVIDIA container toolkit)."""

    kind = "docker"

    def __init__(self, image=None, host=None, gpu=False):
        super().__init__(image or default_image(gpu))
        self.host = host
        self.gpu = gpu

    def command(self, argv, cwd=None, env=None):
        cwd = os.path.abspath(cwd or os.getcwd())
        # --init: the command is not PID 1, which ignores signals it has no handler for (Caffe's abort)
        cmd = run_argv(self.host) + ["--rm", "--init", "-i", "-u", "%d:%d" % (os.getuid(), os.getgid()),
                                     "-v", "/tmp:/tmp"]
        cmd += ["--gpus", "all"] if self.gpu and host_has_gpu() else []
        for p in visible_paths(cwd):
            cmd += ["-v", "%s:%s" % (p, p)]
        cmd += ["-w", cwd]
        bind = package_bind()
        if bind:
            cmd += ["-v", "%s:%s:ro" % bind]
        # the engine's own python3 and tools first (the image's PATH leads to the harness's venv)
        for k, v in sorted(inside_env(env, [CAFFE_PYTHON_DIR, engine_pythonpath()]).items()):
            cmd += ["-e", "%s=%s" % (k, v)]
        return cmd + [self.location] + list(argv)

    def status(self):
        info = super().status()
        info["recipe"] = image_label(self.host, self.location)
        return info

    @classmethod
    def find(cls, gpu=False, build=True, log=sys.stderr):
        """The docker engine (its image built when missing or stale, unless ``build`` is False)."""
        if build:
            return build_image(gpu, log=log)
        host = docker_host()
        eng = cls(None, host, gpu)
        if image_label(host, eng.location) is None:
            raise CaeError("no Docker image %s: make %s" % (eng.location, "docker-gpu" if gpu else "docker"))
        return eng

