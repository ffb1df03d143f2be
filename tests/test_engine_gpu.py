"""The Unpooling layer's CUDA source compiles for sm_90 against the engine's Caffe headers.

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

from conftest import missing

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
