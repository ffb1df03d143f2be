#!/usr/bin/env bash
# Build BVLC Caffe 1.0 (Debian's `caffe` source package, upstream commit 99bd997) with the
# caffe-cae Unpooling layer, install it and smoke-test it. Configured as Debian builds its caffe
# package (LMDB, LevelDB and OpenCV on: Caffe's Data, ImageData and WindowData layers and the
# examples' tools such as convert_mnist_data, installed into $PREFIX/bin), CPU_ONLY or CUDA.
# The one build of the engine: `caffe-cae engine build` runs it in a Debian bullseye root file
# system, and the images are made from that file system (docker/Dockerfile runs it itself only
# where no root file system can be made).
#
# Usage: build-caffe.sh [--gpu] RECIPE_DIR
#   RECIPE_DIR holds this script, patch-caffe.py, unpooling/ and caffe_cae.proto (the schema's
#   Unpooling part).
# Environment: CAFFE_PREFIX (install prefix, default /opt/caffe), CAFFE_SRC (work
#   directory, default /usr/src/caffe-cae), JOBS (make -j, default 2),
#   CUDA_ARCH_BIN (GPU only, default "60 61 70 75 80 86 89 90").
# Runs as root in a Debian or Ubuntu system with apt (the packages are installed here).
# Stage lines "[engine] N/7 ..." show progress; any failure stops the build (set -e).
set -euo pipefail

GPU=0
if [ "${1:-}" = "--gpu" ]; then
  GPU=1
  shift
fi
if [ $# -ne 1 ] || [ ! -f "$1/patch-caffe.py" ]; then
  echo "usage: build-caffe.sh [--gpu] RECIPE_DIR (with patch-caffe.py, unpooling/, caffe_cae.proto)" >&2
  exit 2
fi
RECIPE=$(cd "$1" && pwd)
PREFIX=${CAFFE_PREFIX:-/opt/caffe}
WORK=${CAFFE_SRC:-/usr/src/caffe-cae}
JOBS=${JOBS:-2}
CUDA_ARCH_BIN=${CUDA_ARCH_BIN:-60 61 70 75 80 86 89 90}
export DEBIAN_FRONTEND=noninteractive
START=$(date +%s)

stage() {
  echo "[engine] $1 ($(( $(date +%s) - START )) s)"
}

stage "1/7 build packages"
# apt-get source needs deb-src lines: mirror every deb line of the system's sources.
if ! grep -rqs '^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list > /etc/apt/sources.list.d/caffe-cae-src.list
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      > /etc/apt/sources.list.d/caffe-cae-src.sources
  fi
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  dpkg-dev g++ make cmake \
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev \
  libgflags-dev libgoogle-glog-dev libhdf5-dev libprotobuf-dev protobuf-compiler \
  libopenblas-dev python3 python3-dev python3-numpy python3-skimage python3-protobuf \
  python3-h5py \
  liblmdb-dev libleveldb-dev libsnappy-dev \
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libopencv-highgui-dev > /dev/null

stage "2/7 source: apt-get source caffe"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
apt-get source -qq caffe > /dev/null 2>&1 || apt-get source caffe
SRC=$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'caffe-*' | head -n 1)
case "$SRC" in
  *99bd997*) ;;
  *) echo "build-caffe: expected Caffe 1.0 at commit 99bd997, got '${SRC:-nothing}'" >&2; exit 1 ;;
esac

stage "3/7 patch: Unpooling layer, caffe.proto, upgrade_proto.cpp"
python3 "$RECIPE/patch-caffe.py" "$SRC" "$RECIPE/caffe_cae.proto" "$RECIPE/unpooling"

stage "4/7 configure (cmake, $([ $GPU = 1 ] && echo "GPU, sm ${CUDA_ARCH_BIN}" || echo CPU_ONLY))"
if [ $GPU = 1 ]; then
  DEVICE_FLAGS=(-DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DUSE_NCCL=OFF -DCUDA_ARCH_NAME=Manual
                "-DCUDA_ARCH_BIN=${CUDA_ARCH_BIN}" "-DCUDA_ARCH_PTX=${CUDA_ARCH_BIN##* }")
else
  DEVICE_FLAGS=(-DCPU_ONLY=ON)
fi
mkdir -p "$WORK/build"
cd "$WORK/build"
cmake "$SRC" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_INSTALL_PREFIX=$PREFIX" \
  -DBLAS=Generic -DBUILD_SHARED_LIBS=ON -DBUILD_docs=OFF -DBUILD_matlab=OFF \
  -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3 \
  -DUSE_OPENCV=ON -DUSE_LEVELDB=ON -DUSE_LMDB=ON -DALLOW_LMDB_NOLOCK=OFF "${DEVICE_FLAGS[@]}" > cmake.log \
  || { tail -n 40 cmake.log >&2; exit 1; }

stage "5/7 compile (make -j$JOBS) and install into $PREFIX"
if ! make -j"$JOBS" 2>&1 | tee make.log | awk '/^\[ *[0-9]+%\] Built target/ { print "[engine]   " $0; fflush() }'; then
  grep -n -A3 -E 'error|Error' make.log | tail -n 60 >&2
  echo "build-caffe: make failed (log: $WORK/build/make.log)" >&2
  exit 1
fi
make install > install.log
echo "$PREFIX/lib" > /etc/ld.so.conf.d/caffe-cae.conf
ldconfig
PYDIR="$PREFIX/lib/python3/dist-packages"
echo "$PYDIR" > /usr/lib/python3/dist-packages/caffe-cae.pth
for tool in "$PREFIX"/bin/*; do
  ln -sf "$tool" "/usr/local/bin/$(basename "$tool")"
done

stage "6/7 gtest of the Unpooling layer"
# Only our test (Caffe's whole suite takes far too long): our file + gtest + Caffe's main.
TEST_BIN="$WORK/build/test_unpooling_layer"
if [ $GPU = 1 ]; then
  TEST_DEFS=()
  TEST_LIBS=(-L/usr/local/cuda/lib64 -lcudart -lcublas -lcurand)
else
  TEST_DEFS=(-DCPU_ONLY)
  TEST_LIBS=()
fi
g++ -O1 -std=c++11 "${TEST_DEFS[@]}" -I"$PREFIX/include" -I"$SRC/include" -I"$SRC/src" \
  -I/usr/local/cuda/include -I/usr/include/hdf5/serial \
  "$SRC/src/caffe/test/test_unpooling_layer.cpp" "$SRC/src/caffe/test/test_caffe_main.cpp" \
  "$SRC/src/gtest/gtest-all.cpp" -o "$TEST_BIN" \
  -L"$PREFIX/lib" -lcaffe -lglog -lgflags -lprotobuf -lboost_system -lpthread "${TEST_LIBS[@]}"
if [ $GPU = 1 ] && ! nvidia-smi > /dev/null 2>&1; then
  # Typed cases /0 and /1 are CPUDevice<float|double>; /2 and /3 need a GPU.
  echo "[engine] no GPU here: the gtest binary was built, its CPU cases run"
  GLOG_minloglevel=1 "$TEST_BIN" --gtest_filter='UnpoolingLayerTest/0.*:UnpoolingLayerTest/1.*'
else
  GLOG_minloglevel=1 "$TEST_BIN"
fi

stage "7/7 smoke test"
cd /
GLOG_minloglevel=2 python3 -c '
import caffe
types = caffe.layer_type_list()
assert "Unpooling" in types, "Unpooling is not registered"
print("[engine] pycaffe OK: %d layer types, Unpooling registered" % len(types))
'
SMOKE=$(mktemp -d)
cat > "$SMOKE/v1.prototxt" <<'EOF'
name: "smoke"
layers { name: "unpool1" type: UNPOOLING bottom: "x" top: "y"
         unpooling_param { unpool: MAX kernel_size: 2 stride: 2 unpool_size: 24 } }
EOF
GLOG_minloglevel=2 "$PREFIX/bin/upgrade_net_proto_text" "$SMOKE/v1.prototxt" "$SMOKE/modern.prototxt"
grep -q 'type: "Unpooling"' "$SMOKE/modern.prototxt"
grep -q 'unpool_size: 24' "$SMOKE/modern.prototxt"
rm -rf "$SMOKE"
echo "[engine] upgrade_net_proto_text OK: V1 UNPOOLING -> \"Unpooling\""
GLOG_minloglevel=2 python3 -c '
import caffe
missing = {"Data", "ImageData", "WindowData"} - set(caffe.layer_type_list())
assert not missing, "not built: %s" % sorted(missing)
'
test -x "$PREFIX/bin/convert_mnist_data" && test -x "$PREFIX/bin/convert_imageset"
echo "[engine] data layers OK: Data (LMDB, LevelDB), ImageData, WindowData; convert_mnist_data, convert_imageset"
# Keep the patched source (headers for compile checks); drop the object files.
find "$WORK/build" -name '*.o' -delete
stage "done: Caffe with Unpooling in $PREFIX"
