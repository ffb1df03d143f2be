"""Caffe's standard data layers in the engine: BVLC's LeNet trained by the `caffe train`
tool on a small LMDB that Caffe's own convert_mnist_data made from our MNIST, and the same Data layer
reading a LevelDB. Fails in CI without the engine (engine_support)."""
import math
import os

import pytest

from caffe_cae import REPO_ROOT

from engine_support import SCRIPTS, require_engine, run_json

MNIST = os.path.join(REPO_ROOT, "data", "mnist")


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    eng = require_engine()
    work = str(tmp_path_factory.mktemp("lenet"))
    return run_json(eng, [eng.python, os.path.join(SCRIPTS, "lenet_lmdb.py"), work, MNIST], cwd=work)


def test_lenet_trains_on_lmdb(lenet):
    iters = [i for i, _ in lenet["train"]]
    assert iters[0] == 0 and iters[-1] == 200
    first, last = lenet["train"][0][1], lenet["train"][-1][1]
    assert abs(first - math.log(10)) < 0.3  # ten classes at chance
    assert last < 0.5 * first
    assert lenet["accuracy"] and lenet["accuracy"][-1] > 0.8  # 500 test digits after 200 iterations
    assert lenet["snapshot"]


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_data_layer_reads_the_database(lenet, backend):
    seen = lenet["data"][backend]
    assert seen["shape"] == [64, 1, 28, 28]
    assert seen["min"] == 0.0 and 0.99 < seen["max"] <= 255 / 256.0  # transform_param's scale applied
    assert len(seen["labels"]) > 5


def test_both_backends_hold_the_same_images(lenet):
    assert lenet["data"]["lmdb"]["first"] == lenet["data"]["leveldb"]["first"]
