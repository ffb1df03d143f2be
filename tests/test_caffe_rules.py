"""Caffe's rules as caffe_cae.caffe_rules writes them once: NetStateRule filtering (phase,
stage, not_stage, min/max level, include against exclude), window settings, output sizes
of convolution, pooling (ceil, the padding rule) and unpooling, and V1 net inputs."""
import pytest

from caffe_cae import caffe_rules as rules
from caffe_cae.errors import CaeError
from caffe_cae.inspect import inspect_net
from caffe_cae.proto import caffe_cae_pb2 as pb
from caffe_cae.schema import parse_net

FILTERED = """
name: "rules"
layer { name: "always" type: "Silence" }
layer { name: "train" type: "Silence" include { phase: TRAIN } }
layer { name: "test" type: "Silence" include { phase: TEST } }
layer { name: "not_test" type: "Silence" exclude { phase: TEST } }
layer { name: "test_on_train" type: "Silence" include { phase: TEST stage: "test-on-train" } }
layer { name: "both_stages" type: "Silence" include { stage: "a" stage: "b" } }
layer { name: "either_stage" type: "Silence" include { stage: "a" } include { stage: "b" } }
layer { name: "not_a" type: "Silence" include { not_stage: "a" } }
layer { name: "exclude_a" type: "Silence" exclude { stage: "a" } }
layer { name: "level_1_up" type: "Silence" include { min_level: 1 } }
layer { name: "level_up_to_1" type: "Silence" include { max_level: 1 } }
layer { name: "level_at_least_2_excluded" type: "Silence" exclude { min_level: 2 } }
"""


def names(phase, stages=(), level=0):
    return [layer.name for layer in rules.active_layers(parse_net(FILTERED), phase, stages, level)]


def test_phase_rules():
    base = ["always", "not_a", "level_up_to_1"]
    assert names("train") == ["always", "train", "not_test", "not_a", "exclude_a", "level_up_to_1",
                              "level_at_least_2_excluded"]
    assert names("test") == ["always", "test", "not_a", "exclude_a", "level_up_to_1", "level_at_least_2_excluded"]
    assert names(pb.TEST) == names("test") and set(base) <= set(names("test"))


def test_stage_rules():
    assert "test_on_train" in names("test", ["test-on-train"])
    assert "test_on_train" not in names("test", ["test-on-test"])
    assert "test_on_train" not in names("train", ["test-on-train"])
    # every stage of one rule is needed; any one rule of several suffices
    assert "both_stages" not in names("train", ["a"]) and "both_stages" in names("train", ["a", "b"])
    assert "either_stage" in names("train", ["b"]) and "either_stage" not in names("train")
    # not_stage and an exclude rule with a stage drop the layer in that stage only
    for name in ("not_a", "exclude_a"):
        assert name in names("train", ["b"]) and name not in names("train", ["a"])


def test_level_rules():
    assert "level_1_up" not in names("train", level=0) and "level_1_up" in names("train", level=1)
    assert "level_up_to_1" in names("train", level=1) and "level_up_to_1" not in names("train", level=2)
    assert "level_at_least_2_excluded" in names("train", level=1)
    assert "level_at_least_2_excluded" not in names("train", level=2)


def test_include_and_exclude_together_are_refused():
    net = parse_net('layer { name: "odd" type: "Silence" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(CaeError, match="layer odd: both include and exclude rules"):
        rules.active_layers(net, "train")


def test_pooling_rounds_up_and_drops_a_window_in_the_padding():
    assert rules.pool_out(24, 2, 2) == 12
    assert rules.pool_out(7, 2, 2) == 4          # ceil: the last window covers one row (floor would give 3)
    assert rules.pool_out(7, 3, 2) == 3
    assert rules.pool_out(6, 3, 2) == 3          # ceil(3 / 2) + 1
    assert rules.pool_out(5, 2, 2, pad=1) == 3   # ceil(5 / 2) + 1 = 4 windows; the 4th would start in the padding
    assert rules.pool_out(6, 2, 2, pad=1) == 4
    assert rules.pool_out(28, 28, 1) == 1


def test_convolution_sizes():
    assert rules.conv_out(28, 5) == 24 and rules.conv_out(28, 5, 2, 2) == 14 and rules.conv_out(28, 3, dilation=2) == 24
    assert rules.deconv_out(24, 5) == 28 and rules.deconv_out(14, 5, 2, 2) == 27 and rules.deconv_out(1, 4) == 4


def test_unpooling_sizes():
    assert rules.unpool_out(12, 2, 2) == 25        # h * stride + 1: one more than the pooled map needs
    assert rules.unpool_out(4, 2, 2) == 9
    assert rules.unpool_out(3, 5, 1) == 7          # the windows: (h - 1) * stride + kernel
    assert rules.unpool_out(4, 2, 2, pad=1) == 8
    param = pb.UnpoolingParameter(kernel_size=2, stride=2)
    assert rules.unpool_explicit(param) is None
    param.unpool_h, param.unpool_w = 24, 23
    assert rules.unpool_explicit(param) == (24, 23)
    param.unpool_size = 22                          # the engine reads unpool_size first
    assert rules.unpool_explicit(param) == (22, 22)


def test_windows():
    conv = pb.ConvolutionParameter(kernel_size=[5], stride=[2, 1])
    assert rules.window(conv) == ((5, 5), (2, 1), (0, 0))
    assert rules.window(pb.ConvolutionParameter(kernel_h=3, kernel_w=5, pad_h=1, pad_w=2)) == ((3, 5), (1, 1), (1, 2))
    pool = pb.PoolingParameter(kernel_size=2, stride=2)
    assert rules.window(pool) == ((2, 2), (2, 2), (0, 0))
    assert rules.window(pb.PoolingParameter(global_pooling=True), global_pooling=True)[0] is None
    with pytest.raises(CaeError, match="layer c: give kernel_size or kernel_h/kernel_w, not both"):
        rules.window(pb.ConvolutionParameter(kernel_size=[3], kernel_h=3, kernel_w=3), where="layer c")
    with pytest.raises(CaeError, match="^kernel_size is required$"):
        rules.window(pb.PoolingParameter())
    with pytest.raises(CaeError, match="stride: expected 1 or 2 values for 2-D, got 3"):
        rules.window(pb.ConvolutionParameter(kernel_size=[3], stride=[1, 1, 1]))
    assert rules.canonical_axis(-1, 4) == 3
    with pytest.raises(CaeError, match="axis 4 out of range for a 4-axis blob"):
        rules.canonical_axis(4, 4)


V1_INPUTS = """
name: "v1"
input: "data"
input_dim: 10 input_dim: 1 input_dim: 28 input_dim: 28
input: "label"
input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""


def test_net_inputs_become_an_input_layer():
    net = parse_net(V1_INPUTS)
    modern = rules.with_input_layer(net)
    assert [layer.name for layer in modern.layer] == ["input", "pool"] and not len(modern.input)
    first = modern.layer[0]
    assert first.type == "Input" and list(first.top) == ["data", "label"]
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 1, 28, 28], [10, 1, 1, 1]]
    assert len(net.input) == 2 and len(net.layer) == 1           # the given net is not changed
    shaped = parse_net('input: "x" input_shape { dim: 2 dim: 3 } layer { name: "s" type: "Silence" bottom: "x" }')
    assert [list(s.dim) for s in rules.with_input_layer(shaped).layer[0].input_param.shape] == [[2, 3]]
    no_inputs = parse_net('layer { name: "s" type: "Silence" }')
    assert rules.with_input_layer(no_inputs) is no_inputs
    with pytest.raises(CaeError, match="3 input_dim for 1 input"):
        rules.input_layer(parse_net('input: "x" input_dim: 1 input_dim: 2 input_dim: 3'))
    # inspect reads such a net through the same rule, and pools with Caffe's ceil: 28 -> 14
    info = inspect_net(V1_INPUTS)
    assert info["blobs"]["pool"] == [10, 1, 14, 14] and info["layers"][0]["type"] == "Input"
