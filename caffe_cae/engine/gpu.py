"""A GPU engine on a host with an NVIDIA driver: what the rootfs engine binds in, the way the NVIDIA
container toolkit does for containers. The driver is the host's (it must match the kernel module), so
its device nodes and user-space libraries come from the host; the CUDA toolkit (runtime, cuBLAS,
cuRAND) is the engine's own, Debian bullseye's CUDA 11.2 (docker/cuda-toolkit.sh).

- devices: ``/dev/nvidiactl``, ``/dev/nvidia-uvm``, ``/dev/nvidia-uvm-tools``, ``/dev/nvidia-modeset``,
  ``/dev/nvidia<N>`` and ``/dev/nvidia-caps/*``, bound at the same paths;
- libraries: the driver's ``libcuda.so*`` and ``libnvidia-*.so*`` of this machine's architecture, as
  ``ldconfig -p`` lists them, bound read-only under LIB_DIR, which leads LD_LIBRARY_PATH inside;
- ``nvidia-smi`` when the host has it, at /usr/bin/nvidia-smi inside.
"""
import os
import re
import shutil
import subprocess

#: Where the host's driver libraries appear inside the rootfs engine.
LIB_DIR = "/run/caffe-cae/nvidia"
DEVICE_RE = re.compile(r"nvidia(ctl|-uvm|-uvm-tools|-modeset|[0-9]+)$")
LIB_RE = re.compile(r"(libcuda|libnvidia-[A-Za-z0-9_-]+)\.so(\.[0-9.]+)?$")
#: ldconfig -p's tag for libraries of this machine's architecture (x86-64, AArch64).
ARCH_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64"}


def device_nodes(dev_dir="/dev"):
    """The NVIDIA device nodes under ``dev_dir`` (sorted absolute paths), [] without a driver."""
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return []
    out = [os.path.join(dev_dir, n) for n in names if DEVICE_RE.match(n)]
    caps = os.path.join(dev_dir, "nvidia-caps")
    if os.path.isdir(caps):
        out += [os.path.join(caps, n) for n in os.listdir(caps)]
    return sorted(out)


def ldconfig_listing():
    """``ldconfig -p``'s output ('' where there is no ldconfig)."""
    ldconfig = shutil.which("ldconfig") or shutil.which("ldconfig", path="/sbin:/usr/sbin")
    if not ldconfig:
        return ""
    proc = subprocess.run([ldconfig, "-p"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          universal_newlines=True)
    return proc.stdout


def driver_libraries(listing, machine=None):
    """{file name: host path} of the driver libraries in an ``ldconfig -p`` listing (first entry
    of each name, this machine's architecture only; names of files that do not exist are left out)."""
    tag = ARCH_TAGS.get(machine or os.uname().machine, "")
    out = {}
    for line in listing.splitlines():
        m = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
        if not m or not LIB_RE.match(m.group(1)) or m.group(1) in out:
            continue
        if tag and tag not in m.group(2).split(","):
            continue
        if os.path.exists(m.group(3)):
            out[m.group(1)] = m.group(3)
    return out


def bwrap_args(dev_dir="/dev", listing=None):
    """(bwrap arguments, library directory for LD_LIBRARY_PATH or None): the binds of the host's
    NVIDIA devices and driver libraries. ([], None) on a host without an NVIDIA driver."""
    devices = device_nodes(dev_dir)
    if not devices:
        return [], None
    args = []
    for path in devices:
        args += ["--dev-bind", path, "/dev/" + os.path.relpath(path, dev_dir)]
    libs = driver_libraries(ldconfig_listing() if listing is None else listing)
    for name, path in sorted(libs.items()):
        args += ["--ro-bind", os.path.realpath(path), LIB_DIR + "/" + name]
    smi = shutil.which("nvidia-smi")
    if smi and listing is None:
        args += ["--ro-bind", smi, "/usr/bin/nvidia-smi"]
    return args, LIB_DIR if libs else None


def host_has_gpu(dev_dir="/dev"):
    """An NVIDIA driver is loaded here (its control device exists)."""
    return os.path.exists(os.path.join(dev_dir, "nvidiactl"))
