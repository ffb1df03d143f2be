"""caffe-cae inspect infers input shapes only from what it knows (the net, --input-shape, the
HDF5 or LMDB files its data layers read, the project's own MNIST layout), refuses anything
else in one line naming the layer, and prints the paper's figures only where they mean
something. Small nets and data files written here."""
import os

import h5py
import numpy as np
import pytest

from caffe_cae.inspect import format_table, inspect_net
from caffe_cae.errors import CaeError
from conftest import REPO

from engine_support import SCRIPTS, cli, require_engine, run_json

HDF5_NET = '''name: "h5"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "list.txt" batch_size: 10 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''
LMDB_NET = '''name: "db"
layer { name: "data" type: "Data" top: "data" top: "label" transform_param { crop_size: %d }
  data_param { source: "db_lmdb" batch_size: 16 backend: %s } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''


def one_line_error(args, *words, cwd=None):
    proc = cli("inspect", *args, cwd=cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caffe-cae: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def hdf5_dir(tmp_path):
    """HDF5_NET beside its list and a 7 x 4 feature file (BVLC's hdf5_classification layout)."""
    with h5py.File(tmp_path / "part1.h5", "w") as f:
        f["data"] = np.zeros((7, 4), np.float32)
        f["label"] = np.zeros((7,), np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "part1.h5") + "\n")
    (tmp_path / "net.prototxt").write_text(HDF5_NET)
    return tmp_path


def test_hdf5_shapes_from_the_file(hdf5_dir, monkeypatch):
    monkeypatch.chdir(hdf5_dir)  # Caffe reads the source list from the current folder
    info = inspect_net("net.prototxt")
    assert info["blobs"]["data"] == [10, 4] and info["blobs"]["label"] == [10]
    assert info["params"] == 4 * 2 + 2
    assert info["data_ratio"] is None and info["compression"] is None


def test_hdf5_shapes_equal_real_caffe(hdf5_dir, monkeypatch):
    eng = require_engine()
    report = run_json(eng, [eng.python, os.path.join(SCRIPTS, "shape_check.py"), "net.prototxt"], cwd=str(hdf5_dir))
    real = report["net.prototxt"]
    monkeypatch.chdir(hdf5_dir)
    info = inspect_net("net.prototxt")
    assert info["blobs"] == {k: v for k, v in real["blobs"].items() if k in info["blobs"]}
    assert sum(sum(sizes) for sizes in real["params"].values()) == info["params"]


def test_hdf5_without_its_file_is_refused(hdf5_dir, tmp_path_factory):
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    one_line_error([str(hdf5_dir / "net.prototxt")], "layer 'data' (HDF5Data)", "'list.txt'",
                   "--input-shape data=N,C,H,W", cwd=elsewhere)
    (hdf5_dir / "list.txt").write_text("missing.h5\n")
    one_line_error(["net.prototxt"], "missing.h5", cwd=str(hdf5_dir))


def test_hdf5_file_without_the_top_is_refused(hdf5_dir):
    with h5py.File(hdf5_dir / "part1.h5", "w") as f:
        f["data"] = np.zeros((7, 4), np.float32)
    one_line_error(["net.prototxt"], "has no dataset 'label'", "--input-shape label=", cwd=str(hdf5_dir))


def test_input_shape_option(hdf5_dir, tmp_path_factory):
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    path = str(hdf5_dir / "net.prototxt")
    proc = cli("inspect", path, "--input-shape", "data=5,3", "--input-shape", "label=5", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "3x2" not in proc.stdout and "(3i*2o+2b)" in proc.stdout
    # only one top given: the other one is still unknown
    one_line_error([path, "--input-shape", "data=5,3"], "'label'", cwd=elsewhere)
    one_line_error([path, "--input-shape", "data=5,x"], "--input-shape data=5,x", "NAME=N,C,H,W")
    one_line_error([path, "--input-shape", "data=0,3"], "--input-shape data=0,3")
    one_line_error([path, "--input-shape", "nosuch=1,2", "--input-shape", "data=5,3", "--input-shape", "label=5"],
                   "--input-shape nosuch", "no data or Input layer")


def test_input_shape_overrides_an_input_layer():
    text = ('name: "x"\nlayer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 '
            'dim: 8 } } }\nlayer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param '
            '{ num_output: 2 kernel_size: 3 } }\n')
    assert inspect_net(text)["blobs"]["c"] == [1, 2, 6, 6]
    assert inspect_net(text, input_shapes={"data": [4, 3, 10, 10]})["blobs"]["c"] == [4, 2, 8, 8]
    shapeless = text.replace("input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } }", "")
    with pytest.raises(CaeError, match=r"layer 'in' \(Input\): the shape of 'data' is unknown: it has no shape"):
        inspect_net(shapeless)
    assert inspect_net(shapeless, input_shapes={"data": [1, 1, 5, 5]})["blobs"]["c"] == [1, 2, 3, 3]


def test_legacy_input_dim():
    text = ('name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 9\ninput_dim: 9\n'
            'layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" convolution_param { num_output: 4 '
            'kernel_size: 3 stride: 2 } }\n')
    info = inspect_net(text)
    assert info["blobs"]["c"] == [1, 4, 4, 4] and info["params"] == 3 * 3 * 3 * 4 + 4


def test_mnist_layout_only_for_the_project_nets(tmp_path):
    """Without data files, a net caffe-cae renders takes MNIST's layout; the same net renamed does not."""
    source = os.path.join(REPO, "generated", "modern", "model1_d2_train_test.prototxt")
    info = inspect_net(source)
    assert info["blobs"]["data"] == [100, 1, 28, 28] and info["project_net"]
    renamed = tmp_path / "mine.prototxt"
    with open(source) as f:
        renamed.write_text(f.read().replace('name: "model1_d2"', 'name: "mine"', 1))
    one_line_error([str(renamed)], "layer 'data' (HDF5Data)", "'data/hdf5/train.txt'", cwd=str(tmp_path))


def write_lmdb(path, chw, encoded=False):
    import lmdb

    from caffe_cae.proto import caffe_cae_pb2 as pb
    c, h, w = chw
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for i in range(3):
            datum = pb.Datum(channels=c, height=h, width=w, data=bytes(c * h * w), label=i, encoded=encoded)
            txn.put(b"%08d" % i, datum.SerializeToString())


def test_lmdb_shapes_from_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lmdb(tmp_path / "db_lmdb", (1, 28, 28))
    info = inspect_net(LMDB_NET % (0, "LMDB"))
    assert info["blobs"]["data"] == [16, 1, 28, 28] and info["blobs"]["label"] == [16]
    assert info["params"] == 784 * 3 + 3
    assert inspect_net(LMDB_NET % (24, "LMDB"))["blobs"]["data"] == [16, 1, 24, 24]
    write_lmdb(tmp_path / "db_lmdb", (3, 8, 8), encoded=True)
    with pytest.raises(CaeError, match="holds encoded images"):
        inspect_net(LMDB_NET % (0, "LMDB"))


def test_data_layer_without_a_readable_database_is_refused(tmp_path):
    (tmp_path / "net.prototxt").write_text(LMDB_NET % (0, "LMDB"))
    one_line_error(["net.prototxt"], "layer 'data' (Data)", "no LMDB database at 'db_lmdb'", "--input-shape data=",
                   cwd=str(tmp_path))
    (tmp_path / "net.prototxt").write_text(LMDB_NET % (0, "LEVELDB"))
    one_line_error(["net.prototxt"], "LevelDB", cwd=str(tmp_path))
    proc = cli("inspect", "net.prototxt", "--input-shape", "data=8,1,28,28", cwd=str(tmp_path))
    assert proc.returncode == 0 and "(784i*3o+3b)" in proc.stdout, proc.stderr


def test_unknown_layer_type_is_refused_by_name():
    text = ('name: "x"\nlayer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
            'layer { name: "odd" type: "Frobnicate" bottom: "data" top: "odd" }\n')
    with pytest.raises(CaeError, match=r"layer 'odd' \(Frobnicate\): type 'Frobnicate' has no shape rule"):
        inspect_net(text)


@pytest.mark.parametrize("text", ["", "# only a comment\n", 'name: "nothing"\n'])
def test_empty_or_netless_file_is_an_error(tmp_path, text):
    path = tmp_path / "empty.prototxt"
    path.write_text(text)
    one_line_error([str(path)], str(path), "no net")


def test_paper_figures_only_where_they_mean_something():
    """Compression for auto-encoders (the last weighted layer rebuilds an input), Data/(w+b)
    for the project's own nets (MNIST); a classifier gets neither."""
    head = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }\n'
    code = 'layer { name: "code" type: "InnerProduct" bottom: "data" top: "code" inner_product_param { num_output: 3 } }\n'
    out = 'layer { name: "out" type: "InnerProduct" bottom: "code" top: "out" inner_product_param { num_output: %d } }\n'
    autoencoder = inspect_net('name: "ae"\n' + head + code + out % 16)
    assert autoencoder["autoencoder"] and autoencoder["compression"]["code_dim"] == 3
    assert autoencoder["compression"]["image_bytes"] == 16 and autoencoder["data_ratio"] is None
    table = format_table(autoencoder)
    assert "compression vs a 16-byte image" in table and "Data/(w+b)" not in table
    classifier = inspect_net('name: "cls"\n' + head + code + out % 10)
    assert not classifier["autoencoder"] and classifier["compression"] is None
    assert "compression" not in format_table(classifier) and "Data/(w+b)" not in format_table(classifier)
    siamese = inspect_net(os.path.join(REPO, "generated", "modern", "siamese_d2_train_test.prototxt"))
    assert siamese["compression"] is None and siamese["data_ratio"] == 139


#: data layers whose shape is in the layer itself: (layer text, data shape); the label is N
SIZED = {
    "MemoryData": ('memory_data_param { batch_size: 4 channels: 2 height: 5 width: 6 }', [4, 2, 5, 6]),
    "ImageData": ('transform_param { crop_size: 8 } image_data_param { source: "x.txt" batch_size: 4 '
                  'new_height: 10 new_width: 12 is_color: false }', [4, 1, 8, 8]),
    "WindowData": ('transform_param { crop_size: 9 } window_data_param { source: "w.txt" batch_size: 4 }',
                   [4, 3, 9, 9]),
}


def test_dummy_data_shapes():
    text = 'name: "x"\nlayer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param { %s } }\n'
    assert inspect_net(text % "shape { dim: 4 dim: 5 } shape { dim: 4 }")["blobs"] == {"data": [4, 5], "label": [4]}
    legacy = "num: 4 channels: 3 channels: 1 height: 6 height: 1 width: 7 width: 1"
    assert inspect_net(text % legacy)["blobs"] == {"data": [4, 3, 6, 7], "label": [4, 1, 1, 1]}


@pytest.mark.parametrize("kind", sorted(SIZED))
def test_sized_data_layers(kind):
    body, shape = SIZED[kind]
    info = inspect_net(f'name: "x"\nlayer {{ name: "d" type: "{kind}" top: "data" top: "label" {body} }}\n')
    assert info["blobs"] == {"data": shape, "label": shape[:1]}


def test_image_data_size_from_its_first_image(tmp_path, monkeypatch):
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    Image.new("RGB", (12, 7)).save(tmp_path / "img" / "a.png")
    (tmp_path / "list.txt").write_text("a.png 3\n")
    text = ('name: "x"\nlayer { name: "d" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 4 } }\n')
    assert inspect_net(text)["blobs"] == {"data": [4, 3, 7, 12], "label": [4]}
    (tmp_path / "list.txt").write_text("b.png 3\n")
    with pytest.raises(CaeError, match=r"layer 'd' \(ImageData\): the shape of 'data' is unknown: its first image "
                                       r"'img/b.png' cannot be read"):
        inspect_net(text)


def test_lmdb_made_by_caffe_equals_real_caffe(tmp_path):
    """The Datum records Caffe's own convert_mnist_data writes, read by inspect and by Caffe."""
    eng = require_engine()
    real = run_json(eng, [eng.python, os.path.join(SCRIPTS, "lmdb_shapes.py"), str(tmp_path),
                          os.path.join(REPO, "data", "mnist")], cwd=str(tmp_path))
    info = inspect_net(real["net"])
    assert info["blobs"]["data"] == [8, 1, 24, 24]
    assert info["blobs"] == {k: v for k, v in real["blobs"].items() if k in info["blobs"]}
