"""Every generated net in real Caffe: instantiates (with tiny HDF5 files made here), real
Caffe's parameter count equals `caffe-cae inspect` and the paper (Tables 1-3), one SGD step
gives a finite loss, and real Caffe's V1 upgrade of every legacy net equals `caffe-cae
upgrade` but for the Reshape fix.

Engine tests: skipped without an engine, FAIL under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import glob
import os
import re
import subprocess

import pytest

from caffe_cae import REPO_ROOT, paper
from caffe_cae.inspect import inspect_net
from caffe_cae.schema import parse_net

from engine_support import SCRIPTS, cli, require_engine, run_json

GEN = os.path.join(REPO_ROOT, "generated")


def rel(path):
    return os.path.relpath(path, REPO_ROOT)


MODERN_NETS = sorted(rel(p) for pattern in ("*_train_test.prototxt", "*_deploy.prototxt")
                     for p in glob.glob(os.path.join(GEN, "modern", pattern)))
MODERN_SOLVERS = sorted(rel(p) for p in glob.glob(os.path.join(GEN, "modern", "*_solver.prototxt")))
LEGACY_NETS = sorted(rel(p) for pattern in ("*_train_test.prototxt", "*_deploy.prototxt")
                     for p in glob.glob(os.path.join(GEN, "legacy", pattern)))


def test_generated_nets_exist():
    assert len(MODERN_NETS) == len(LEGACY_NETS) == 2 * len(MODERN_SOLVERS) >= 2 * 21


def net_and_dim(path):
    m = re.match(r"(\w+?)_d(\d+)_", os.path.basename(path))
    return m.group(1), int(m.group(2))


@pytest.fixture(scope="module")
def eng():
    return require_engine()


@pytest.fixture(scope="module")
def net_report(eng, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("nets"))
    argv = [eng.python, os.path.join(SCRIPTS, "net_check.py"), work, REPO_ROOT]
    for path in MODERN_NETS:
        argv += ["--net", path]
    return run_json(eng, argv, cwd=work, timeout=1800)["nets"]


@pytest.fixture(scope="module")
def solver_report(eng, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("solvers"))
    argv = [eng.python, os.path.join(SCRIPTS, "net_check.py"), work, REPO_ROOT]
    for path in MODERN_SOLVERS:
        argv += ["--solver", path]
    return run_json(eng, argv, cwd=work, timeout=3600)["solvers"]


@pytest.mark.parametrize("path", MODERN_NETS)
def test_net_instantiates_with_inspect_param_count(net_report, path):
    phases = net_report[path]
    expected_phases = {"TEST"} if path.endswith("_deploy.prototxt") else \
        {"TRAIN", "TEST/test-on-train", "TEST/test-on-test"}
    assert set(phases) == expected_phases
    want = inspect_net(os.path.join(REPO_ROOT, path))["params"]
    for key, r in phases.items():
        assert r["finite"], "%s %s: non-finite blob after forward" % (path, key)
        assert r["total"] == want, "%s %s: real Caffe counts %d parameters, caffe-cae inspect %d" % (
            path, key, r["total"], want)


@pytest.mark.parametrize("path", [p for p in MODERN_NETS if "_d2_" in p])
def test_param_count_equals_paper_at_d2(net_report, path):
    net, _ = net_and_dim(path)
    counts = next(iter(net_report[path].values()))["params"]
    table = {k: [v["weights"], v["biases"]] for k, v in paper.layer_params(net).items()}
    total = paper.load()["table1"][net]["params"]
    if net == "siamese":
        # Table 2 lists one channel; Table 1 counts both, as the train_test net has them
        # (layers conv1 ... and conv1_p ... sharing weights); the deploy net has one.
        channel = {k: v for k, v in counts.items() if not k.endswith("_p")}
        assert channel == table
        if path.endswith("_deploy.prototxt"):
            total = paper.load()["table2"]["siamese"]["channel_total"]
        else:
            assert {k[:-2]: v for k, v in counts.items() if k.endswith("_p")} == table
    else:
        assert counts == table
    assert sum(map(sum, counts.values())) == total


@pytest.mark.parametrize("path", MODERN_SOLVERS)
def test_one_sgd_step_has_finite_loss(solver_report, path):
    r = solver_report[path]
    assert r["iter"] == 1
    assert r["losses"], "%s: no loss top" % path
    assert r["finite"], "%s: losses %s" % (path, r["losses"])


def drop_reshape_fix(net):
    """The net without the Reshape layers of the fix, their consumers rewired to the input."""
    renames = {}
    kept = []
    for layer in net.layer:
        if layer.type == "Reshape":
            renames[layer.top[0]] = renames.get(layer.bottom[0], layer.bottom[0])
            continue
        for i, b in enumerate(layer.bottom):
            layer.bottom[i] = renames.get(b, b)
        kept.append(layer)
    del net.layer[:]
    for layer in kept:
        net.layer.add().CopyFrom(layer)
    return net, renames


@pytest.fixture(scope="module")
def caffe_upgrades(eng, tmp_path_factory):
    """Real Caffe's upgrade_net_proto_text of every legacy net: {path: text}."""
    work = tmp_path_factory.mktemp("upgrade")
    script = "; ".join('upgrade_net_proto_text "%s" "%s/%s" >/dev/null 2>&1 || echo "FAILED %s"'
                       % (os.path.join(REPO_ROOT, p), work, os.path.basename(p), p) for p in LEGACY_NETS)
    proc = eng.run(["sh", "-c", script], cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True, timeout=900)
    assert proc.returncode == 0 and "FAILED" not in proc.stdout, proc.stdout + proc.stderr
    return {p: (work / os.path.basename(p)).read_text() for p in LEGACY_NETS}


@pytest.mark.parametrize("path", LEGACY_NETS)
def test_real_caffe_upgrade_equals_ours_but_reshape(caffe_upgrades, path, tmp_path):
    theirs = parse_net(caffe_upgrades[path], filename="upgrade_net_proto_text(%s)" % path)
    out = tmp_path / "ours.prototxt"
    proc = cli("upgrade", os.path.join(REPO_ROOT, path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    ours, renames = drop_reshape_fix(parse_net(out.read_text(), filename=str(out)))
    net, _ = net_and_dim(path)
    if net not in ("deep_ae", "siamese"):
        assert renames, "%s: caffe-cae upgrade added no Reshape fix" % path
    assert ours == theirs, "%s: real Caffe's upgrade differs from caffe-cae upgrade beyond the Reshape fix" % path
