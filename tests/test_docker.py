"""The caffe-cae images, built (make docker, make docker-gpu) and run for real through the docker CLI
(a Docker daemon, else the podman service caffe-cae starts):

- from the host (the docker engine kind): the checks of tests/test_engine.py (Unpooling forward and
  backward against NumPy, the gtest, the V1 upgrade) and of tests/test_engine_nets.py (every
  generated net instantiates with caffe-cae inspect's and the paper's parameter count), run here
  with ``eng`` the image; a 20-iteration training run and an extraction whose losses equal those of
  the rootfs engine for the same seed;
- the image on its own: its harness trains the same run with its own engine (kind host), and its
  Makefile steps work in a checkout mounted at the same path;
- the GPU image (CI builds one architecture plus its PTX): its Caffe links the CUDA runtime and
  holds device code for exactly the compute capabilities it was built for (cuobjdump).

Skipped without the docker CLI and a Docker API or an image; FAIL in CI (CAFFE_CAE_REQUIRE_ENGINE=1),
where .ci/run builds the images first.
"""
import json
import os
import shutil
import subprocess
import time

import h5py
import pytest

from caffe_cae import REPO_ROOT, engine
from caffe_cae import extract as extract_lib
from caffe_cae.backends.caffe_backend import CaffeBackend
from caffe_cae.engine import docker as docker_lib
from caffe_cae.errors import CaeError

from conftest import missing
from engine_support import REQUIRED, SCRIPTS, run_json
from train_support import run_train, tiny_root  # noqa: F401
# The engine checks, run with the ``eng`` fixture below (the image), as they run with the rootfs engine.
from test_engine import (CASES, test_model3_pool_unpool_puts_maxima_back, test_nonzero_pad_is_refused,  # noqa: F401
                         test_status_reports_caffe_with_unpooling, test_unpooling_gtest_passes,
                         test_unpooling_matches_numpy_reference, test_unpooling_output_sizes,
                         test_upgrade_tool_knows_v1_unpooling, unpool_report)
from test_engine_nets import (net_report, test_generated_nets_exist,  # noqa: F401
                              test_net_instantiates_with_inspect_param_count, test_param_count_equals_paper_at_d2)

ITERS = 20
NET = "model4"
#: OpenBLAS's thread count changes its summation order, hence the last digits of every loss: the runs
#: compared here all get one thread (the rootfs engine and the docker engine pass these through).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ONE_THREAD.items():
            mp.setenv(name, value)
        yield


def image_engine(gpu=False):
    """The image's engine (built in CI when missing or stale; elsewhere only if present)."""
    try:
        return docker_lib.DockerEngine.find(gpu=gpu, build=REQUIRED and not gpu)
    except CaeError as exc:
        missing(str(exc))


@pytest.fixture(scope="module")
def eng():
    eng = image_engine()
    assert eng.kind == "docker"
    return eng


@pytest.fixture(scope="module")
def rootfs():
    eng = engine.find_rootfs()
    if eng is None:
        missing("no rootfs engine for recipe %s (make engine)" % engine.recipe_hash())
    return eng


def train_and_extract(eng, root, out):
    """20 iterations of Model 4 at D=2, seed 1, then the test set's codes: (train log, codes attrs)."""
    backend = CaffeBackend(engine=eng)
    manifest, _ = run_train(root, out, net=NET, dim=2, iters=ITERS, seed=1, backend=backend,
                            overrides={"solver.display": 5, "solver.test_interval": 10, "solver.snapshot": 20})
    assert manifest["status"] == "finished" and manifest["engine"]["kind"] == eng.kind
    extract_lib.extract(out, "test", backend=backend, stream=open(os.devnull, "w"), blobs=False)
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    with h5py.File(os.path.join(out, "codes.h5"), "r") as f:
        attrs = {k: f.attrs[k] for k in ("loss_cross_entropy", "loss_euclidean")}
        code = f["code"][:]
    return log, attrs, code


@pytest.fixture(scope="module")
def rootfs_run(rootfs, tiny_root, tmp_path_factory):  # noqa: F811
    return train_and_extract(rootfs, tiny_root, str(tmp_path_factory.mktemp("rootfs") / "run"))


def test_training_and_extraction_equal_the_rootfs_engine(eng, rootfs_run, tiny_root, tmp_path):  # noqa: F811
    log, attrs, code = train_and_extract(eng, tiny_root, str(tmp_path / "run"))
    want_log, want_attrs, want_code = rootfs_run
    assert [r["iter"] for r in log if r["phase"] == "train"] == [5, 10, 15, 20]
    assert log == want_log  # every loss, to the last digit
    assert attrs == want_attrs
    assert (code == want_code).all()


def docker_run(*args, **kwargs):
    """`docker run --rm ARGS` as the docker engine runs its containers."""
    argv = docker_lib.run_argv(docker_lib.docker_host()) + ["--rm", "--init"] + list(args)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=1800, **kwargs)


def test_the_image_alone_trains_the_same(eng, rootfs_run, tiny_root, tmp_path):  # noqa: F811
    """The image's own harness and engine (kind host), no checkout mounted: the same losses."""
    out = str(tmp_path / "alone")
    proc = docker_run("-v", "%s:%s" % (tiny_root, tiny_root), "-v", "%s:%s" % (tmp_path, tmp_path), "-w", tiny_root,
                      *["-e=%s=%s" % kv for kv in ONE_THREAD.items()], eng.location,
                      "caffe-cae", "train", "--net", NET, "--dim", "2", "--iters", str(ITERS), "--seed", "1",
                      "--out", out, "--set", "solver.display=5", "--set", "solver.test_interval=10",
                      "--set", "solver.snapshot=20")
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(out, "log.jsonl")) as f:
        assert [json.loads(line) for line in f] == rootfs_run[0]


def test_makefile_steps_in_the_image_on_a_mounted_checkout(eng, tmp_path):
    """`make setup prototxt engine` in the image, in a copy of the checkout mounted at its own path:
    the harness of the checkout runs (installed editable into the image's venv), the engine is the
    image's, and the rendered nets equal the committed generated/."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("Makefile", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(REPO_ROOT, name), str(copy / name))
    for name in ("caffe_cae", "templates", "docker", "deps"):
        shutil.copytree(os.path.join(REPO_ROOT, name), str(copy / name), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = docker_run("-v", "%s:%s" % (copy, copy), "-w", str(copy), eng.location,
                      "make", "setup", "prototxt", "engine")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "host engine: /usr/bin/python3 (Caffe 1.0.0, cpu)" in proc.stdout
    rendered = sorted(os.path.relpath(os.path.join(d, f), str(copy / "generated"))
                      for d, _, files in os.walk(str(copy / "generated")) for f in files)
    committed = sorted(os.path.relpath(os.path.join(d, f), os.path.join(REPO_ROOT, "generated"))
                       for d, _, files in os.walk(os.path.join(REPO_ROOT, "generated")) for f in files)
    assert rendered == committed and len(rendered) > 80
    for rel in rendered:
        with open(str(copy / "generated" / rel)) as a, open(os.path.join(REPO_ROOT, "generated", rel)) as b:
            assert a.read() == b.read(), rel


ENGINE_FILES = ("/opt/caffe/lib/libcaffe.so.1.0.0", "/opt/caffe/bin/caffe",
                "/opt/caffe/lib/python3/dist-packages/caffe/_caffe.so")


def test_image_engine_is_the_rootfs_engine(eng, rootfs):
    """Where the rootfs engine can be built (here), the image is made from its file system: Caffe is
    compiled once, and the image's library and tools are the rootfs engine's, byte for byte."""
    base = docker_lib.engine_base()
    assert base == "%s:%s" % (docker_lib.ENGINE_IMAGE, os.path.basename(rootfs.location))
    proc = docker_run(eng.location, "sha256sum", *ENGINE_FILES)
    assert proc.returncode == 0, proc.stdout[-2000:]
    here = subprocess.run(["sha256sum"] + [os.path.join(rootfs.location, "rootfs") + p for p in ENGINE_FILES],
                          stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert [line.split()[0] for line in proc.stdout.splitlines()] == [line.split()[0] for line in here.splitlines()]


def test_image_is_cached_by_recipe_hash(eng):
    """make docker builds when the image's label is not the recipe hash (here: a harness changed since
    the image was built; only the harness layers are rebuilt), and then does not build."""
    docker_lib.build_image(log=open(os.devnull, "w"))
    assert docker_lib.image_label(docker_lib.docker_host(), eng.location) == docker_lib.image_hash()
    assert docker_lib.image_hash() != docker_lib.image_hash(base=None)  # compiled in the image: another image
    start = time.time()
    assert docker_lib.build_image(log=open(os.devnull, "w")).location == eng.location
    assert time.time() - start < 30, "a cached image must not be rebuilt"


# -- the GPU image ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_image():
    return image_engine(gpu=True)


def test_gpu_image_links_cuda_and_holds_its_archs(gpu_image):
    host = docker_lib.docker_host()
    archs = docker_lib.image_label(host, gpu_image.location, docker_lib.ARCHS_LABEL)
    assert archs, "the GPU image has no %s label" % docker_lib.ARCHS_LABEL
    lib = "/opt/caffe/lib/libcaffe.so"
    script = "ldd %s | grep -o 'libcudart[^ ]*'; cuobjdump --list-elf %s; cuobjdump --list-ptx %s" % (lib, lib, lib)
    proc = docker_run(gpu_image.location, "sh", "-c", script)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "libcudart.so.11" in proc.stdout
    def archs_of(suffix):
        return {line.rsplit(".sm_", 1)[1][:-len(suffix)] for line in proc.stdout.splitlines()
                if ".sm_" in line and line.rstrip().endswith(suffix)}

    assert archs_of(".cubin") == set(archs.split()), proc.stdout[-2000:]
    assert archs_of(".ptx") == {archs.split()[-1]}, "PTX of the last architecture only (for newer GPUs)"
    for kernel in (b"UnpoolMaxForward", b"UnpoolWindowBackward"):
        proc = docker_run(gpu_image.location, "sh", "-c", "cuobjdump --dump-ptx %s | grep -c %s"
                          % (lib, kernel.decode()))
        assert proc.returncode == 0 and int(proc.stdout.split()[-1]) > 0, proc.stdout[-500:]


def test_gpu_image_runs_cpu_mode_without_a_gpu(gpu_image, tmp_path):
    """No GPU here: the GPU build of Caffe still loads (with the CUDA runtime) and its probe says gpu."""
    info = gpu_image.status()
    assert info["unpooling"] is True and info["mode"] == "gpu"
    out = run_json(gpu_image, [gpu_image.python, os.path.join(SCRIPTS, "unpool_check.py"), str(tmp_path)],
                   cwd=str(tmp_path))
    assert all(out[case]["forward"] < 1e-5 and out[case]["backward"] < 1e-5 for case in CASES)
