"""The GPU path without a GPU: the rootfs engine's binds of the host's NVIDIA devices and driver
libraries (from a fake /dev and ldconfig listing, and for real in the engine's sandbox), and the
Unpooling layer's CUDA source compiling for sm_90 against the engine's Caffe headers. (The GPU
image's compiled architectures are checked in tests/test_docker.py.)

The compile check:

There is no GPU here, and the machine's nvcc (CUDA 13) lacks the cuBLAS/cuRAND headers that
Caffe's common.hpp includes; PyPI's CUDA 11.8 nvcc wheel has no compiler driver (only
ptxas and libnvvm). So: the host's nvcc runs inside the rootfs engine (Debian bullseye's
g++ 10 and Caffe's installed headers), with the cuBLAS/cuRAND headers of PyPI's
nvidia-cublas-cu11 / nvidia-curand-cu11 wheels (cached in $CAFFE_CAE_CACHE/cuda-headers).
Compile only; a deliberately broken kernel must fail the same way, so the check can fail.
Skipped without the tools, FAILS under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from caffe_cae import REPO_ROOT, engine
from caffe_cae.engine import gpu

from conftest import missing
from engine_support import require_engine

WHEELS = ("nvidia-cublas-cu11==11.11.3.6", "nvidia-curand-cu11==10.3.0.86")
LAYER_CU = os.path.join(REPO_ROOT, "docker", "unpooling", "unpooling_layer.cu")


def cuda_toolkit():
    """A host CUDA toolkit directory (with bin/nvcc): $CAFFE_CAE_CUDA, else /usr/local/cuda*."""
    candidates = [os.environ.get("CAFFE_CAE_CUDA", "")] + sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "bin", "nvcc")):
            return os.path.realpath(path)
    return None


def cuda_headers():
    """Directory with nvidia/{cublas,curand}/include from the wheels, downloaded once into the cache."""
    root = os.path.join(engine.cache_root(), "cuda-headers")
    done = os.path.join(root, ".done")
    if not os.path.isfile(done):
        wheels = os.path.join(root, "wheels")
        os.makedirs(wheels, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels] + list(WHEELS),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if proc.returncode != 0:
            missing("pip download %s failed: %s" % (" ".join(WHEELS), proc.stdout[-500:]))
        for wheel in glob.glob(os.path.join(wheels, "*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(root, [n for n in z.namelist() if "/include/" in n])
        shutil.rmtree(wheels)
        open(done, "w").close()
    return root


@pytest.fixture(scope="module")
def toolchain():
    eng = engine.find_rootfs()
    if eng is None:
        missing("no rootfs engine (make engine)")
    cuda = cuda_toolkit()
    if cuda is None:
        missing("no CUDA toolkit with bin/nvcc in /usr/local/cuda* (or $CAFFE_CAE_CUDA)")
    return eng, cuda, cuda_headers()


def compile_cu(toolchain, source, tmp_path):
    eng, cuda, headers = toolchain
    out = tmp_path / "unpooling_layer.o"
    argv = ["/cuda/bin/nvcc", "-c", "-arch=sm_90", "-Xcudafe", "--diag_suppress=esa_on_defaulted_function_ignored",
            "-I/opt/caffe/include", "-I/usr/include/hdf5/serial", "-I/cuda-extra/nvidia/cublas/include",
            "-I/cuda-extra/nvidia/curand/include", str(source), "-o", str(out)]
    proc = subprocess.run(eng.command(argv, cwd=str(tmp_path), ro_binds={cuda: "/cuda", headers: "/cuda-extra"}),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    return proc, out


def test_unpooling_cu_compiles_for_sm90(toolchain, tmp_path):
    proc, out = compile_cu(toolchain, LAYER_CU, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    data = out.read_bytes()
    assert b"-arch sm_90" in data, "no sm_90 device code in the object"
    for kernel in (b"UnpoolMaxForward", b"UnpoolWindowForward", b"UnpoolMaxBackward", b"UnpoolWindowBackward"):
        assert kernel in data


def test_broken_kernel_fails_to_compile(toolchain, tmp_path):
    with open(LAYER_CU) as f:
        text = f.read()
    broken = text.replace("out[j] = bottom_data[index];", "out[j] = bottom_data[index] + undefined_name;", 1)
    assert broken != text
    source = tmp_path / "broken.cu"
    source.write_text(broken)
    proc, _ = compile_cu(toolchain, source, tmp_path)
    assert proc.returncode != 0
    assert "undefined_name" in proc.stdout


LISTING = """\t1234 libs found in cache `/etc/ld.so.cache'
\tlibnvidia-ml.so.1 (libc6,x86-64) => {lib}/libnvidia-ml.so.1
\tlibnvidia-ml.so.1 (libc6) => {lib}/i386/libnvidia-ml.so.1
\tlibnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => {lib}/libnvidia-ptxjitcompiler.so.1
\tlibcudart.so.11.0 (libc6,x86-64) => {lib}/libcudart.so.11.0
\tlibcuda.so.1 (libc6,x86-64) => {lib}/libcuda.so.1
\tlibcuda.so (libc6,x86-64) => {lib}/libcuda.so
\tlibnvidia-gone.so.1 (libc6,x86-64) => {lib}/libnvidia-gone.so.1
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
"""


def fake_driver(tmp_path):
    """A /dev with NVIDIA nodes (plain files) and others, a lib dir, and its ldconfig -p listing."""
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset",
                 "nvidia-caps/nvidia-cap1", "null", "nvme0", "nvidia-something-else"):
        (dev / name).write_text(name + "\n")
    lib = tmp_path / "lib"
    (lib / "i386").mkdir(parents=True)
    for name in ("libnvidia-ml.so.1", "i386/libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1",
                 "libcudart.so.11.0", "libcuda.so.1.550"):
        (lib / name).write_text(name + "\n")
    (lib / "libcuda.so.1").symlink_to("libcuda.so.1.550")
    (lib / "libcuda.so").symlink_to("libcuda.so.1")
    return str(dev), str(lib), LISTING.format(lib=lib)


def test_nvidia_devices_and_driver_libraries(tmp_path):
    dev, lib, listing = fake_driver(tmp_path)
    assert gpu.device_nodes(dev) == [os.path.join(dev, n) for n in (
        "nvidia-caps/nvidia-cap1", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1",
        "nvidiactl")]
    # the driver's libraries of this architecture (not the CUDA runtime: the engine has its own)
    assert gpu.driver_libraries(listing, machine="x86_64") == {
        "libnvidia-ml.so.1": lib + "/libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1":
        lib + "/libnvidia-ptxjitcompiler.so.1", "libcuda.so.1": lib + "/libcuda.so.1", "libcuda.so": lib + "/libcuda.so"}
    assert gpu.device_nodes(str(tmp_path / "none")) == [] and gpu.bwrap_args(str(tmp_path / "none"), listing) == (
        [], None)
    assert not gpu.host_has_gpu(str(tmp_path / "none")) and gpu.host_has_gpu(dev)


def test_gpu_rootfs_engine_binds_the_driver_for_real(tmp_path):
    """The binds in a real sandbox of the rootfs engine: the device nodes at /dev, the driver's
    libraries (links resolved) in gpu.LIB_DIR, which leads LD_LIBRARY_PATH."""
    eng = require_engine()
    if eng.kind != "rootfs":
        missing("the bind check runs in the rootfs engine (CAFFE_CAE_ENGINE=%s)" % eng.kind)
    dev, lib, listing = fake_driver(tmp_path)
    binds = gpu.bwrap_args(dev, listing)
    args, lib_dir = binds
    assert lib_dir == gpu.LIB_DIR
    assert args[:3] == ["--dev-bind", dev + "/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap1"]
    triples = [args[i:i + 3] for i in range(0, len(args), 3)]
    assert ["--ro-bind", lib + "/libcuda.so.1.550", gpu.LIB_DIR + "/libcuda.so.1"] in triples
    with_gpu = engine.RootfsEngine(eng.location, nvidia=binds)
    script = "cat /dev/nvidia0 /dev/nvidiactl /dev/nvidia-caps/nvidia-cap1; ls /dev | grep -c nvme; " \
             "ls %s; cat %s/libcuda.so.1; echo \"$LD_LIBRARY_PATH\"" % (gpu.LIB_DIR, gpu.LIB_DIR)
    proc = with_gpu.run(["sh", "-c", script], cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        universal_newlines=True)
    lines = proc.stdout.split()
    assert lines[:4] == ["nvidia0", "nvidiactl", "nvidia-caps/nvidia-cap1", "0"], proc.stdout
    assert lines[4:-2] == ["libcuda.so", "libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1"]
    assert lines[-2:] == ["libcuda.so.1.550", gpu.LIB_DIR]
    # without a driver (this host, unless it has one) a GPU engine binds nothing, a CPU engine never
    assert engine.RootfsEngine(eng.location).nvidia == ([], None)
    if not gpu.host_has_gpu():
        assert engine.RootfsEngine(eng.location + "-gpu").nvidia == ([], None)
