"""tools/gpu_check.sh, the check prepared for a lent GPU machine, run here on the CPU, small.

``prepare`` has the real Caffe compute the references of one net (Model 4, D = 2, 20 SGD
iterations); the check then runs every step with tiny sizes (``--device cpu --tiny``) and its
JSON is checked: the equality step passes against the engine's references, and fails, naming
the array, once a reference is perturbed. Needs the engine and PyTorch (engine_support's rule).
"""
import gzip
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from caffe_cae import REPO_ROOT, caffemodel

from engine_support import require_engine, require_torch

NET = "model4"
ITERS = 20
STEPS = ["facts", "data", "equality", "bench", "throughput", "long"]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    require_torch()
    require_engine()
    out = tmp_path_factory.mktemp("gpucheck")
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "prepare", "--nets", NET, "--iters", str(ITERS),
                           "--out", str(out), "--no-wheel"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return str(out / "refs")


def run_check(refs, out, work, *args):
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "tools", "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--refs", refs, "--work", str(work)] + list(args), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    with open(os.path.join(str(out), "gpu_check.json")) as f:
        return json.load(f)["steps"]


def test_prepare_keeps_the_references_compact(refs, tmp_path):
    with open(os.path.join(refs, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["keys"] == [NET] and manifest["iters"] == ITERS
    with h5py.File(os.path.join(refs, "snap", NET, "caffe_fwd.h5"), "r") as f:
        assert f["blobs/conv1"].size < 100 * 26 * 24 * 24 / 10  # sampled
        assert f["blobs/ip2encode"].shape == (100, 2)  # small arrays whole
    path = str(tmp_path / "init.caffemodel")
    with gzip.open(os.path.join(refs, "snap", NET, "init.caffemodel.gz")) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert dict(caffemodel.read_caffemodel(path))["conv1"][0].shape == (26, 1, 5, 5)  # the initial weights whole


def test_check_on_cpu(refs, tmp_path):
    out = tmp_path / "out"
    steps = run_check(refs, out, tmp_path / "work")
    assert {s: steps[s]["status"] for s in STEPS} == {s: "ok" for s in STEPS}, \
        {s: steps[s].get("error") for s in STEPS}
    eq = steps["equality"]["result"]
    assert eq["passed"] is True and eq["iters"] == ITERS and "tf32_off" not in eq
    fwd, sgd = eq["default"][NET]["forward"], eq["default"][NET]["sgd"]
    assert fwd["failed"] == {} and 0 < fwd["worst"] <= 1e-5 and fwd["arrays"] > 30
    assert sgd["failed"] == [] and sgd["iters"] == ITERS and 0 < sgd["weights"] <= 1e-4
    assert steps["bench"]["result"][NET]["ms"] > 0
    tp = steps["throughput"]["result"]["K2_J2"]  # 2 runs batched, in 2 processes at once
    assert [e["exit"] for e in tp["each"]] == [0, 0] and [e["iterations"] for e in tp["each"]] == [6, 6], tp
    assert tp["run_iters_per_s"] > 0 and tp["grid_with_starts_and_tests_h"] > tp["grid_train_only_h"] > 0, tp
    long = steps["long"]["result"]
    assert long["status"] == "finished" and long["iterations"] == 8, long
    assert set(long["losses"]) == {"train", "test-on-train", "test-on-test"} and long["paper"]["test"]["euclidean"]
    back = sorted(os.listdir(str(out)))
    assert back == ["bench.json", "gpu_check.json", "log", "long_log.jsonl", "long_manifest.json"]


def test_check_fails_on_a_perturbed_reference(refs, tmp_path):
    """A forward blob 1e-4 off and final weights 1e-3 off: the equality step fails, naming them."""
    bad = str(tmp_path / "refs")
    shutil.copytree(refs, bad)
    with h5py.File(os.path.join(bad, "snap", NET, "caffe_fwd.h5"), "r+") as f:
        f["blobs/conv1"][...] = f["blobs/conv1"][()] * np.float32(1 + 1e-4)
    final = os.path.join(bad, "snap", NET, "caffe_final.caffemodel")
    layers = [(name, [a * np.float32(1 + 1e-3) if name == "ip1encode" else a for a in arrays])
              for name, arrays in caffemodel.read_caffemodel(final)]
    caffemodel.write_caffemodel(final, NET, layers)
    eq = run_check(bad, tmp_path / "out", tmp_path / "work", "--steps", "equality")["equality"]
    assert eq["status"] == "ok" and eq["result"]["passed"] is False
    res = eq["result"]["default"][NET]
    assert list(res["forward"]["failed"]) == ["blob conv1"], res["forward"]["failed"]
    assert res["sgd"]["worst_weights"].startswith("ip1encode/") and res["sgd"]["failed"] == [
        "weights %.2e > 0.0001" % res["sgd"]["weights"]], res["sgd"]
