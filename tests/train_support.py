"""Shared fixtures of the training, extraction and bench tests: tiny MNIST data and one short
real training run of every net at D=2 (made once per test session, in the real engine).

Tiny data: 250 training and 150 test images (not multiples of the batch of 100, so the data
layers wrap inside a batch and resuming must restore their read position exactly).
"""
import io
import os

import pytest

from caffe_cae import data, specs
from caffe_cae import train as train_lib

from engine_support import require_engine

N_TRAIN, N_TEST = 250, 150
ITERS = 30
#: the schedule of the short runs: train records at 10, 20, 30; tests at 15 and 30
SCHEDULE = {"solver.display": 10, "solver.test_interval": 15, "solver.snapshot": 30}


@pytest.fixture(scope="session")
def engine():
    return require_engine()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A directory holding data/hdf5 with the tiny set (list files relative to it)."""
    root = str(tmp_path_factory.mktemp("tiny"))
    data.write_tiny(os.path.join(root, "data", "hdf5"), n=N_TRAIN, n_test=N_TEST, list_prefix="data/hdf5")
    return root


def run_train(root, out, **kwargs):
    """train() quietly with data_root=root; returns (manifest, progress text)."""
    stream = io.StringIO()
    kwargs.setdefault("handle_signals", False)
    manifest = train_lib.train(out=out, data_root=root, stream=stream, tty=False, **kwargs)
    return manifest, stream.getvalue()


@pytest.fixture(scope="session")
def trained_runs(engine, tiny_root, tmp_path_factory):
    """{net: run_dir}: every net at D=2, ITERS iterations, seed 1."""
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    runs = {}
    for net in specs.NETS:
        out = os.path.join(runs_dir, net)
        run_train(tiny_root, out, net=net, dim=2, iters=ITERS, seed=1, overrides=dict(SCHEDULE))
        runs[net] = out
    return runs
