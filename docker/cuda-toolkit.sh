#!/usr/bin/env bash
# The GPU engine's CUDA: Debian bullseye's own nvidia-cuda-toolkit (CUDA 11.2, in non-free), so the
# GPU image and the GPU rootfs engine are the same Debian system as the CPU ones (docker/Dockerfile
# says why). Adds contrib and non-free to the system's Debian sources, installs the toolkit (nvcc,
# cuobjdump, the CUDA runtime, cuBLAS and cuRAND), and checks that nvcc runs. No GPU is needed.
# Runs as root in Debian bullseye, before build-caffe.sh --gpu.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "[engine] 0/7 CUDA: nvidia-cuda-toolkit from Debian's contrib and non-free"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  # "deb URI SUITE main" -> "deb URI SUITE main contrib non-free" (lines that lack them)
  sed -i -E '/^deb(-src)? / { / contrib/! s/ main( |$)/ main contrib non-free\1/ }' "$f"
done
apt-get update -qq
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit > /dev/null
nvcc --version | tail -n 2
