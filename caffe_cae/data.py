"""MNIST idx files to the HDF5 files Caffe's HDF5Data layer reads.

``convert()`` reads the four MNIST idx ``.gz`` files (from ``mnist_dir``, else ``$MNIST_DIR``,
else ``data/mnist/`` in the repository), checks their gzip streams, magic numbers, counts,
shapes and the SHA-256 of the decompressed contents, and writes into ``out_dir``:

- ``train.h5`` / ``test.h5``: ``data`` float32 N x 1 x 28 x 28 (pixels / 255, nothing else),
  ``label`` float32 N;
- ``train_pairs.h5`` / ``test_pairs.h5`` for the Siamese net: ``pair_data`` float32
  N x 2 x 28 x 28, ``sim`` float32 N (1 if both images show the same digit), plus
  ``pair_label`` float32 N x 2 and ``pair_index`` int32 N x 2 (not read by Caffe);
  pair k is image k and a uniformly drawn *other* image of the same split (fixed seed);
- ``train.txt``, ``test.txt``, ``train_pairs.txt``, ``test_pairs.txt``: the list files
  HDF5Data's ``source`` names, one h5 path per line.

List files: Caffe opens each listed path as written, relative to *its* working directory.
By default the list names ``<out_dir>/<file>.h5`` exactly as ``out_dir`` was given, so the
default ``data/hdf5`` gives repository-relative paths (``data/hdf5/train.h5``) that work
when Caffe runs from the repository root, as the generated nets assume. ``list_prefix``
overrides the directory written into the lists (e.g. the path as the engine sees it).

Idempotent: every h5 file carries the attribute ``caffe_cae_inputs`` (the inputs' hashes,
pair seed and layout version); files that already match are not rewritten. Atomic: each
file is written to a temporary name in ``out_dir`` and renamed. All inputs are checked
before anything is written; bad input raises CaeError naming the file. Plain contiguous
float32 datasets, no compression (readable by Caffe 1.0). About 660 MB are written.
Imports only numpy, h5py and the standard library.
"""
import gzip
import hashlib
import json
import os
import zlib

import numpy as np

from . import REPO_ROOT, files
from .errors import CaeError

#: version of the output layout; part of the idempotence stamp
LAYOUT_VERSION = 1
#: seed of the Siamese pair draw (train uses PAIR_SEED, test PAIR_SEED + 1)
PAIR_SEED = 1701
#: rows written per HDF5 slice (bounds memory use)
CHUNK = 10000

#: split -> kind -> (file name, idx magic, shape, SHA-256 of the decompressed contents)
MNIST = {
    "train": {
        "images": ("train-images-idx3-ubyte.gz", 2051, (60000, 28, 28),
                   "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "labels": ("train-labels-idx1-ubyte.gz", 2049, (60000,),
                   "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    },
    "test": {
        "images": ("t10k-images-idx3-ubyte.gz", 2051, (10000, 28, 28),
                   "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "labels": ("t10k-labels-idx1-ubyte.gz", 2049, (10000,),
                   "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
}

#: idx type byte -> big-endian numpy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

OUTPUTS = ("train", "test", "train_pairs", "test_pairs")


def _quiet(_message):
    pass


def mnist_dir(path=None):
    """The MNIST directory: ``path``, else ``$MNIST_DIR``, else ``data/mnist`` in the repository
    (in the current directory when the package is installed from a wheel)."""
    return path or os.environ.get("MNIST_DIR") or os.path.join(REPO_ROOT or "", "data", "mnist")


def _read_raw(path):
    """Bytes of an idx file, gunzipped when it is a gzip file (or named .gz)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise CaeError("%s: file not found (expected an MNIST idx file; set MNIST_DIR or --mnist-dir)" % path)
    except OSError as exc:
        raise CaeError("%s: cannot read (%s)" % (path, exc.strerror or exc))
    if raw[:2] != b"\x1f\x8b":
        if path.endswith(".gz"):
            raise CaeError("%s: not a gzip file (first bytes %r)" % (path, raw[:4]))
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise CaeError("%s: truncated gzip stream (the file ends before the end of the compressed data)" % path)
    except (OSError, zlib.error) as exc:
        raise CaeError("%s: corrupt gzip data (%s)" % (path, exc))


def load_idx(path, magic=None, shape=None, sha256=None):
    """Read an idx file (gzipped or not) into a numpy array of its own dtype (uint8 for MNIST).

    Optional checks, each raising CaeError naming ``path``: ``magic`` (e.g. 2051 for images,
    2049 for labels), ``shape`` (a tuple) and ``sha256`` (hex digest of the decompressed
    bytes). The whole file is held in memory.
    """
    raw = _read_raw(path)
    if len(raw) < 4:
        raise CaeError("%s: truncated idx file (%d bytes, no header)" % (path, len(raw)))
    got_magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or (magic is not None and got_magic != magic):
        expected = "%d (0x%08x)" % (magic, magic) if magic is not None else "0x000008nn"
        raise CaeError("%s: bad magic number %d (0x%08x), expected %s" % (path, got_magic, got_magic, expected))
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CaeError("%s: truncated idx header" % path)
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if shape is not None and dims != tuple(shape):
        raise CaeError("%s: shape %s in the header, expected %s" % (
            path, "x".join(map(str, dims)), "x".join(map(str, shape))))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    need = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "trailing bytes"
        raise CaeError("%s: %s: %d bytes after decompression, expected %d for %s" % (
            path, what, len(raw), need, "x".join(map(str, dims))))
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise CaeError("%s: SHA-256 of the decompressed contents is %s, expected %s" % (path, digest, sha256))
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_mnist(directory=None, progress=_quiet):
    """The verified MNIST arrays: {"train": (images uint8 N x 28 x 28, labels uint8 N), "test": ...}.
    Raises CaeError naming the first file that is missing, truncated, corrupt or mismatched."""
    directory = mnist_dir(directory)
    out = {}
    for split, kinds in MNIST.items():
        arrays = []
        for kind in ("images", "labels"):
            name, magic, shape, digest = kinds[kind]
            path = os.path.join(directory, name)
            progress("data: checking %s" % path)
            arrays.append(load_idx(path, magic=magic, shape=shape, sha256=digest))
        if arrays[1].max() > 9:
            raise CaeError("%s: label %d out of range 0-9" % (os.path.join(directory, kinds["labels"][0]),
                                                              int(arrays[1].max())))
        out[split] = tuple(arrays)
    return out


def draw_pairs(labels, seed):
    """Siamese pairs over one split: pair k is (k, j) with j drawn uniformly among the other
    images (numpy RandomState(seed), stable across numpy versions). Returns (index int32 N x 2,
    sim float32 N: 1.0 where both labels agree)."""
    n = len(labels)
    if n < 2:
        raise CaeError("a pair set needs at least 2 images, got %d" % n)
    rng = np.random.RandomState(seed)
    first = np.arange(n)
    other = rng.randint(0, n - 1, size=n)
    other[other >= first] += 1
    index = np.stack([first, other], axis=1).astype(np.int32)
    sim = (labels[first] == labels[other]).astype(np.float32)
    return index, sim


def _scale(images):
    return images.astype(np.float32) / np.float32(255.0)


def _write_h5(path, fill, stamp):
    """Write an h5 file atomically, stamped with its inputs (see ``_up_to_date``)."""
    def fill_stamped(f):
        fill(f)
        f.attrs["caffe_cae_inputs"] = stamp
    files.write_h5(path, fill_stamped)


def _fill_images(images, labels):
    def fill(f):
        n = len(labels)
        data = f.create_dataset("data", shape=(n, 1, 28, 28), dtype="f4")
        for start in range(0, n, CHUNK):
            data[start:start + CHUNK, 0] = _scale(images[start:start + CHUNK])
        f.create_dataset("label", data=labels.astype(np.float32))
    return fill


def _fill_pairs(images, labels, seed):
    index, sim = draw_pairs(labels, seed)

    def fill(f):
        n = len(labels)
        data = f.create_dataset("pair_data", shape=(n, 2, 28, 28), dtype="f4")
        for start in range(0, n, CHUNK):
            rows = index[start:start + CHUNK]
            data[start:start + CHUNK, 0] = _scale(images[rows[:, 0]])
            data[start:start + CHUNK, 1] = _scale(images[rows[:, 1]])
        f.create_dataset("sim", data=sim)
        f.create_dataset("pair_label", data=labels[index].astype(np.float32))
        f.create_dataset("pair_index", data=index)
    return fill


def _up_to_date(path, stamp, n):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            first = "pair_data" if "pair_data" in f else "data"
            return f.attrs.get("caffe_cae_inputs") == stamp and f[first].shape[0] == n
    except (OSError, KeyError):
        return False


def _paths(out_dir, list_prefix):
    prefix = out_dir if list_prefix is None else list_prefix
    paths = {}
    for name in OUTPUTS:
        paths[name] = os.path.join(out_dir, name + ".h5")
        paths[name + "_list"] = os.path.join(out_dir, name + ".txt")
        paths[name + "_entry"] = os.path.join(prefix, name + ".h5")
    return paths


def _write_all(splits, out_dir, stamps, list_prefix, force, progress):
    """Write the four h5 files and four list files for ``splits`` = {"train": (images, labels), "test": ...}."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise CaeError("%s: cannot create the output directory (%s)" % (out_dir, exc.strerror or exc))
    paths = _paths(out_dir, list_prefix)
    seeds = {"train": PAIR_SEED, "test": PAIR_SEED + 1}
    try:
        for split, (images, labels) in splits.items():
            for name in (split, split + "_pairs"):
                path = paths[name]
                if not force and _up_to_date(path, stamps[name], len(labels)):
                    progress("data: %s is up to date" % path)
                else:
                    if name == split:
                        fill, what = _fill_images(images, labels), "images"
                    else:
                        fill, what = _fill_pairs(images, labels, seeds[split]), "pairs"
                    progress("data: writing %s (%d %s)" % (path, len(labels), what))
                    _write_h5(path, fill, stamps[name])
                listing = paths[name + "_entry"] + "\n"
                current = None
                if os.path.exists(paths[name + "_list"]):
                    with open(paths[name + "_list"], encoding="utf-8") as fh:
                        current = fh.read()
                if current != listing:
                    files.write_text(paths[name + "_list"], listing)
    except OSError as exc:
        raise CaeError("%s: cannot write the HDF5 output (%s)" % (out_dir, exc.strerror or exc))
    return {k: v for k, v in paths.items() if not k.endswith("_entry")}


def _stamp(hashes, extra):
    return json.dumps(dict(hashes, layout=LAYOUT_VERSION, pair_seed=PAIR_SEED, **extra), sort_keys=True)


def convert(mnist_dir=None, out_dir="data/hdf5", list_prefix=None, force=False, progress=_quiet):
    """Convert MNIST to the HDF5 layout above. Returns {"train": h5 path, "train_list": list path,
    "test", "test_list", "train_pairs", "train_pairs_list", "test_pairs", "test_pairs_list"}.
    ``out_dir`` is relative to the current directory; ``force`` rewrites matching outputs;
    ``progress`` receives one line per step. Raises CaeError on bad input (nothing written)."""
    splits = read_mnist(mnist_dir, progress)
    hashes = {kinds[kind][0]: kinds[kind][3] for kinds in MNIST.values() for kind in kinds}
    stamps = {name: _stamp(hashes, {"output": name}) for name in OUTPUTS}
    paths = _write_all(splits, out_dir, stamps, list_prefix, force, progress)
    progress("data: done")
    return paths


def write_tiny(out_dir, n=200, n_test=None, mnist_dir=None, list_prefix=None, progress=_quiet):
    """Write a small set with the same files and layout as ``convert()``: the first ``n`` training
    and first ``n_test`` (default ``n``) test images of the verified MNIST, with their own pairs.
    For engine tests. Returns the same dict of paths."""
    n_test = n if n_test is None else n_test
    for name, value, split in (("n", n, "train"), ("n_test", n_test, "test")):
        limit = MNIST[split]["labels"][2][0]
        if not 2 <= value <= limit:
            raise CaeError("write_tiny: %s=%d, expected 2..%d" % (name, value, limit))
    full = read_mnist(mnist_dir, progress)
    splits = {"train": (full["train"][0][:n], full["train"][1][:n]),
              "test": (full["test"][0][:n_test], full["test"][1][:n_test])}
    hashes = {kinds[kind][0]: kinds[kind][3] for kinds in MNIST.values() for kind in kinds}
    stamps = {name: _stamp(hashes, {"output": name, "tiny": [n, n_test]}) for name in OUTPUTS}
    return _write_all(splits, out_dir, stamps, list_prefix, False, progress)
