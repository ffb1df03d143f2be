"""caffe-cae data: MNIST idx -> HDF5, on the vendored MNIST files, plus every bad-input case."""
import gzip
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from caffe_cae import REPO_ROOT, data
from caffe_cae.cli import cli
from caffe_cae.errors import CaeError

VENDORED = os.path.join(REPO_ROOT, "data", "mnist")
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _runner():
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart already
        return CliRunner()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hdf5") / "hdf5")
    lines = []
    paths = data.convert(mnist_dir=VENDORED, out_dir=out, progress=lines.append)
    return out, paths, lines


def test_vendored_files_present():
    for kinds in data.MNIST.values():
        for name, _, _, _ in kinds.values():
            assert os.path.getsize(os.path.join(VENDORED, name)) > 4000, name


def test_outputs_and_list_files(converted):
    out, paths, lines = converted
    assert sorted(os.listdir(out)) == sorted(
        ["train.h5", "test.h5", "train_pairs.h5", "test_pairs.h5",
         "train.txt", "test.txt", "train_pairs.txt", "test_pairs.txt"])
    for name in data.OUTPUTS:
        assert paths[name] == os.path.join(out, name + ".h5")
        with open(paths[name + "_list"]) as fh:
            assert fh.read() == os.path.join(out, name + ".h5") + "\n"
    assert any("writing" in line and "train.h5" in line for line in lines)


@pytest.mark.parametrize("split,n,counts", [("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)])
def test_images_file(converted, split, n, counts):
    _, paths, _ = converted
    images, labels = data.load_idx(os.path.join(VENDORED, data.MNIST[split]["images"][0])), \
        data.load_idx(os.path.join(VENDORED, data.MNIST[split]["labels"][0]))
    with h5py.File(paths[split], "r") as f:
        x, y = f["data"], f["label"]
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.float32
        assert x.chunks is None and x.compression is None  # plain datasets for Caffe 1.0
        sample = x[:: n // 50]
        assert sample.min() == 0.0 and sample.max() == 1.0
        # /255 and nothing else
        np.testing.assert_array_equal(x[-100:, 0], images[-100:].astype(np.float32) / np.float32(255))
        y = y[:]
    assert np.bincount(y.astype(int), minlength=10).tolist() == counts
    np.testing.assert_array_equal(y, labels.astype(np.float32))


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_pairs_file(converted, split, n):
    _, paths, _ = converted
    with h5py.File(paths[split], "r") as f:
        labels = f["label"][:]
        first = f["data"][:200, 0]
    with h5py.File(paths[split + "_pairs"], "r") as f:
        assert f["pair_data"].shape == (n, 2, 28, 28) and f["pair_data"].dtype == np.float32
        assert f["sim"].shape == (n,) and f["sim"].dtype == np.float32
        index, sim, pair_label = f["pair_index"][:], f["sim"][:], f["pair_label"][:]
        head = f["pair_data"][:200]
    assert (index[:, 0] == np.arange(n)).all() and (index[:, 0] != index[:, 1]).all()
    np.testing.assert_array_equal(pair_label, labels[index])
    np.testing.assert_array_equal(sim, (labels[index[:, 0]] == labels[index[:, 1]]).astype(np.float32))
    assert set(np.unique(sim).tolist()) == {0.0, 1.0}
    assert 0.07 < sim.mean() < 0.13  # about one pair in ten shows the same digit
    np.testing.assert_array_equal(head[:, 0], first)
    with h5py.File(paths[split], "r") as f:
        for k in range(0, 200, 20):
            np.testing.assert_array_equal(head[k, 1], f["data"][index[k, 1], 0])


def test_pairs_are_fixed_by_seed():
    labels = np.arange(1000) % 10
    a, sa = data.draw_pairs(labels, 5)
    b, sb = data.draw_pairs(labels, 5)
    c, _ = data.draw_pairs(labels, 6)
    assert (a == b).all() and (sa == sb).all() and not (a == c).all()


def test_idempotent(converted):
    out, paths, _ = converted
    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths.values()}
    lines = []
    again = data.convert(mnist_dir=VENDORED, out_dir=out, progress=lines.append)
    assert again == paths
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths.values()} == before
    assert sum("up to date" in line for line in lines) == 4
    assert not any(name.startswith(".") or ".tmp-" in name for name in os.listdir(out))


def test_stale_output_is_rewritten(tmp_path):
    paths = data.write_tiny(str(tmp_path), n=20, n_test=10, mnist_dir=VENDORED)
    with h5py.File(paths["test"], "a") as f:
        f.attrs["caffe_cae_inputs"] = "something else"
    before = os.stat(paths["train"]).st_mtime_ns
    lines = []
    data.write_tiny(str(tmp_path), n=20, n_test=10, mnist_dir=VENDORED, progress=lines.append)
    assert any("writing" in line and "test.h5" in line for line in lines)
    assert os.stat(paths["train"]).st_mtime_ns == before
    with h5py.File(paths["test"], "r") as f:
        assert f.attrs["caffe_cae_inputs"] != "something else"


def test_write_tiny_layout(tmp_path):
    paths = data.write_tiny(str(tmp_path / "tiny"), n=30, n_test=12, mnist_dir=VENDORED, list_prefix="data/tiny")
    with h5py.File(paths["train"], "r") as f:
        assert f["data"].shape == (30, 1, 28, 28) and f["label"].shape == (30,)
    with h5py.File(paths["test_pairs"], "r") as f:
        assert f["pair_data"].shape == (12, 2, 28, 28) and f["sim"].shape == (12,)
    with open(paths["train_list"]) as fh:
        assert fh.read() == "data/tiny/train.h5\n"
    with pytest.raises(CaeError, match="n=1"):
        data.write_tiny(str(tmp_path / "x"), n=1, mnist_dir=VENDORED)


def test_mnist_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nowhere"))
    assert data.mnist_dir() == str(tmp_path / "nowhere")
    with pytest.raises(CaeError, match="nowhere.*not found"):
        data.read_mnist()
    monkeypatch.delenv("MNIST_DIR")
    assert data.mnist_dir() == VENDORED


def test_load_idx_uncompressed(tmp_path):
    raw = tmp_path / "labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(open(os.path.join(VENDORED, "t10k-labels-idx1-ubyte.gz"), "rb").read()))
    labels = data.load_idx(str(raw), magic=2049, shape=(10000,))
    assert labels.dtype == np.uint8 and np.bincount(labels).tolist() == TEST_COUNTS


# ---- bad input: one line naming the file, exit status 2, nothing written ----------------

def _raw(name):
    with gzip.open(os.path.join(VENDORED, name), "rb") as fh:
        return fh.read()


def _truncated(name):
    blob = open(os.path.join(VENDORED, name), "rb").read()
    return blob[: len(blob) // 2]


def _not_gzip(name):
    return b"this is not gzip data at all" * 10


def _bad_crc(name):
    blob = bytearray(open(os.path.join(VENDORED, name), "rb").read())
    blob[-6] ^= 0xFF  # gzip trailer CRC-32
    return bytes(blob)


def _bad_magic(name):
    raw = bytearray(_raw(name))
    raw[3] = 0x04
    return gzip.compress(bytes(raw), compresslevel=1)


def _wrong_count(name):
    raw = bytearray(_raw(name))
    raw[4:8] = (9999).to_bytes(4, "big")
    return gzip.compress(bytes(raw[:-1]), compresslevel=1)


def _short_body(name):
    return gzip.compress(_raw(name)[:-7], compresslevel=1)


def _wrong_hash(name):
    raw = bytearray(_raw(name))
    raw[100] = (raw[100] + 1) % 10
    return gzip.compress(bytes(raw), compresslevel=1)


CASES = [
    ("t10k-labels-idx1-ubyte.gz", _truncated, "truncated gzip"),
    ("train-labels-idx1-ubyte.gz", _not_gzip, "not a gzip file"),
    ("t10k-labels-idx1-ubyte.gz", _bad_crc, "corrupt gzip"),
    ("t10k-images-idx3-ubyte.gz", _bad_magic, "bad magic number"),
    ("t10k-labels-idx1-ubyte.gz", _wrong_count, "shape 9999"),
    ("t10k-labels-idx1-ubyte.gz", _short_body, "truncated: 10001 bytes"),
    ("t10k-labels-idx1-ubyte.gz", _wrong_hash, "SHA-256"),
]


@pytest.mark.parametrize("name,damage,expected", CASES, ids=[c[1].__name__.strip("_") for c in CASES])
def test_bad_input_cli(tmp_path, name, damage, expected):
    src = tmp_path / "mnist"
    src.mkdir()
    for kinds in data.MNIST.values():
        for other, _, _, _ in kinds.values():
            if other != name:
                os.symlink(os.path.join(VENDORED, other), str(src / other))
    (src / name).write_bytes(damage(name))
    out = tmp_path / "out"
    result = _runner().invoke(cli, ["data", "--mnist-dir", str(src), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("data: checking")]
    assert len(lines) == 1, result.stderr
    assert str(src / name) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not out.exists()


def test_missing_file_cli(tmp_path):
    src = tmp_path / "mnist"
    shutil.copytree(VENDORED, str(src))
    os.remove(str(src / "t10k-images-idx3-ubyte.gz"))
    result = _runner().invoke(cli, ["data", "--mnist-dir", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "t10k-images-idx3-ubyte.gz: file not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_end_to_end(converted):
    # the CLI on the module's converted directory: everything up to date, then --force rewrites
    out, paths, _ = converted
    runner = _runner()
    again = runner.invoke(cli, ["data", "--mnist-dir", VENDORED, "--out", out])
    assert again.exit_code == 0, again.stderr
    assert again.stderr.count("up to date") == 4
    assert "train_pairs_list\t%s" % paths["train_pairs_list"] in again.stdout
    forced = runner.invoke(cli, ["data", "--mnist-dir", VENDORED, "--out", out, "--force"])
    assert forced.exit_code == 0 and forced.stderr.count("data: writing") == 4
    with h5py.File(paths["test_pairs"], "r") as f:
        assert f["pair_data"].shape == (10000, 2, 28, 28)


# ---- real Caffe reads the files: HDF5Data over the list files --------------------------

HDF5DATA_NET = """
name: "hdf5data_check"
layer { name: "images" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "data/hdf5/train.txt" batch_size: 10 } }
layer { name: "pairs" type: "HDF5Data" top: "pair_data" top: "sim"
        hdf5_data_param { source: "data/hdf5/test_pairs.txt" batch_size: 10 } }
"""

HDF5DATA_SCRIPT = """
import sys, numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net("net.prototxt", caffe.TEST)
out = {}
for step in range(2):
    net.forward()
    for name in ("data", "label", "pair_data", "sim"):
        out["%s_%d" % (name, step)] = net.blobs[name].data.copy()
np.savez("blobs.npz", **out)
"""


def _engine():
    """The Caffe engine, or skip (fail when CAFFE_CAE_REQUIRE_ENGINE=1)."""
    try:
        from caffe_cae import engine
        return engine.get_engine(build=False)
    except (ImportError, CaeError) as exc:
        from conftest import missing
        missing(str(exc))


def test_caffe_hdf5data_reads_the_files(tmp_path):
    eng = _engine()
    # the repository convention: list files name data/hdf5/*.h5 relative to the directory Caffe runs in
    paths = data.write_tiny(str(tmp_path / "data" / "hdf5"), n=25, n_test=15, mnist_dir=VENDORED,
                            list_prefix="data/hdf5")
    (tmp_path / "net.prototxt").write_text(HDF5DATA_NET)
    (tmp_path / "check.py").write_text(HDF5DATA_SCRIPT)
    proc = eng.run([eng.python, "check.py"], cwd=str(tmp_path), stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    blobs = np.load(str(tmp_path / "blobs.npz"))
    with h5py.File(paths["train"], "r") as f:
        x, y = f["data"][:], f["label"][:]
    with h5py.File(paths["test_pairs"], "r") as f:
        px, sim = f["pair_data"][:], f["sim"][:]
    for step in range(2):
        rows = np.arange(10 * step, 10 * step + 10)  # the 15 test pairs wrap around in batch 2
        assert blobs["data_%d" % step].shape == (10, 1, 28, 28)
        np.testing.assert_array_equal(blobs["data_%d" % step], x[rows % 25])
        np.testing.assert_array_equal(blobs["label_%d" % step], y[rows % 25])
        assert blobs["pair_data_%d" % step].shape == (10, 2, 28, 28)
        np.testing.assert_array_equal(blobs["pair_data_%d" % step], px[rows % 15])
        np.testing.assert_array_equal(blobs["sim_%d" % step], sim[rows % 15])
