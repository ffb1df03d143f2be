"""caffe-cae upgrade: every generated legacy net upgrades to the generated modern net."""
import os

import pytest
from click.testing import CliRunner

from caffe_cae import render, schema
from caffe_cae.cli import cli
from caffe_cae.upgrade import upgrade
from conftest import REPO


@pytest.mark.parametrize("net, dim", render.paper_grid())
@pytest.mark.parametrize("kind", ["train_test", "deploy"])
def test_round_trip(net, dim, kind):
    legacy = schema.parse_net(os.path.join(REPO, "generated", "legacy", render.file_name(net, dim, kind)))
    modern = schema.parse_net(os.path.join(REPO, "generated", "modern", render.file_name(net, dim, kind)))
    assert upgrade(legacy) == modern


def test_cli_writes_file(tmp_path):
    out = tmp_path / "m3.prototxt"
    source = os.path.join(REPO, "generated", "legacy", "model3_d10_train_test.prototxt")
    result = CliRunner().invoke(cli, ["upgrade", source, "-o", str(out)])
    assert result.exit_code == 0, result.output
    net = schema.parse_net(str(out))
    types = [layer.type for layer in net.layer]
    assert "Unpooling" in types and "Reshape" in types
    reshape = next(layer for layer in net.layer if layer.type == "Reshape")
    assert list(reshape.reshape_param.shape.dim) == [0, 0, 1, 1]
    assert (list(reshape.bottom), list(reshape.top)) == (["ip1decode"], ["ip1decodesh"])


def test_user_net_fc_into_unpooling_gets_fixed():
    text = """
name: "user"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 28 input_dim: 28
layers { name: "fc" type: INNER_PRODUCT bottom: "data" top: "fc" inner_product_param { num_output: 16 } }
layers { name: "act" type: TANH bottom: "fc" top: "fc" }
layers { name: "up" type: UNPOOLING bottom: "fc" top: "up"
         unpooling_param { unpool: TILE kernel_size: 2 stride: 2 } }
"""
    net = upgrade(schema.parse_net(text))
    assert [layer.type for layer in net.layer] == ["Input", "InnerProduct", "TanH", "Reshape", "Unpooling"]
    assert net.layer[4].bottom[0] == "fcsh"
    assert net.layer[4].unpooling_param.unpool == net.layer[4].unpooling_param.TILE


def test_stdout_and_modern_input_unchanged():
    source = os.path.join(REPO, "generated", "modern", "model1_d2_deploy.prototxt")
    result = CliRunner().invoke(cli, ["upgrade", source])
    assert result.exit_code == 0
    assert schema.parse_net(result.output) == schema.parse_net(source)
