"""caffe-cae upgrade against the real Caffe: every one of Caffe 1.0's net upgrades, each on a
small net of our own that needs it (tests/upgrade_nets/), upgraded by ours and by the engine's
upgrade_net_proto_text and compared as parsed messages; and the refusals, by name, of what
Caffe would drop or cannot read."""
import glob
import os
import subprocess

import pytest
from click.testing import CliRunner

from caffe_cae.cli import cli
from caffe_cae.errors import CaeError
from caffe_cae.schema import NetParameter, parse_text
from caffe_cae.upgrade import upgrade
from caffe_cae.upgrade_v0 import needs_v0_upgrade
from conftest import REPO
from engine_support import cli as run_cli
from engine_support import require_engine

NETS = os.path.join(REPO, "tests", "upgrade_nets")
FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NETS, "*.prototxt")))


def ours(name):
    return upgrade(parse_text(os.path.join(NETS, name), NetParameter))


def layer(net, name):
    return next(x for x in net.layer if x.name == name)


@pytest.fixture(scope="module")
def caffe_upgraded(tmp_path_factory):
    """{file name: the engine's upgrade_net_proto_text output, parsed}; one engine call."""
    eng = require_engine()
    work = str(tmp_path_factory.mktemp("caffe_upgrade"))
    script = "; ".join('upgrade_net_proto_text "%s/%s" "%s/%s" 2>"%s/%s.log" || echo "FAILED %s"'
                       % (NETS, n, work, n, work, n, n) for n in FILES)
    proc = eng.run(["sh", "-c", script], cwd=work, stdout=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert "FAILED" not in proc.stdout, proc.stdout
    return {n: parse_text(os.path.join(work, n), NetParameter) for n in FILES}


def test_every_step_has_a_net():
    assert FILES == ["modern_input_batchnorm.prototxt", "v0_data.prototxt", "v0_padding.prototxt",
                     "v1_data_transform.prototxt", "v1_input_dim.prototxt", "v1_layers.prototxt"]


@pytest.mark.parametrize("name", FILES)
def test_equals_real_caffe(caffe_upgraded, name):
    assert ours(name) == caffe_upgraded[name], "%s: caffe-cae upgrade differs from Caffe's" % name


# ------------------------------------------------------------------ each net needs its step

def test_v0_padding_folded():
    assert needs_v0_upgrade(parse_text(os.path.join(NETS, "v0_padding.prototxt"), NetParameter))
    net = ours("v0_padding.prototxt")
    assert [x.type for x in net.layer] == ["Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct",
                                           "Dropout", "Softmax"]
    conv, pool = layer(net, "conv_a"), layer(net, "pool_a")
    assert (list(conv.bottom), list(conv.convolution_param.pad), list(conv.convolution_param.kernel_size)) == \
        (["pixels"], [2], [5])
    assert (list(pool.bottom), pool.pooling_param.pad, pool.pooling_param.pool) == (["conv_a"], 1, pool.pooling_param.AVE)
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert layer(net, "norm_a").lrn_param.k == 2


def test_v0_data_fields_moved():
    net = ours("v0_data.prototxt")
    db = layer(net, "db")
    assert (db.data_param.source, db.data_param.batch_size, db.data_param.rand_skip) == ("train_db", 16, 7)
    assert (db.transform_param.crop_size, db.transform_param.mirror, db.transform_param.mean_file) == \
        (24, True, "mean.binaryproto")
    assert layer(net, "img").image_data_param.shuffle and layer(net, "win").window_data_param.crop_mode == "square"
    assert layer(net, "join").concat_param.concat_dim == 0


def test_v1_transformation_moved_out_of_data_params():
    net = ours("v1_data_transform.prototxt")
    train, test, win = layer(net, "train"), layer(net, "test"), layer(net, "win")
    assert train.transform_param.scale == pytest.approx(1 / 256) and not train.data_param.HasField("scale")
    assert (train.transform_param.crop_size, train.transform_param.mirror) == (20, True)
    assert test.transform_param.scale == 0.5 and not test.image_data_param.HasField("scale")
    assert (win.transform_param.crop_size, list(win.transform_param.mean_value)) == (16, [104])
    plain = layer(net, "plain")  # nothing to move, yet both messages, as Caffe gives them
    assert plain.HasField("data_param") and plain.HasField("transform_param")


def test_v1_layers_and_input():
    net = ours("v1_layers.prototxt")
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["x", "y"]
    c1 = layer(net, "c1")
    assert [(p.name, p.share_mode, p.lr_mult, p.decay_mult) for p in c1.param] == \
        [("c1_w", c1.param[0].STRICT, 1, 1), ("c1_b", c1.param[0].PERMISSIVE, 2, 0)]
    assert layer(net, "up").type == "Unpooling" and layer(net, "hinge").loss_weight == [0.5]
    assert not net.input and not net.input_dim and not net.layers


def test_batchnorm_params_frozen():
    net = ours("modern_input_batchnorm.prototxt")
    assert [(p.lr_mult, p.decay_mult) for p in layer(net, "norm").param] == [(0, 0)] * 3
    assert layer(net, "norm").param[2].name == "shared_bias"
    assert [p.lr_mult for p in layer(net, "norm2").param] == [0]  # one param: not the old form
    assert net.layer[0].type == "Input" and not net.input_shape


# ------------------------------------------------------------------ refusals, by name

V0 = 'name: "n"\ninput: "x"\ninput_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
REFUSED = {
    "fork_bn": ('layers { name: "bn1" type: BN bottom: "x" top: "x" bn_param { bn_mode: INFERENCE } }',
                "layer bn1: V1 type BN"),
    "v0_misplaced": (V0 + 'layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }',
                     "layer r: V0 field num_output does not apply to type 'relu'"),
    "v0_no_counterpart": (V0 + 'layers { layer { name: "d" type: "data" new_num: 2 } top: "y" }',
                          "layer d: V0 field new_num has no counterpart"),
    "v0_unknown_type": (V0 + 'layers { layer { name: "q" type: "quantize" } bottom: "x" top: "y" }',
                        "layer q: unknown V0 layer type 'quantize'"),
    "v0_padding_into_relu": (V0 + 'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "xp" }\n'
                             'layers { layer { name: "r" type: "relu" } bottom: "xp" top: "y" }',
                             "layer r: a padding layer (layer p) feeds it"),
    "v0_with_v1_fields": (V0 + 'layers { name: "c" layer { name: "c" type: "relu" } bottom: "x" top: "y" }',
                          "layer c: V1 field name beside a V0 `layer` record"),
    "mixed": ('layers { name: "a" type: RELU bottom: "x" top: "x" }\nlayer { name: "b" type: "ReLU" }',
              "both `layer {}` and V1 `layers {}`"),
    "input_shape_vs_dim": ('name: "n"\ninput: "x"\ninput_shape { dim: 1 dim: 2 }\ninput_dim: 1 input_dim: 3',
                           "net n: input_shape and input_dim disagree"),
    "fork_bn_param": ('layers { name: "r" type: RELU bn_param { bn_mode: LEARN } }', "layer r: bn_param"),
    "input_without_shape": ('name: "n"\ninput: "x"\nlayer { name: "r" type: "ReLU" bottom: "x" top: "y" }',
                            "net n: input x has no shape"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_by_name(case):
    text, message = REFUSED[case]
    with pytest.raises(CaeError) as info:
        upgrade(parse_text(text, NetParameter))
    assert message in str(info.value)


def test_cli_refusal_is_one_line_exit_2_nothing_written(tmp_path):
    source = tmp_path / "fork.prototxt"
    source.write_text(REFUSED["fork_bn"][0])
    out = tmp_path / "out.prototxt"
    result = CliRunner().invoke(cli, ["upgrade", str(source), "-o", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert len(result.output.strip().splitlines()) == 1
    assert str(source) in result.output and "V1 type BN" in result.output


@pytest.mark.parametrize("text, expected", [
    ('layers { name: "c" type: CROP bottom: "a" bottom: "b" top: "c" }', "no value named CROP"),
    ("", "no net in the file"),
])
def test_cli_unreadable_nets(tmp_path, text, expected):
    source = tmp_path / "net.prototxt"
    source.write_text(text)
    result = CliRunner().invoke(cli, ["upgrade", str(source)])
    assert result.exit_code == 2 and expected in result.output


def test_fields_caffe_keeps_but_ignores_are_warned(tmp_path):
    """A modern Data layer's data_param.scale stays (as in Caffe's upgrade) but is named on stderr."""
    source = tmp_path / "net.prototxt"
    source.write_text('layer { name: "d" type: "Data" top: "x" data_param { source: "db" batch_size: 1 scale: 0.5 } }')
    result = run_cli("upgrade", str(source))
    assert result.returncode == 0
    assert "layer d: data_param.scale is ignored by Caffe 1.0" in result.stderr
    assert parse_text(result.stdout, NetParameter) == parse_text(str(source), NetParameter)
