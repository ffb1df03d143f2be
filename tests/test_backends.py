"""Conformance: every backend, driven through the interface alone (scikit-learn's common tests).

Each ``check_*`` runs on every backend of :data:`caffe_cae.backends.BACKENDS` - the real Caffe
engine and real PyTorch - on tiny data (250 training, 150 test images): the interface and
declared capabilities, ``info``, a training Session (events in order, log records on the
schedule, snapshots on disk), ``Session.stop`` (interrupted with a snapshot), ``Session.kill``
(a CaeError naming the backend), extraction, the benchmark and, where declared, batched
training. Then both backends extract the same snapshot and must write identical files: the
same datasets (names, shapes, dtypes), the same attributes and values (but
``extract_backend``), and codes equal to float32 rounding.

Engine tests: skipped without an engine or PyTorch, FAIL where parts are required (conftest).
"""
import math
import os

import h5py
import numpy as np
import pytest

from caffe_cae import render, specs
from caffe_cae.backends import BACKENDS, CAPABILITIES, Backend, Session, get_backend
from caffe_cae.data import write_tiny
from caffe_cae.errors import CaeError
from caffe_cae.rundir import engine_solver_text, snapshot_prefix

from engine_support import require_engine, require_torch

NET, DIM = "model1", 2
N_TRAIN, N_TEST, BATCH = 250, 150, 100
#: what each capability obliges a backend to implement
CAPABILITY_METHODS = {"batch": "train_batch", "visibility": "check_visible"}


def make_backend(name):
    if name == "caffe":
        return get_backend("caffe", engine=require_engine())
    require_torch()
    return get_backend("torch")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("conformance"))
    write_tiny(os.path.join(path, "data", "hdf5"), n=N_TRAIN, n_test=N_TEST, list_prefix="data/hdf5")
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return make_backend(request.param)


def train_job(root, name, iters=6, seed=1, settings=None, **extra):
    """A training job as train.py writes one: rendered net, engine solver, the schedule."""
    folder = os.path.join(root, name)
    overrides = dict({"solver.max_iter": iters, "solver.random_seed": seed, "data.train_size": N_TRAIN,
                      "data.test_size": N_TEST}, **(settings or {}))
    paths = render.write_files(NET, DIM, folder, "modern", overrides, net_dir=folder,
                               snapshot_prefix=snapshot_prefix(folder, NET, DIM))
    os.makedirs(os.path.join(folder, "snapshots"), exist_ok=True)
    with open(paths["solver"], encoding="utf-8") as f:
        solver = os.path.join(folder, "engine_solver.prototxt")
        with open(solver, "w", encoding="utf-8") as out:
            out.write(engine_solver_text(f.read(), folder, NET, DIM))
    period = N_TRAIN // math.gcd(N_TRAIN, BATCH)
    stages = [{"name": "test-on-train", "iter": math.ceil(N_TRAIN / BATCH), "period": period},
              {"name": "test-on-test", "iter": math.ceil(N_TEST / BATCH), "period": 3}]
    job = {"solver": solver, "mode": "cpu", "max_iter": iters, "display": 2, "test_interval": 3, "snapshot": 3,
           "snapshot_prefix": snapshot_prefix(folder, NET, DIM), "test_stages": stages, "train_period": period,
           "resume": None, "stop_after": None, "stderr_log": os.path.join(folder, "engine.log")}
    job.update(extra)
    return job


def events_of(session):
    assert isinstance(session, Session)
    return list(session.events())


# -- the checks, each run on every backend ------------------------------------------------

def check_interface(be):
    assert isinstance(be, Backend) and be.name in BACKENDS and be.label
    assert isinstance(be.capabilities, frozenset) and be.capabilities <= CAPABILITIES
    for capability, method in CAPABILITY_METHODS.items():
        implemented = getattr(type(be), method) is not getattr(Backend, method)
        assert implemented == (capability in be.capabilities), (be.name, capability)
    for method in ("info", "_start"):
        assert getattr(type(be), method) is not getattr(Backend, method), method


def check_info(be):
    info = be.info("cpu")
    assert info["backend"] == be.name and info["mode"] == "cpu"
    assert {"engine", "location", "caffe_version", "unpooling", "python", "recipe"} <= set(info)


def check_train(be, root):
    job = train_job(root, "train-" + be.name)
    events = events_of(be.train(job, root))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "finished", events[-1]
    logs = [(e["iter"], e["phase"]) for e in events if e["event"] == "log"]
    assert logs == [(2, "train"), (3, "test-on-train"), (3, "test-on-test"), (4, "train"), (6, "train"),
                    (6, "test-on-train"), (6, "test-on-test")]
    snaps = [e for e in events if e["event"] == "snapshot"]
    assert [e["iter"] for e in snaps] == [3, 6]
    for e in snaps:
        assert os.path.isfile(e["caffemodel"]) and os.path.isfile(e["solverstate"])
    assert all(set(e["loss"]) == {"cross_entropy", "euclidean"} for e in events if e["event"] == "log")
    return snaps[-1]["caffemodel"]


def check_zero_weight_loss(be, root):
    """A loss with ``loss_weight: 0`` (Caffe's mnist_autoencoder's Euclidean loss, the
    ``euclidean0`` variant) is computed and reported as Caffe shows it, though not trained on:
    in the train and test records, and in batched training."""
    job = train_job(root, "zero-" + be.name, iters=3, settings={"loss.euclidean_weight": 0})
    events = events_of(be.train(job, root))
    assert events[-1]["status"] == "finished", events[-1]
    logs = [e for e in events if e["event"] == "log"]
    assert logs and all(set(e["loss"]) == {"cross_entropy", "euclidean"} for e in logs), logs
    weights = [e for e in events if e["event"] == "snapshot"][-1]["caffemodel"]
    extracted = events_of(be.extract(extract_job(root, weights, os.path.join(root, "zero-extract-" + be.name)), root))
    assert set([e for e in extracted if e["event"] == "result"][0]["losses"]) == {"cross_entropy", "euclidean"}
    if "batch" in be.capabilities:
        jobs = [train_job(root, "zero-batch-%s-%d" % (be.name, s), iters=3, seed=s,
                          settings={"loss.euclidean_weight": 0}) for s in (1, 2)]
        events = events_of(be.train_batch({"mode": "cpu", "runs": jobs, "stderr_log": jobs[0]["stderr_log"]}, root))
        logs = [e for e in events if e["event"] == "log"]
        assert len({e["run"] for e in logs}) == 2
        assert all(set(e["loss"]) == {"cross_entropy", "euclidean"} for e in logs), logs


def check_stop(be, root):
    session = be.train(train_job(root, "stop-" + be.name, iters=100000), root)
    events = []
    for event in session.events():
        events.append(event)
        if event["event"] == "progress":
            session.stop()
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "interrupted" and end["iter"] < 100000, end
    assert any(e["event"] == "snapshot" and e["iter"] == end["iter"] for e in events)


def check_kill(be, root):
    session = be.train(train_job(root, "kill-" + be.name, iters=100000), root)
    with pytest.raises(CaeError) as info:
        for event in session.events():
            if event["event"] == "start":
                session.kill()
    assert str(info.value).startswith(be.label + "'s worker ended without finishing"), str(info.value)


def extract_job(root, weights, folder):
    data = os.path.join(root, "data", "hdf5")
    os.makedirs(folder, exist_ok=True)
    net_dir = os.path.dirname(os.path.dirname(weights))
    return {"mode": "cpu", "deploy": os.path.join(net_dir, render.file_name(NET, DIM, "deploy")),
            "train_test": os.path.join(net_dir, render.file_name(NET, DIM, "train_test")), "weights": weights,
            "data_h5": os.path.join(data, "test.h5"), "code_blob": specs.code_blob(NET), "recon_blob": specs.reconstruction_blob(NET),
            "stage": "test-on-test", "stage_iter": 2, "codes_out": os.path.join(folder, "codes.h5"),
            "blobs_out": os.path.join(folder, "blobs_digit5.h5"), "digit_h5": os.path.join(data, "test.h5"),
            "digit": 5, "attrs": {"net": NET, "dim": DIM, "split": "test", "stage": "test-on-test"},
            "stderr_log": os.path.join(folder, "engine.log")}


def check_extract(be, root, weights):
    job = extract_job(root, weights, os.path.join(root, "extract-" + be.name))
    job["attrs"]["extract_backend"] = be.name
    events = events_of(be.extract(job, root))
    result = [e for e in events if e["event"] == "result"][0]
    assert events[-1]["status"] == "finished" and result["n"] == N_TEST and result["dim"] == DIM
    assert set(result["losses"]) == {"cross_entropy", "euclidean"}
    return job


def check_bench(be, root):
    job = train_job(root, "bench-" + be.name)
    job = {"mode": "cpu", "nets": [{"name": NET, "solver": job["solver"]}], "warmup": 1, "repeats": 2, "iters": 1,
           "stderr_log": job["stderr_log"]}
    events = events_of(be.bench(job, root))
    results = [e for e in events if e["event"] == "result"]
    assert [r["net"] for r in results] == [NET] and results[0]["ms"] > 0 and len(results[0]["ms_all"]) == 2
    assert events[-1]["event"] == "end" and events[-1]["status"] == "finished"


def check_batch(be, root):
    if "batch" not in be.capabilities:
        return
    jobs = [train_job(root, "batch-%s-%d" % (be.name, seed), seed=seed) for seed in (1, 2)]
    events = events_of(be.train_batch({"mode": "cpu", "runs": jobs, "stderr_log": jobs[0]["stderr_log"]}, root))
    assert events[-1] == {"event": "batch_end", "status": "finished"}
    ends = [e for e in events if e["event"] == "end"]
    assert sorted(e["run"] for e in ends) == [0, 1] and all(e["status"] == "finished" for e in ends)


def test_backend_conforms(backend, root):
    check_interface(backend)
    check_info(backend)
    weights = check_train(backend, root)
    check_stop(backend, root)
    check_kill(backend, root)
    check_extract(backend, root, weights)
    check_bench(backend, root)
    check_batch(backend, root)
    check_zero_weight_loss(backend, root)


def test_get_backend_passes_its_options():
    require_torch()
    import sys
    assert get_backend("torch", python=sys.executable).python == sys.executable
    with pytest.raises(TypeError):
        get_backend("torch", engine=None)
    with pytest.raises(CaeError, match="--backend nope: expected one of caffe, torch"):
        get_backend("nope")


# -- both backends write the same files ---------------------------------------------------

def _contents(path):
    """{name: (kind, shape, dtype, attrs)} of every group and dataset, the file's attrs, arrays."""
    items, arrays = {}, {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                items[name] = ("dataset", obj.shape, str(obj.dtype), attrs)
                arrays[name] = obj[()]
            else:
                items[name] = ("group", None, None, attrs)
        f.visititems(visit)
        top = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items() if k != "extract_backend"}
    return items, top, arrays


def test_both_backends_write_identical_files(root):
    caffe, torch_be = make_backend("caffe"), make_backend("torch")
    weights = check_train(caffe, root)
    jobs = {be.name: check_extract(be, root, weights) for be in (caffe, torch_be)}
    for key in ("codes_out", "blobs_out"):
        a_items, a_attrs, a_arrays = _contents(jobs["caffe"][key])
        b_items, b_attrs, b_arrays = _contents(jobs["torch"][key])
        assert a_items == b_items, key
        assert set(a_attrs) == set(b_attrs), key
        for name, value in a_attrs.items():
            if isinstance(value, float):
                assert math.isclose(value, b_attrs[name], rel_tol=1e-5), (key, name, value, b_attrs[name])
            else:
                assert value == b_attrs[name], (key, name)
        for name, value in a_arrays.items():
            np.testing.assert_allclose(b_arrays[name], value, rtol=1e-4, atol=1e-5, err_msg="%s %s" % (key, name))
