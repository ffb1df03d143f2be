"""tools/compare_engine.py: the real Caffe instantiates a net on data made for it and runs a
forward pass, and `caffe-cae inspect` gives every blob shape and parameter count it gives.
Small nets written here: a LeNet-like net on MNIST LMDBs (TRAIN and TEST), an HDF5 net, a V1
net that needs `upgrade` (its data scaling moved into transform_param)."""
import os
import subprocess
import sys

from caffe_cae import REPO_ROOT
from caffe_cae.schema import parse_net

from engine_support import require_engine

TOOLS = os.path.join(REPO_ROOT, "tools")
sys.path.insert(0, TOOLS)
import compare_engine  # noqa: E402

LENET = '''name: "lenet_like"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "db/mnist_train_lmdb" batch_size: 16 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "db/mnist_test_lmdb" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
'''
HDF5 = '''name: "h5_like"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "h5/train.txt" batch_size: 5 } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''
V1 = '''name: "v1_like"
layers { name: "mnist" type: DATA top: "data" top: "label"
  data_param { source: "db/mnist_v1_lmdb" backend: LMDB batch_size: 8 scale: 0.00390625 } }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 10 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
'''


def tool(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(TOOLS, "compare_engine.py")] + list(args), cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT))


def test_data_items_follow_the_layers():
    items = compare_engine.data_items(parse_net(LENET), {})
    assert [(i["kind"], i["path"], i["split"]) for i in items] == [
        ("mnist", "db/mnist_train_lmdb", "train"), ("mnist", "db/mnist_test_lmdb", "test")]
    (h5,) = compare_engine.data_items(parse_net(HDF5), {"h5/train.txt": [7]})
    assert h5["tops"] == {"data": [7], "label": []}
    imagenet = LENET.replace("mnist", "ilsvrc").replace("scale: 0.00390625", 'mean_file: "mean.binaryproto"')
    kinds = [(i["kind"], i["shape"]) for i in compare_engine.data_items(parse_net(imagenet), {})][:2]
    assert kinds == [("images_db", [3, 256, 256]), ("mean", [3, 256, 256])]


def test_states_follow_phase_and_stage_rules():
    assert compare_engine.states(parse_net(HDF5)) == [("train", ())]
    assert compare_engine.states(parse_net(LENET)) == [("train", ()), ("test", ())]
    staged = LENET.replace("include { phase: TEST }", 'include { phase: TEST stage: "on-test" }', 1)
    staged = staged.replace("include { phase: TEST }", 'include { phase: TEST not_stage: "on-test" }', 1)
    assert compare_engine.states(parse_net(staged)) == [("train", ()), ("test", ("on-test",))]
    assert compare_engine.state_name(("test", ("on-test",))) == "TEST/on-test"


def test_differences_name_what_differs():
    info = {"blobs": {"data": [2, 4], "fc": [2, 3]},
            "layers": [{"name": "data", "weights": 0, "biases": 0}, {"name": "fc", "weights": 12, "biases": 3}]}
    real = {"blobs": {"data": [2, 4], "fc": [2, 3], "data_data_0_split_0": [2, 4], "(automatic)": []},
            "layers": {"data": {"type": "HDF5Data", "sizes": []}, "fc": {"type": "InnerProduct", "sizes": [12, 3]}}}
    assert compare_engine.differences(info, real) == []
    real["blobs"]["fc"] = [2, 3, 1, 1]
    real["layers"]["fc"]["sizes"] = [12, 4]
    real["blobs"]["extra"] = [1]
    assert compare_engine.differences(info, real) == [
        "blob fc: inspect [2, 3], Caffe [2, 3, 1, 1]", "blob extra: only in Caffe", "layer fc: inspect 15 params, Caffe 16"]


def test_bad_options_are_one_line(tmp_path):
    (tmp_path / "net.prototxt").write_text(HDF5)
    for args, words in ((["--shape", "h5/train.txt=4,x"], "--shape h5/train.txt=4,x: expected positive integers"),
                        (["--shape", "4,4"], "--shape 4,4: expected SOURCE=C,H,W"),
                        (["missing.prototxt"], "missing.prototxt: no such file")):
        proc = tool("net.prototxt", *args, cwd=str(tmp_path))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["compare_engine: " + proc.stderr.strip()[16:]]
        assert words in proc.stderr and proc.stdout == ""


def test_own_nets_run_in_the_engine_as_inspect_sees_them(tmp_path):
    require_engine()
    nets = {"lenet_like.prototxt": LENET, "h5_like.prototxt": HDF5, "v1_like.prototxt": V1}
    for name, text in nets.items():
        (tmp_path / name).write_text(text)
    proc = tool(*nets, "--data-dir", "data", "--shape", "h5/train.txt=6", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in proc.stdout.splitlines() if " | " in line}
    assert rows["lenet_like.prototxt"][1:] == ["modern", "TRAIN+TEST forward", "= inspect (6 blobs, 7 blobs; 8806 params)"]
    assert rows["h5_like.prototxt"] == ["table, 21 params", "modern", "TRAIN forward", "= inspect (4 blobs; 21 params)"]
    v1 = rows["v1_like.prototxt"]
    assert v1[1] == "upgraded, 5 layers" and v1[2] == "TRAIN forward", v1
    assert v1[3] == "= inspect (5 blobs; %d params)" % (3 * 3 * 4 + 4 + 13 * 13 * 4 * 10 + 10), v1
    # the data were made by Caffe's own tools where the nets name them
    assert (tmp_path / "data" / "db" / "mnist_train_lmdb" / "data.mdb").is_file()
    assert (tmp_path / "data" / "h5" / "train.txt").is_file()
    assert proc.stdout.splitlines()[-1] == "= inspect: 3"
