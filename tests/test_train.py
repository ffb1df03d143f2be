"""caffe-cae train on the real engine with tiny data: every net trains with finite, falling
loss; run directory contents; resume equivalence (bitwise, and the data order matters);
NaN detection naming the first non-finite blob; SIGINT snapshot and resume; refusals
(--force, unfinished run, --mode gpu, missing data).

Engine tests: skipped without an engine, FAIL under CAFFE_CAE_REQUIRE_ENGINE=1.
"""
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from caffe_cae import REPO_ROOT, rundir, specs
from caffe_cae.caffemodel import read_caffemodel
from caffe_cae.errors import CaeError

from engine_support import cli
from train_support import ITERS, N_TEST, N_TRAIN, SCHEDULE, engine, run_train, tiny_root, trained_runs  # noqa: F401


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def manifest_of(run_dir):
    with open(os.path.join(run_dir, "manifest.json")) as f:
        return json.load(f)


def cae(*args, cwd):
    return cli(*args, cwd=cwd)


# -- every net ------------------------------------------------------------------------------

@pytest.mark.parametrize("net", specs.NETS)
def test_every_net_trains_with_finite_falling_loss(trained_runs, net):
    run = trained_runs[net]
    m = manifest_of(run)
    assert m["status"] == "finished" and m["iterations"] == ITERS == m["max_iter"]
    assert m["net"] == net and m["dim"] == 2 and m["seed"] == 1 and m["syntax"] == "modern"
    assert m["engine"]["caffe_version"] and m["engine"]["kind"] and m["mode"] == "cpu"
    assert m["settings"]["solver.max_iter"] == ITERS and m["settings"]["solver.base_lr"] == 0.006
    assert m["solver"]["random_seed"] == 1
    assert m["settings"]["data.train_size"] == N_TRAIN and m["settings"]["data.test_size"] == N_TEST
    assert m["wall_seconds"] > 0 and m["started"] and m["ended"] and m["host"]["cpus"]
    assert "commit" in m["git"]
    log = read_log(run)
    keys = {"contrastive"} if net == "siamese" else {"cross_entropy", "euclidean"}
    train = [r for r in log if r["phase"] == "train"]
    assert [r["iter"] for r in train] == [10, 20, 30]
    for stage in ("test-on-train", "test-on-test"):
        assert [r["iter"] for r in log if r["phase"] == stage] == [15, 30]
    for record in log:
        assert set(record["loss"]) == keys, record
        assert all(math.isfinite(v) for v in record["loss"].values()), record
    for key in keys:
        assert train[-1]["loss"][key] < train[0]["loss"][key], (key, train)
        test = [r["loss"][key] for r in log if r["phase"] == "test-on-train"]
        assert test[-1] < test[0] * 1.05, (key, test)
    snaps = sorted(os.listdir(os.path.join(run, "snapshots")))
    assert snaps == ["%s_d2_iter_30.caffemodel" % net, "%s_d2_iter_30.solverstate" % net]
    for name in ("train_test", "deploy", "solver"):
        assert os.path.isfile(os.path.join(run, "%s_d2_%s.prototxt" % (net, name)))
    with open(os.path.join(run, "%s_d2_solver.prototxt" % net)) as f:
        solver = f.read()
    assert "test_interval: 15" in solver and "max_iter: 30" in solver and 'net: "%s/' % run in solver
    with open(os.path.join(run, "engine_solver.prototxt")) as f:
        assert "snapshot: 0" in f.read()


# -- resume ---------------------------------------------------------------------------------

def test_resume_gives_the_uninterrupted_weights(engine, tiny_root, tmp_path):
    """Stop after 7 of 13 iterations (momentum on), resume: same weights as one run, bitwise,
    and the same log. 7 batches of 100 over 250 rows ends mid-file: the data position must be
    restored, and a resume that restarts the data gives other weights (the control)."""
    sets = {"solver.display": 5, "solver.test_interval": 4, "solver.snapshot": 10, "solver.momentum": 0.9}
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    run_train(tiny_root, whole, net="model2", dim=2, iters=13, seed=3, overrides=dict(sets))
    m, _ = run_train(tiny_root, part, net="model2", dim=2, iters=13, seed=3, overrides=dict(sets), stop_after=7)
    assert m["status"] == "interrupted" and m["iterations"] == 7
    assert os.path.isfile(os.path.join(part, "snapshots", "model2_d2_iter_7.solverstate"))
    m, _ = run_train(tiny_root, part, resume=True)
    assert m["status"] == "finished" and m["iterations"] == 13 and len(m["sessions"]) == 2
    a = read_caffemodel(os.path.join(whole, "snapshots", "model2_d2_iter_13.caffemodel"))
    b = read_caffemodel(os.path.join(part, "snapshots", "model2_d2_iter_13.caffemodel"))
    assert [name for name, _ in a] == [name for name, _ in b]
    for (name, xs), (_, ys) in zip(a, b):
        for x, y in zip(xs, ys):
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert read_log(whole) == read_log(part)

    # Control: the same resume with the data read from the start again differs.
    control = str(tmp_path / "control")
    shutil.copytree(part, control)
    _rewind(control, 7)
    m = manifest_of(control)
    snap = [s for s in m["snapshots"] if s["iter"] == 7][0]
    m["snapshots"] = [snap]
    m["status"] = "interrupted"
    rundir.write_manifest(control, m)
    wrong = str(tmp_path / "wrong-order")
    _resume_without_data_skip(tiny_root, control, wrong)
    c = read_caffemodel(os.path.join(control, "snapshots", "model2_d2_iter_13.caffemodel"))
    assert any(not np.array_equal(x, y) for (_, xs), (_, ys) in zip(a, c) for x, y in zip(xs, ys))


def _rewind(run_dir, k):
    for name in os.listdir(os.path.join(run_dir, "snapshots")):
        if not name.endswith("_iter_%d.caffemodel" % k) and not name.endswith("_iter_%d.solverstate" % k):
            os.unlink(os.path.join(run_dir, "snapshots", name))


def _resume_without_data_skip(root, run_dir, scratch):
    """Resume run_dir with a data list whose file starts where the train layer would be after
    a fresh start: the worker skips k % period batches of a set rotated back by that much,
    i.e. it reads the batches of a run whose data restarted at the resume."""
    import h5py
    m = manifest_of(run_dir)
    rows = m["data"]["train"]["rows"]
    offset = (7 * 100) % rows
    os.makedirs(os.path.join(scratch, "data", "hdf5"))
    for name in ("test.h5", "test.txt"):
        shutil.copy(os.path.join(root, "data", "hdf5", name), os.path.join(scratch, "data", "hdf5", name))
    with h5py.File(os.path.join(root, "data", "hdf5", "train.h5"), "r") as src, \
            h5py.File(os.path.join(scratch, "data", "hdf5", "train.h5"), "w") as dst:
        for key in ("data", "label"):
            dst.create_dataset(key, data=np.roll(src[key][:], offset, axis=0))
    with open(os.path.join(scratch, "data", "hdf5", "train.txt"), "w") as f:
        f.write("data/hdf5/train.h5\n")
    m["data_root"] = scratch
    rundir.write_manifest(run_dir, m)
    manifest, _ = run_train(scratch, run_dir, resume=True)
    assert manifest["status"] == "finished"


# -- non-finite loss ------------------------------------------------------------------------

def test_nonfinite_loss_stops_naming_iteration_and_blob(engine, tiny_root, tmp_path):
    """The paper's ReLU failure (Section 5.2), provoked by a large learning rate."""
    out = str(tmp_path / "relu")
    proc = cae("train", "--net", "model2", "--dim", "2", "--iters", "40", "--out", out,
               "--set", "net.activation=relu", "--set", "solver.base_lr=10", "--set", "solver.display=1",
               cwd=tiny_root)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("caffe-cae: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "non-finite loss at iteration" in lines[0] and "first non-finite blob '" in lines[0]
    m = manifest_of(out)
    assert m["status"] == "failed" and m["failure"]["iter"] < 40
    first = m["failure"]["first"]
    assert first["layer"] in lines[0] and first["blob"]
    assert m["iterations"] == m["failure"]["iter"] - 1
    for record in read_log(out):  # the log holds only finite records, up to the failure
        assert record["iter"] < m["failure"]["iter"]
        assert all(math.isfinite(v) for v in record["loss"].values())


# -- SIGINT -----------------------------------------------------------------------------------

def test_sigint_snapshots_and_resume_finishes(engine, tiny_root, tmp_path):
    out = str(tmp_path / "sigint")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    cmd = [sys.executable, "-m", "caffe_cae", "train", "--net", "model1", "--dim", "2", "--iters", "80",
           "--out", out, "--set", "solver.display=1", "--set", "solver.test_interval=40",
           "--set", "solver.snapshot=40"]
    proc = subprocess.Popen(cmd, cwd=tiny_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    log = os.path.join(out, "log.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at iteration" in err
    m = manifest_of(out)
    k = m["iterations"]
    assert m["status"] == "interrupted" and m["interrupted_by"] == "SIGINT" and 3 <= k < 80
    assert m["snapshots"][-1]["iter"] == k
    for ext in ("caffemodel", "solverstate"):
        assert os.path.isfile(os.path.join(out, "snapshots", "model1_d2_iter_%d.%s" % (k, ext)))

    refused = cae("train", "--net", "model1", "--dim", "2", "--iters", "80", "--out", out, cwd=tiny_root)
    assert refused.returncode == 2 and "--resume" in refused.stderr and len(refused.stderr.splitlines()) == 1

    done = cae("train", "--out", out, "--resume", cwd=tiny_root)
    assert done.returncode == 0, done.stderr
    m = manifest_of(out)
    assert m["status"] == "finished" and m["iterations"] == 80 and len(m["sessions"]) == 2
    train = [r["iter"] for r in read_log(out) if r["phase"] == "train"]
    assert train == list(range(1, 81))


# -- refusals -------------------------------------------------------------------------------

def test_finished_run_not_overwritten_without_force(trained_runs, tiny_root, tmp_path):
    run = str(tmp_path / "copy")
    shutil.copytree(trained_runs["model1"], run)
    before = manifest_of(run)
    proc = cae("train", "--net", "model1", "--dim", "2", "--iters", "4", "--out", run, cwd=tiny_root)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "finished run" in proc.stderr and "--force" in proc.stderr
    assert manifest_of(run) == before
    again = cae("train", "--out", run, "--resume", cwd=tiny_root)  # nothing to do
    assert again.returncode == 0 and manifest_of(run) == before
    forced = cae("train", "--net", "model1", "--dim", "2", "--iters", "4", "--out", run, "--force",
                 "--set", "solver.display=2", cwd=tiny_root)
    assert forced.returncode == 0, forced.stderr
    m = manifest_of(run)
    assert m["iterations"] == m["max_iter"] == 4 and m["status"] == "finished" and len(m["sessions"]) == 1
    assert sorted(os.listdir(os.path.join(run, "snapshots"))) == ["model1_d2_iter_4.caffemodel",
                                                                  "model1_d2_iter_4.solverstate"]


def test_resume_refuses_other_settings(trained_runs, tiny_root):
    run = trained_runs["model4"]
    proc = cae("train", "--out", run, "--resume", "--iters", "99", cwd=tiny_root)
    assert proc.returncode == 2 and "--iters 99" in proc.stderr and proc.stderr.count("\n") == 1


def test_mode_gpu_without_gpu_is_one_line_exit_2(engine, tiny_root, tmp_path):
    if engine.status().get("mode") == "gpu":
        pytest.skip("this engine has a GPU")
    out = str(tmp_path / "gpu")
    proc = cae("train", "--net", "model2", "--dim", "2", "--mode", "gpu", "--iters", "5", "--out", out,
               cwd=tiny_root)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--mode gpu" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(out)


def test_missing_data_is_one_line_exit_2(tmp_path):
    proc = cae("train", "--net", "model2", "--dim", "2", "--out", str(tmp_path / "run"), cwd=str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "data/hdf5/train.txt" in proc.stderr and "caffe-cae data" in proc.stderr


def test_not_a_run_directory_is_refused(tiny_root, tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(CaeError, match="not empty and not a run directory"):
        run_train(tiny_root, str(tmp_path), net="model2", dim=2)


def test_bad_settings_are_one_line(tiny_root, tmp_path):
    proc = cae("train", "--net", "model2", "--dim", "2", "--set", "solver.base_lr=fast", "--out",
               str(tmp_path / "r"), cwd=tiny_root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "solver.base_lr" in proc.stderr


# -- progress display (no engine) -----------------------------------------------------------

def test_progress_bar_on_a_terminal_and_plain_lines_otherwise():
    from caffe_cae.progress import Progress

    tty = io.StringIO()
    bar = Progress("model3 d30", 1000, tty, tty=True, mininterval=0)
    bar.update(10, {"cross_entropy": 80.5, "euclidean": 9.25}, t=100.0)
    bar.update(30, {"cross_entropy": 70.0, "euclidean": 8.0}, t=102.0)
    bar.status("testing: test-on-test (100 batches)")
    bar.record({"iter": 30, "phase": "test-on-test", "loss": {"cross_entropy": 60.0}})
    bar.close()
    text = tty.getvalue()
    assert "\r" in text and "30/1000" in text and "ETA" in text and "it/s" in text
    assert "cr=70" in text and "eu=8" in text and "testing: test-on-test" in text
    assert "test-on-test iter 30 cross_entropy=60\n" in text
    plain = io.StringIO()
    bar = Progress("model3 d30", 1000, plain, tty=False)
    bar.update(10, {"cross_entropy": 1.0}, t=1.0)
    assert plain.getvalue() == ""
    bar.record({"iter": 100, "phase": "train", "loss": {"cross_entropy": 1.5}})
    assert plain.getvalue() == "model3 d30 iter 100/1000 train cross_entropy=1.5\n"
