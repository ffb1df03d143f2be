"""caffe-cae inspect: Table 1 and Table 3 numbers from the parsed files, both syntaxes."""
import json
import os

import pytest
from click.testing import CliRunner

from caffe_cae import paper
from caffe_cae.cli import cli
from caffe_cae.inspect import inspect_net
from conftest import REPO

PAPER = paper.load()
SYNTAXES = ("legacy", "modern")


def generated(syntax, net, dim, kind="train_test"):
    return os.path.join(REPO, "generated", syntax, f"{net}_d{dim}_{kind}.prototxt")


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("net", PAPER["nets"])
def test_table1_params_and_model_size(syntax, net):
    info = inspect_net(generated(syntax, net, 2))
    assert info["params"] == PAPER["table1"][net]["params"]
    assert info["model_size"] == PAPER["table1"][net]["model_size"]
    assert info["data_ratio"] == PAPER["table1"][net]["data_ratio"]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("net", ["deep_ae", "model1", "model2", "model3"])
def test_table3_per_layer_terms(syntax, net):
    info = inspect_net(generated(syntax, net, 2))
    layers = {layer["name"]: layer for layer in info["layers"]}
    table = PAPER["table3"][net]
    for name, counts in table.items():
        if not isinstance(counts, dict):
            continue
        assert (layers[name]["weights"], layers[name]["biases"]) == (counts["weights"], counts["biases"]), name


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_table2_siamese_channels(syntax):
    info = inspect_net(generated(syntax, "siamese", 2))
    layers = {layer["name"]: layer for layer in info["layers"]}
    for name, counts in PAPER["table2"]["siamese"].items():
        if isinstance(counts, dict):
            for suffix in ("", "_p"):
                layer = layers[name + suffix]
                assert (layer["weights"], layer["biases"]) == (counts["weights"], counts["biases"])
    assert info["unique_params"] == PAPER["table2"]["siamese"]["channel_total"]


def test_table3_term_text():
    info = inspect_net(generated("modern", "model3", 2))
    terms = {layer["name"]: layer["term"] for layer in info["layers"]}
    assert terms["conv2"] == "((5*5w+1b)*26i*36o)"
    assert terms["ip1encode"] == "(576i*250o+250b)"
    assert terms["deconv1neur"] == "((5*5w+1b)*26i*1o)"


@pytest.mark.parametrize("dim", [2, 10, 30])
def test_compression_section_5_1(dim):
    comp = PAPER["compression"]
    model3 = inspect_net(generated("modern", "model3", dim))["compression"]
    assert model3["code_bytes"] == 4 * dim
    assert {k: v["bits"] for k, v in model3["switches"].items()} == {"pool1_mask": 9, "pool2_mask": 6}
    assert comp["model3"]["min_bytes"] <= model3["total_bytes"] <= comp["model3"]["max_bytes"]
    assert model3["ratio_percent"] == pytest.approx(comp["model3"]["ratio_percent"], abs=20)
    model4 = inspect_net(generated("modern", "model4", dim))["compression"]
    assert model4["switches"] == {}
    assert round(model4["ratio_percent"]) == comp["others_ratio_percent"][str(dim)]


def test_model3_compression_extremes():
    low = inspect_net(generated("legacy", "model3", 2))["compression"]["total_bytes"]
    high = inspect_net(generated("legacy", "model3", 30))["compression"]["total_bytes"]
    assert (low, high) == (PAPER["compression"]["model3"]["min_bytes"], PAPER["compression"]["model3"]["max_bytes"])


def test_inspect_json_cli():
    result = CliRunner().invoke(cli, ["inspect", "--json", generated("legacy", "model4", 10, "deploy")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"] == 337727 + (10 - 2) * (250 + 1 + 250)  # ip2encode and ip1decode grow
    assert info["blobs"]["ip2encode"] == [100, 10, 1, 1]
    assert info["blobs"]["unpool1"] == [100, 26, 24, 24]
    assert {"params", "model_size", "blobs", "layers"} <= set(info)


def test_inspect_table_cli():
    result = CliRunner().invoke(cli, ["inspect", generated("modern", "model1", 2)])
    assert result.exit_code == 0
    assert "297391" in result.output and "7990" in result.output and "20x20x8" in result.output


def test_modern_fc_blobs_are_2d_and_reshaped():
    info = inspect_net(generated("modern", "model2", 2))
    assert info["blobs"]["ip1decode"] == [100, 250]
    assert info["blobs"]["ip1decodesh"] == [100, 250, 1, 1]
