"""Runs INSIDE the Caffe engine (caffe, numpy, h5py, stdlib only), for tools/compare_engine.py.

    python3 engine_net_check.py data SPEC.json MNIST_DIR   # make the inputs SPEC lists (in the current folder)
    python3 engine_net_check.py run NET.prototxt PHASE [STAGE...]   # instantiate NET, one forward pass

``data``: each item of SPEC (a JSON list) is made unless its path exists; relative paths
are taken from the current folder, as Caffe reads them. Kinds:

* ``mnist``: {path, backend, split: train|test, pairs, count}: the first ``count`` images of
  our MNIST split written as idx files and converted by Caffe's own ``convert_mnist_data``
  (``convert_mnist_siamese_data`` for pairs, 2 x 28 x 28);
* ``images_db``: {path, backend, shape: [C, H, W], count}: ``count`` random images (PPM or
  PGM) converted by Caffe's ``convert_imageset``;
* ``image_list`` / ``window_file``: {path, root, shape, count}: random images and the list
  an ImageData layer reads (``image label``), or a WindowData window file (one foreground
  and one background window per image);
* ``hdf5``: {path, tops: {name: dims after N}, count}: one HDF5 file and the list naming it;
* ``mean``: {path, shape}: a binaryproto mean (``caffe.io.array_to_blobproto``) of 1 x C x H x W.

``run`` prints one JSON line: {"blobs": {name: shape}, "layers": {name: {"type", "sizes"}}}
after ``caffe.Net(NET, PHASE, stages=STAGES)`` and ``net.forward()``. A Caffe CHECK failure aborts the
process; the caller reads its message from stderr.
"""
import gzip
import json
import os
import struct
import subprocess
import sys

import h5py
import numpy as np

import caffe

RNG = np.random.RandomState(1)


def _parent(path):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)


def idx_subset(src, dest, count):
    """The first ``count`` records of an idx .gz file, as an uncompressed idx file."""
    with gzip.open(src, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        dims = struct.unpack(">%dI" % ((magic & 0xFF) - 1), f.read(4 * ((magic & 0xFF) - 1)))
        size = int(np.prod(dims)) if dims else 1
        body = f.read(size * min(count, n))
    with open(dest, "wb") as f:
        f.write(struct.pack(">II", magic, min(count, n)) + struct.pack(">%dI" % len(dims), *dims) + body)


def _tool(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        lines = proc.stdout.strip().splitlines() or ["exit %d" % proc.returncode]
        failed = [line for line in lines if "Check failed" in line or "rror" in line]
        sys.exit("%s failed: %s" % (argv[0], (failed or lines[-1:])[0]))


def mnist(item, mnist_dir):
    prefix = "train" if item["split"] == "train" else "t10k"
    stem = item["path"].rstrip("/") + ".idx"
    images, labels = stem + "-images", stem + "-labels"
    idx_subset(os.path.join(mnist_dir, prefix + "-images-idx3-ubyte.gz"), images, item["count"])
    idx_subset(os.path.join(mnist_dir, prefix + "-labels-idx1-ubyte.gz"), labels, item["count"])
    if item["pairs"]:  # the siamese tool takes no --backend: it writes a LevelDB
        _tool(["convert_mnist_siamese_data", images, labels, item["path"]])
    else:
        _tool(["convert_mnist_data", images, labels, item["path"], "--backend=" + item["backend"]])
    os.remove(images)
    os.remove(labels)


def _write_image(path, shape):
    """A random 8-bit image of C x H x W (C = 1 or 3) as binary PGM / PPM, which OpenCV reads."""
    c, h, w = shape
    pixels = RNG.randint(0, 256, size=(h, w, c)).astype(np.uint8)
    with open(path, "wb") as f:
        f.write(b"%s\n%d %d\n255\n" % (b"P5" if c == 1 else b"P6", w, h) + pixels.tobytes())


def _images(folder, shape, count):
    """``count`` random images in ``folder``; their file names."""
    os.makedirs(folder, exist_ok=True)
    names = ["img%d.%s" % (i, "pgm" if shape[0] == 1 else "ppm") for i in range(count)]
    for name in names:
        _write_image(os.path.join(folder, name), shape)
    return names


def images_db(item):
    folder = item["path"].rstrip("/") + ".images"
    names = _images(folder, item["shape"], item["count"])
    listing = folder + ".txt"
    with open(listing, "w") as f:
        f.writelines("%s %d\n" % (name, i % 2) for i, name in enumerate(names))
    argv = ["convert_imageset", "--backend=" + item["backend"], folder + "/", listing, item["path"]]
    _tool(argv + (["--gray"] if item["shape"][0] == 1 else []))


def image_list(item):
    folder = os.path.join(item["root"], os.path.dirname(item["path"]), "images")
    names = _images(folder, item["shape"], item["count"])
    rel = os.path.relpath(folder, item["root"] or ".")
    with open(item["path"], "w") as f:
        f.writelines("%s %d\n" % (os.path.join(rel, name), i % 2) for i, name in enumerate(names))


def window_file(item):
    c, h, w = item["shape"]
    folder = os.path.join(item["root"], os.path.dirname(item["path"]), "images")
    names = _images(folder, item["shape"], item["count"])
    rel = os.path.relpath(folder, item["root"] or ".")
    with open(item["path"], "w") as f:
        for i, name in enumerate(names):
            # image index, path, C, H, W, windows: class overlap x1 y1 x2 y2
            f.write("# %d\n%s\n%d\n%d\n%d\n2\n" % (i, os.path.join(rel, name), c, h, w))
            f.write("1 1.0 %d %d %d %d\n" % (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
            f.write("0 0.1 0 0 %d %d\n" % (w // 8, h // 8))


def hdf5(item):
    path = item["path"] + ".h5"
    with h5py.File(path, "w") as f:
        for name, dims in item["tops"].items():
            f[name] = RNG.randint(0, 2, size=[item["count"]] + dims).astype(np.float32)
    with open(item["path"], "w") as f:
        f.write(os.path.abspath(path) + "\n")


def mean(item):
    blob = caffe.io.array_to_blobproto(np.full([1] + item["shape"], 128.0, np.float32))
    with open(item["path"], "wb") as f:
        f.write(blob.SerializeToString())


MAKERS = {"images_db": images_db, "image_list": image_list, "window_file": window_file, "hdf5": hdf5,
          "mean": mean}


def make_data(spec, mnist_dir):
    with open(spec) as f:
        items = json.load(f)
    made = []
    for item in items:
        if os.path.exists(item["path"]):
            continue
        _parent(item["path"])
        if item["kind"] == "mnist":
            mnist(item, mnist_dir)
        else:
            MAKERS[item["kind"]](item)
        made.append(item["path"])
    print(json.dumps({"made": made}))


def run(path, phase, *stages):
    caffe.set_mode_cpu()
    net = caffe.Net(path, caffe.TRAIN if phase == "train" else caffe.TEST, stages=list(stages))
    net.forward()
    layers = {name: {"type": layer.type, "sizes": [int(b.data.size) for b in layer.blobs]}
              for name, layer in zip(net._layer_names, net.layers)}
    print(json.dumps({"blobs": {name: list(b.data.shape) for name, b in net.blobs.items()}, "layers": layers}))


if __name__ == "__main__":
    if sys.argv[1] == "data":
        make_data(*sys.argv[2:4])
    else:
        run(*sys.argv[2:])
