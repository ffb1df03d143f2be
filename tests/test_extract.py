"""caffe-cae extract on the real engine: codes.h5 shapes and attrs for every net, losses that
follow Caffe's definitions (checked in numpy from the reconstructions), the blobs_digit5.h5
layout (forward steps, in-place steps apart, params, input), the train split, refusals.

Engine tests: skipped without an engine, FAIL under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import math
import os
import re

import h5py
import numpy as np
import pytest

from caffe_cae import extract as extract_lib
from caffe_cae import specs
from caffe_cae.caffemodel import read_caffemodel

from engine_support import cli
from train_support import ITERS, N_TEST, N_TRAIN, engine, tiny_root, trained_runs  # noqa: F401


@pytest.fixture(scope="module")
def extracted(trained_runs):
    return {net: extract_lib.extract(run, "test", stream=open(os.devnull, "w")) for net, run in trained_runs.items()}


@pytest.mark.parametrize("net", specs.NETS)
def test_codes_shapes_and_attrs(trained_runs, extracted, net):
    run = trained_runs[net]
    assert extracted[net]["codes"] == os.path.join(run, "codes.h5")
    with h5py.File(os.path.join(run, "codes.h5"), "r") as f:
        assert f["code"].shape == (N_TEST, 2) and f["code"].dtype == np.float32
        assert f["label"].shape == (N_TEST,)
        with _test_h5(trained_runs) as t:
            np.testing.assert_array_equal(f["label"][:], t["label"][:])
        assert np.isfinite(f["code"][:]).all() and np.std(f["code"][:], axis=0).min() > 0
        if net == "siamese":
            assert "reconstruction" not in f
            assert math.isfinite(f.attrs["loss_contrastive"])
        else:
            rec = f["reconstruction"][:]
            assert rec.shape == (N_TEST, 28, 28) and rec.dtype == np.float32
            assert 0 <= rec.min() and rec.max() <= 1
            assert math.isfinite(f.attrs["loss_cross_entropy"]) and math.isfinite(f.attrs["loss_euclidean"])
        assert f.attrs["net"] == net and f.attrs["dim"] == 2 and f.attrs["split"] == "test"
        assert f.attrs["iteration"] == ITERS and f.attrs["run_status"] == "finished"
        assert f.attrs["stage"] == "test-on-test"
        assert f.attrs["backend"] == "caffe" and f.attrs["extract_backend"] == "caffe"


def _test_h5(trained_runs):
    import json
    with open(os.path.join(trained_runs["model1"], "manifest.json")) as f:
        return h5py.File(json.load(f)["data"]["test"]["images"], "r")


def _stage_rows(n, batch=100):
    """Rows of a TEST stage of ceil(n / batch) batches, wrapping as HDF5Data does."""
    iters = math.ceil(n / batch)
    return [np.arange(i * batch, (i + 1) * batch) % n for i in range(iters)]


@pytest.mark.parametrize("net", ["model2", "model3", "deep_ae"])
def test_losses_follow_caffe_definitions(trained_runs, extracted, net):
    """Euclidean = sum((r - x)^2) / batch / 2 and cross-entropy = sum of the logistic loss /
    batch (BATCH_SIZE normalisation), each averaged over the stage's batches."""
    with h5py.File(os.path.join(trained_runs[net], "codes.h5"), "r") as f, _test_h5(trained_runs) as t:
        rec = f["reconstruction"][:].astype(np.float64)
        x = t["data"][:, 0].astype(np.float64)
        eu = [((rec[rows] - x[rows]) ** 2).sum() / len(rows) / 2 for rows in _stage_rows(N_TEST)]
        r = np.clip(rec, 1e-7, 1 - 1e-7)
        ce_rows = -(x * np.log(r) + (1 - x) * np.log(1 - r))
        ce = [ce_rows[rows].sum() / len(rows) for rows in _stage_rows(N_TEST)]
        assert f.attrs["loss_euclidean"] == pytest.approx(np.mean(eu), rel=1e-4)
        assert f.attrs["loss_cross_entropy"] == pytest.approx(np.mean(ce), rel=2e-3)


@pytest.mark.parametrize("net", ["model3", "siamese", "deep_ae"])
def test_blobs_digit5_layout(trained_runs, extracted, net):
    run = trained_runs[net]
    path = os.path.join(run, "blobs_digit5.h5")
    with h5py.File(path, "r") as f, _test_h5(trained_runs) as t, h5py.File(os.path.join(run, "codes.h5"), "r") as c:
        index = int(f.attrs["index"])
        assert f.attrs["label"] == 5 and t["label"][index] == 5 and (t["label"][:index] != 5).all()
        assert f["input"].shape == (1, 1, 28, 28)
        np.testing.assert_array_equal(f["input"][:], t["data"][index:index + 1])
        names = sorted(f["blobs"])
        for step, name in enumerate(names):
            m = re.match(r"^(\d\d)_(\w+)$", name)
            assert m and int(m.group(1)) == step and f["blobs"][name].attrs["layer"] == m.group(2)
            ds = f["blobs"][name]
            assert ds.shape[0] == 1 and {"blob", "layer", "layer_type"} <= set(ds.attrs)
        first = f["blobs"][names[0]]
        assert first.attrs["layer_type"] == "Input" and first.attrs["blob"] == "data"
        steps = [(f["blobs"][n].attrs["layer"], f["blobs"][n].attrs["blob"]) for n in names]
        code = [f["blobs"][n][:] for n in names if f["blobs"][n].attrs["blob"] == specs.code_blob(net)][-1]
        np.testing.assert_allclose(code.reshape(-1), c["code"][index], rtol=1e-5, atol=1e-6)
        if net == "model3":
            assert steps[1:5] == [("conv1", "conv1"), ("sig1en", "conv1"), ("pool1", "pool1"),
                                  ("pool1", "pool1_mask")]
            assert f["blobs/01_conv1"].shape == (1, 26, 24, 24)
            assert f["blobs/02_sig1en"][:].min() >= 0 and f["blobs/01_conv1"][:].min() < 0
            assert steps[-1] == ("deconv1neursig", "deconv1neursig")
            np.testing.assert_allclose(f["blobs"][names[-1]][0, 0], c["reconstruction"][index], rtol=1e-5, atol=1e-6)
        if net == "siamese":
            assert steps[-1] == ("ip2encode", "ip2encode")
        weights = dict(read_caffemodel(os.path.join(run, "snapshots", "%s_d2_iter_%d.caffemodel" % (net, ITERS))))
        assert sorted(f["params"]) == sorted(name for name in weights if name in f["params"])
        for layer in f["params"]:
            assert sorted(f["params"][layer]) == ["0", "1"]
            np.testing.assert_array_equal(f["params"][layer]["0"][:], weights[layer][0])
            np.testing.assert_array_equal(f["params"][layer]["1"][:], weights[layer][1])


def test_train_split(trained_runs, engine):
    run = trained_runs["model2"]
    proc = cli("extract", run, "--split", "train", "--no-blobs")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(os.path.join(run, "codes_train.h5"), "r") as f:
        assert f["code"].shape == (N_TRAIN, 2) and f["reconstruction"].shape == (N_TRAIN, 28, 28)
        assert f.attrs["split"] == "train" and f.attrs["stage"] == "test-on-train"


def test_not_a_run_is_one_line_exit_2(tmp_path):
    proc = cli("extract", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "manifest.json" in proc.stderr
    proc = cli("extract", str(tmp_path / "missing"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def _killed_writer(path):
    """A process writing ``path`` through caffe_cae.files (as both workers do), SIGKILLed while
    its temporary file exists: what a killed extraction leaves behind. Returns the leftover."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import time; from caffe_cae import files\n"
            "files.write_h5(%r, lambda f: time.sleep(120))\n" % path)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=os.path.dirname(path))
    folder = os.path.dirname(path)
    deadline = time.time() + 60
    leftover = []
    while not leftover and time.time() < deadline:
        time.sleep(0.1)
        leftover = [n for n in os.listdir(folder) if n.startswith(".tmp-") and n.endswith(os.path.basename(path))]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert leftover, "the writer made no temporary file"
    return leftover


@pytest.mark.parametrize("backend", ["caffe", "torch"])
def test_a_killed_extraction_leaves_no_files(trained_runs, tmp_path, backend):
    """The host removes the temporary files the workers really write (caffe_cae.files' names)
    when an extraction fails or is stopped: here after a killed writer, a failing extraction."""
    if backend == "torch":
        from engine_support import require_torch
        require_torch()
    import shutil
    run = str(tmp_path / "run")
    shutil.copytree(trained_runs["model1"], run)
    for name in ("codes.h5", "blobs_digit5.h5"):
        if os.path.exists(os.path.join(run, name)):
            os.unlink(os.path.join(run, name))
    for name in ("codes.h5", "blobs_digit5.h5"):
        assert os.path.exists(os.path.join(run, _killed_writer(os.path.join(run, name))[0]))
    snapshot = os.path.join(run, "snapshots", "model1_d2_iter_%d.caffemodel" % ITERS)
    with open(snapshot, "wb") as f:
        f.write(b"not a caffemodel")
    proc = cli("extract", run, "--backend", backend)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")], os.listdir(run)
    assert not os.path.exists(os.path.join(run, "codes.h5")) and not os.path.exists(os.path.join(run, "blobs_digit5.h5"))
