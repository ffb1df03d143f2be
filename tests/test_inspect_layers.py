"""caffe-cae inspect's shape rule of each Caffe 1.0 layer type it knows, on small nets written
here: the shapes and parameter counts Caffe's Reshape rules give (by hand), and the same
shapes and counts from the real Caffe in the engine (one run for all nets)."""
import json
import os
import re

import pytest

from caffe_cae.inspect import inspect_net

from engine_support import SCRIPTS, require_engine, run_json


def layer(name, kind, bottom=("data",), top=None, body=""):
    bottoms = "".join(f' bottom: "{b}"' for b in bottom)
    tops = "".join(f' top: "{t}"' for t in (top if top is not None else [name]))
    return f'layer {{ name: "{name}" type: "{kind}"{bottoms}{tops} {body} }}\n'


def net(*layers, **inputs):
    """A modern net: one Input layer with ``inputs`` (top=dims; default data 2x3x8x8), then ``layers``."""
    inputs = inputs or {"data": [2, 3, 8, 8]}
    shapes = " ".join("shape { %s }" % " ".join(f"dim: {d}" for d in dims) for dims in inputs.values())
    return 'name: "t"\n' + layer("input", "Input", (), list(inputs), f"input_param {{ {shapes} }}") + "".join(layers)


RELU = layer("r", "ReLU")
SCORES = {"a": [2, 5], "b": [2, 5], "label": [2], "sim": [2]}

#: name: (net text, {blob: shape}, trained parameters w+b)
CASES = {
    "input": (net(), {"data": [2, 3, 8, 8]}, 0),
    "conv": (net(layer("c", "Convolution", body="convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }")),
             {"c": [2, 4, 4, 4]}, 3 * 3 * 3 * 4 + 4),
    "conv_group_dilation": (net(layer("c", "Convolution", body="convolution_param { num_output: 6 kernel_size: 3 "
                                                               "dilation: 2 group: 3 }")),
                            {"c": [2, 6, 4, 4]}, 3 * 3 * 1 * 6 + 6),
    "conv_rectangular": (net(layer("c", "Convolution", body="convolution_param { num_output: 4 kernel_h: 3 "
                                                            "kernel_w: 1 bias_term: false }")),
                         {"c": [2, 4, 6, 8]}, 3 * 1 * 3 * 4),
    "deconv": (net(layer("d", "Deconvolution", body="convolution_param { num_output: 2 kernel_size: 4 stride: 2 "
                                                    "pad: 1 bias_term: false }")),
               {"d": [2, 2, 16, 16]}, 4 * 4 * 3 * 2),
    "pool_max": (net(layer("p", "Pooling", body="pooling_param { pool: MAX kernel_size: 3 stride: 2 }")),
                 {"p": [2, 3, 4, 4]}, 0),
    "pool_ave_pad": (net(layer("p", "Pooling", body="pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }")),
                     {"p": [2, 3, 5, 5]}, 0),
    "pool_floor": (net(layer("p", "Pooling", body="pooling_param { pool: MAX kernel_size: 3 stride: 2 "
                                                  "round_mode: FLOOR }")),
                   {"p": [2, 3, 3, 3]}, 0),
    "pool_global": (net(layer("p", "Pooling", body="pooling_param { pool: AVE global_pooling: true }")),
                    {"p": [2, 3, 1, 1]}, 0),
    "unpooling": (net(layer("u", "Unpooling", body="unpooling_param { unpool: MAX kernel_size: 2 stride: 2 }")),
                  {"u": [2, 3, 17, 17]}, 0),  # the engine's rule: caffe_rules.unpool_out
    "ip": (net(layer("f", "InnerProduct", body="inner_product_param { num_output: 5 }")), {"f": [2, 5]}, 192 * 5 + 5),
    "ip_axis2": (net(layer("f", "InnerProduct", body="inner_product_param { num_output: 5 axis: 2 }")),
                 {"f": [2, 3, 5]}, 64 * 5 + 5),
    "flatten": (net(layer("f", "Flatten")), {"f": [2, 192]}, 0),
    "reshape": (net(layer("r", "Reshape", body="reshape_param { shape { dim: 0 dim: -1 dim: 4 } }")),
                {"r": [2, 48, 4]}, 0),
    "split": (net(layer("s", "Split", top=["s1", "s2"])), {"s1": [2, 3, 8, 8], "s2": [2, 3, 8, 8]}, 0),
    "slice": (net(layer("s", "Slice", top=["s1", "s2"], body="slice_param { axis: 1 slice_point: 1 }")),
              {"s1": [2, 1, 8, 8], "s2": [2, 2, 8, 8]}, 0),
    "concat": (net(RELU, layer("c", "Concat", bottom=("data", "r"))), {"c": [2, 6, 8, 8]}, 0),
    "eltwise": (net(RELU, layer("e", "Eltwise", bottom=("data", "r"), body="eltwise_param { operation: MAX }")),
                {"e": [2, 3, 8, 8]}, 0),
    "accuracy": (net(layer("acc", "Accuracy", bottom=("a", "label"), top=["acc", "per_class"]), **SCORES),
                 {"acc": [], "per_class": [5]}, 0),
    "losses": (net(layer("l1", "SoftmaxWithLoss", bottom=("a", "label")),
                   layer("l2", "EuclideanLoss", bottom=("a", "b")),
                   layer("l3", "SigmoidCrossEntropyLoss", bottom=("a", "b")),
                   layer("l4", "ContrastiveLoss", bottom=("a", "b", "sim")),
                   layer("l5", "HingeLoss", bottom=("a", "label")),
                   layer("l6", "MultinomialLogisticLoss", bottom=("a", "label")),
                   layer("l7", "InfogainLoss", bottom=("a", "label", "h")), **SCORES, h=[5, 5]),
               {"l1": [], "l2": [], "l3": [], "l4": [], "l5": [], "l6": [], "l7": []}, 0),
    "silence": (net(layer("s", "Silence", top=[])), {"data": [2, 3, 8, 8]}, 0),
    "prelu": (net(layer("x", "PReLU")), {"x": [2, 3, 8, 8]}, 3),
}
for kind in ("ReLU", "Sigmoid", "TanH", "Dropout", "LRN", "BatchNorm", "Softmax", "Power", "ELU", "AbsVal", "BNLL",
             "Exp", "Log", "Threshold", "MVN"):
    CASES[kind.lower()] = (net(layer("x", kind)), {"x": [2, 3, 8, 8]}, 0)
CASES["scale"] = (net(layer("x", "Scale", body="scale_param { bias_term: true }")), {"x": [2, 3, 8, 8]}, 3 + 3)
CASES["scale_by_bottom"] = (net(layer("x", "Scale", bottom=("data", "f"), body="scale_param { bias_term: true }"),
                                data=[2, 3, 8, 8], f=[3]), {"x": [2, 3, 8, 8]}, 3)  # factors given, biases learnt


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_shapes(case):
    text, blobs, params = CASES[case]
    info = inspect_net(text)
    for name, dims in blobs.items():
        assert info["blobs"][name] == dims, name
    assert info["params"] == params


@pytest.fixture(scope="module")
def caffe_shapes(tmp_path_factory):
    """{case: {"blobs", "params"}} from real Caffe, every case net in one engine run."""
    eng = require_engine()
    work = tmp_path_factory.mktemp("layers")
    paths = []
    for case, (text, _, _) in sorted(CASES.items()):
        path = work / f"{case}.prototxt"
        path.write_text(text)
        paths.append(str(path))
    report = run_json(eng, [eng.python, os.path.join(SCRIPTS, "shape_check.py")] + paths, cwd=str(work))
    return {os.path.basename(path)[:-len(".prototxt")]: value for path, value in report.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_shapes_equal_real_caffe(caffe_shapes, case):
    """Every blob's shape and every layer's parameter count equal real Caffe's (BatchNorm's
    mean, variance and factor are statistics Caffe keeps as blobs; inspect counts no trained ones)."""
    info = inspect_net(CASES[case][0])
    real = caffe_shapes[case]
    splits = {name for name in real["blobs"] if re.fullmatch(r".+_split_\d+", name)}  # Caffe's own Split tops
    assert info["blobs"] == {k: v for k, v in real["blobs"].items() if k not in splits}, json.dumps(real["blobs"])
    for entry in info["layers"]:
        sizes = real["params"].get(entry["name"], [])
        if entry["type"] == "BatchNorm":
            assert (sizes, entry["weights"] + entry["biases"]) == ([3, 3, 1], 0)
        else:
            assert sizes == [n for n in (entry["weights"], entry["biases"]) if n], entry["name"]
