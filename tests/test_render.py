"""caffe-cae render: determinism, freshness of generated/, variants and refusals."""
import filecmp
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from caffe_cae import render, schema
from caffe_cae.cli import cli
from caffe_cae.inspect import inspect_net
from conftest import REPO


def test_generated_is_fresh_and_deterministic(tmp_path):
    render.render_paper_grid(str(tmp_path / "a"))
    render.render_paper_grid(str(tmp_path / "b"))
    for syntax in ("legacy", "modern"):
        fresh = sorted(os.listdir(tmp_path / "a" / syntax))
        assert fresh == sorted(os.listdir(os.path.join(REPO, "generated", syntax)))
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / syntax, tmp_path / "b" / syntax, fresh,
                                                   shallow=False)
        assert mismatch == [] and errors == []
        match, stale, errors = filecmp.cmpfiles(tmp_path / "a" / syntax, os.path.join(REPO, "generated", syntax),
                                                fresh, shallow=False)
        assert stale == [] and errors == [], f"generated/{syntax} is stale: run `make prototxt`"


def test_paper_settings_in_files():
    text = open(os.path.join(REPO, "generated", "modern", "model4_d2_train_test.prototxt")).read()
    net = schema.parse_net(text)
    by_name = {layer.name: layer for layer in net.layer}
    assert by_name["ip2encode"].inner_product_param.weight_filler.sparse == 2  # capped at num_output
    assert by_name["ip1encode"].inner_product_param.weight_filler.sparse == 25
    assert by_name["conv1"].convolution_param.weight_filler.type == "xavier"
    assert len(by_name["unpool1"].bottom) == 1 and by_name["unpool1"].unpooling_param.unpool_size == 24
    assert [layer.type for layer in net.layer].count("HDF5Data") == 3
    model3 = schema.parse_net(os.path.join(REPO, "generated", "modern", "model3_d2_train_test.prototxt"))
    unpool = {layer.name: layer for layer in model3.layer}["unpool2"]
    assert list(unpool.bottom) == ["deconv2", "pool2_mask"]
    model5 = open(os.path.join(REPO, "generated", "modern", "model5_d10_train_test.prototxt")).read()
    assert '"TanH"' in model5 and '"Sigmoid"' in model5  # tanh inside; sigmoid only for the output
    solver = schema.parse_solver(os.path.join(REPO, "generated", "legacy", "model5_d10_solver.prototxt"))
    assert (solver.max_iter, solver.weight_decay, solver.lr_policy, solver.momentum) == (50000, pytest.approx(0.0005),
                                                                                         "fixed", 0)
    assert list(solver.test_iter) == [600, 100]


def test_variant(tmp_path):
    result = CliRunner().invoke(cli, ["render", "--net", "model4", "--dim", "16", "--activation", "relu",
                                      "--weight-filler", "msra", "--set", "solver.base_lr=0.01",
                                      "--syntax", "legacy", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    net = schema.parse_net(str(tmp_path / "model4_d16_train_test.prototxt"))
    types = [schema.pb.V1LayerParameter.LayerType.Name(layer.type) for layer in net.layers]
    assert "RELU" in types and "SIGMOID" in types and "UNPOOLING" in types
    solver = schema.parse_solver(str(tmp_path / "model4_d16_solver.prototxt"))
    assert solver.base_lr == pytest.approx(0.01)
    assert inspect_net(str(tmp_path / "model4_d16_deploy.prototxt"))["blobs"]["ip2encode"][1] == 16


def test_spec_file(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"net": "model1", "dim": 5, "set": {"layer.conv1.num_output": 12}}')
    result = CliRunner().invoke(cli, ["render", "--spec", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    info = inspect_net(str(tmp_path / "out" / "model1_d5_train_test.prototxt"))
    assert info["blobs"]["conv1"] == [100, 12, 20, 20]


@pytest.mark.parametrize("args, expected", [
    (["--net", "model4", "--dim", "0"], "--dim: expected a code size of at least 1"),
    (["--net", "model9", "--dim", "2"], "--net: expected one of"),
    (["--net", "model4", "--dim", "2", "--set", "solver.nope=1"], "--set solver.nope: unknown setting"),
    (["--net", "model4", "--dim", "2", "--set", "solver.base_lr=fast"], "--set solver.base_lr: expected float"),
    (["--net", "model4", "--dim", "2", "--set", "layer.conv1.kernel=30"], "kernel 30x30 is larger than its 28x28 input"),
    (["--net", "model2", "--dim", "2", "--activation", "softplus"], "--activation: expected sigmoid, tanh or relu"),
    (["--net", "model2", "--dim", "2", "--syntax", "v3"], "--syntax: expected modern or legacy"),
])
def test_refusals(tmp_path, args, expected):
    result = CliRunner().invoke(cli, ["render", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_spec_file_unknown_key(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text('{"net": "model1", "dim": 5, "colour": 1}')
    result = CliRunner().invoke(cli, ["render", "--spec", str(spec), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown key 'colour'" in result.output


@pytest.mark.parametrize("command", ["inspect", "upgrade"])
def test_malformed_prototxt_one_line(tmp_path, command):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayers {\n  name: "c"\n  type: CONVOLUTON\n}\n')
    proc = subprocess.run([sys.executable, "-m", "caffe_cae", command, str(bad)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"caffe-cae: error: {bad}:4:")


def test_missing_file_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "none.prototxt")])
    assert result.exit_code == 2 and "no such file" in result.output
