"""``--batch-runs K`` (caffe_cae/backends/torch_batch.py): K runs of one net as one wide net.

(a) the wide net's per-run losses and parameter gradients equal those of K single TorchNets
with the same weights (model4, deep_ae, model3 with switches, siamese at D=2); (b) 20 batched
SGD iterations end where single torch runs with the same seeds end; (c) a tiny
``caffe-cae grid --backend torch --batch-runs 2`` gives two complete run directories whose
snapshots load in single-run torch; (d) the refusals are one line.
Real torch, real files (tiny MNIST HDF5), no engine needed.

(a) is checked for the default per-run convolutions (oneDNN, as the workers) and for the
``grouped`` variant on the im2col + GEMM kernels, where a grouped convolution rounds like K
single ones; oneDNN's grouped kernels round differently (~1e-6 in conv outputs), which now and
then flips a MAX-pooling tie and moves one gradient by ~1e-4 (model3, model4), the same spread
as single runs with oneDNN against im2col.
"""
import json
import signal
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from engine_support import require_torch  # noqa: E402

torch = require_torch()

from caffe_cae import REPO_ROOT, caffemodel, grid  # noqa: E402
from caffe_cae.backends.torch_batch import BatchSolver  # noqa: E402
from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.data import write_tiny  # noqa: E402
from caffe_cae.errors import CaeError  # noqa: E402
from caffe_cae.schema import parse_net, parse_solver  # noqa: E402

SEEDS = (1, 2)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    torch.set_num_threads(2)
    root = str(tmp_path_factory.mktemp("batch"))
    write_tiny(os.path.join(root, "data", "hdf5"), n=250, n_test=120, list_prefix="data/hdf5")
    return root


def solver(net, **changes):
    gen = os.path.join(REPO_ROOT, "generated", "modern")
    sp = parse_solver(os.path.join(gen, "%s_d2_solver.prototxt" % net))
    sp.net_param.CopyFrom(parse_net(os.path.join(gen, "%s_d2_train_test.prototxt" % net)))
    sp.ClearField("net")
    for field, value in changes.items():
        setattr(sp, field, value)
    return sp


@pytest.mark.parametrize("kernels", ["per-run", "grouped"])
@pytest.mark.parametrize("net", ["model4", "deep_ae", "model3", "siamese"])
def test_wide_net_equals_single_nets(work, net, kernels):
    sp = solver(net)
    onednn = kernels == "per-run"  # the grouped kernels on im2col (see the module docstring)
    batch = BatchSolver(sp, SEEDS, cwd=work, test_nets=False, onednn=onednn, grouped=kernels == "grouped")
    singles = [TorchSolver(sp, cwd=work, seed=s, test_nets=False, onednn=onednn) for s in SEEDS]
    for k, single in enumerate(singles):  # the stacked start is each seed's own start
        for (name, a), (_, b) in zip(batch.net.get_weights(k), single.net.get_weights()):
            for x, y in zip(a, b):
                assert np.array_equal(x, y), name
    for _ in range(2):  # the second batch wraps around the 250 rows
        batch.net.zero_grad()
        blobs, losses, total = batch.net.forward()
        total.backward()
        for k, single in enumerate(singles):
            single.net.zero_grad()
            sblobs, _ = single.net.forward_backward()
            for top in single.net.losses:
                assert rel(float(blobs[top][k].detach()), float(sblobs[top].detach())) < 1e-5, (net, top)
            for i, t in enumerate(single.net.learnable):
                err = rel(batch.net.learnable[i].grad[k].numpy(), t.grad.numpy())
                assert err < 1e-5, (net, k, i, err)


@pytest.mark.parametrize("net", ["deep_ae", "model4"])
def test_20_batched_sgd_iterations_equal_single_runs(work, net):
    sp = solver(net, momentum=0.9)
    batch = BatchSolver(sp, SEEDS, cwd=work, test_nets=False)
    batch.step(20)
    worst = 0.0
    for k, seed in enumerate(SEEDS):
        single = TorchSolver(sp, cwd=work, seed=seed, test_nets=False)
        single.step(20)
        for (name, a), (_, b) in zip(batch.net.get_weights(k), single.net.get_weights()):
            for x, y in zip(a, b):
                worst = max(worst, rel(x, y))
        assert rel(batch.loss[k], single.loss) < 1e-4
    print("%s: worst weight blob after 20 iterations %.2g" % (net, worst))
    assert worst < 1e-4


def test_snapshot_restore_and_test_nets(work, tmp_path):
    sp = solver("model4")
    batch = BatchSolver(sp, SEEDS, cwd=work)
    batch.step(3)
    tests = batch.test(1, 2)
    paths = [batch.snapshot(k, str(tmp_path / ("r%d" % k))) for k in range(2)]
    for k, seed in enumerate(SEEDS):
        single = TorchSolver(sp, cwd=work, seed=seed)
        single.restore(paths[k][1], paths[k][0])
        assert single.iter == 3
        for top, v in single.test(1, 2).items():
            assert rel(tests[k][top], v) < 1e-5
    again = BatchSolver(sp, (7, 8), cwd=work)
    for k in range(2):
        again.restore(k, paths[k][1], paths[k][0])
    for k in range(2):
        for (_, a), (_, b) in zip(again.net.get_weights(k), batch.net.get_weights(k)):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert again.iter == 3


def test_clip_gradients_is_refused(work):
    with pytest.raises(CaeError, match="clip_gradients"):
        BatchSolver(solver("model4", clip_gradients=10.0), SEEDS, cwd=work)


# -- the command line: train --batch, grid --batch-runs -----------------------------------

SCHEDULE = ["--set", "solver.display=5", "--set", "solver.test_interval=10", "--set", "solver.snapshot=5"]


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "caffe_cae", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_batch_interrupted_and_resumed_logs_like_single_runs(work):
    base = ["train", "--net", "model4", "--dim", "2", "--iters", "12", *SCHEDULE]
    batch = ["--batch", "1:cli/b1", "--batch", "2:cli/b2"]
    proc = cli(*base, *batch, "--stop-after", "5", cwd=work)
    assert proc.returncode == 0, proc.stderr
    for k in (1, 2):
        m = grid.read_json(os.path.join(work, "cli", "b%d" % k, "manifest.json"))
        assert m["status"] == "interrupted" and m["iterations"] == 5 and m["backend"] == "torch"
        assert m["batched_with"] == [os.path.join(work, "cli", "b%d" % (3 - k))]
    proc = cli(*base, *batch, "--resume", cwd=work)
    assert proc.returncode == 0, proc.stderr
    for k in (1, 2):
        proc = cli(*base, "--seed", str(k), "--out", "cli/s%d" % k, "--backend", "torch", cwd=work)
        assert proc.returncode == 0, proc.stderr
        batched, single = (read_log(os.path.join(work, "cli", d)) for d in ("b%d" % k, "s%d" % k))
        assert [(r["iter"], r["phase"]) for r in batched] == [(r["iter"], r["phase"]) for r in single]
        for a, b in zip(batched, single):
            for key in b["loss"]:
                assert rel(a["loss"][key], b["loss"][key]) < 1e-5, (a, b)
        m = grid.read_json(os.path.join(work, "cli", "b%d" % k, "manifest.json"))
        assert m["status"] == "finished" and [s["iter"] for s in m["snapshots"]] == [5, 10, 12]
        assert [x["status"] for x in m["sessions"]] == ["interrupted", "finished"]


def test_grid_batch_runs_end_to_end(work):
    out = os.path.join(work, "g")
    args = ["grid", "--nets", "model4", "--dims", "2", "--runs", "2", "--iters", "10", "--backend", "torch",
            "--batch-runs", "2", "--out", out, "--analyze-arg=--folds=2", "--analyze-arg=--mlp-epochs=50", *SCHEDULE]
    dry = cli(*args, "--dry-run", cwd=work)
    assert dry.returncode == 0 and "# batch of 2 runs, trained at once: model4_d2_run1 model4_d2_run2" in dry.stdout
    assert dry.stdout.count("caffe_cae train ") == 1 and "--batch 1:" in dry.stdout and "--batch 2:" in dry.stdout
    proc = cli(*args, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("train batched (attempt 1)") == 1
    state = grid.read_json(os.path.join(out, "grid.json"))
    assert {k: v["status"] for k, v in state["runs"].items()} == {"model4_d2_run1": "done", "model4_d2_run2": "done"}
    from caffe_cae.backends.torch_net import TorchNet
    for seed in (1, 2):
        run_dir = os.path.join(out, "model4_d2", "run%d" % seed)
        m = grid.read_json(os.path.join(run_dir, "manifest.json"))
        assert m["status"] == "finished" and m["seed"] == seed and m["backend"] == "torch"
        assert m["batched_with"] == [os.path.join(out, "model4_d2", "run%d" % (3 - seed))]
        assert [(r["iter"], r["phase"]) for r in read_log(run_dir)] == [
            (5, "train"), (10, "train"), (10, "test-on-train"), (10, "test-on-test")]
        for name in ("codes.h5", "blobs_digit5.h5", "analysis.json"):
            assert os.path.isfile(os.path.join(run_dir, name))
        # the snapshot loads in a single-run torch net, whose codes are the extracted ones
        import h5py
        deploy = TorchNet(parse_net(os.path.join(run_dir, "model4_d2_deploy.prototxt")), "test", cwd=work)
        deploy.set_weights(caffemodel.read_caffemodel(
            os.path.join(run_dir, "snapshots", "model4_d2_iter_10.caffemodel")))
        with h5py.File(os.path.join(work, "data", "hdf5", "test.h5"), "r") as f:
            images = f["data"][:100]
        with h5py.File(os.path.join(run_dir, "codes.h5"), "r") as f:
            codes = f["code"][:100]
        with torch.no_grad():
            blobs, _ = deploy.forward(inputs={deploy.input_names()[0]: images})
        assert rel(blobs[m["code_blob"]].reshape(100, -1).numpy(), codes) < 1e-5
    again = cli(*args, cwd=work)
    assert again.returncode == 0 and "train batched" not in again.stderr


def test_refusals_are_one_line(work):
    for extra, words in ((["--backend", "caffe"], "--backend torch"),
                         (["--backend", "torch", "--executor", "slurm", "--dry-run"], "--executor slurm")):
        proc = cli("grid", "--nets", "model4", "--dims", "2", "--runs", "2", "--batch-runs", "2", *extra,
                   "--out", os.path.join(work, "refused"), cwd=work)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("caffe-cae: error: --batch-runs")
        assert words in lines[0]
    assert not os.path.exists(os.path.join(work, "refused"))
    proc = cli("train", "--net", "model4", "--dim", "2", "--batch", "1:x", "--batch", "2:x", cwd=work)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "caffe-cae: error: --batch: the same run directory twice"]


def test_a_failed_run_leaves_the_others_untouched(work):
    sp = solver("model4")
    batch = BatchSolver(sp, SEEDS, cwd=work, test_nets=False, onednn=False)
    with torch.no_grad():
        batch.net.learnable[2][1].fill_(float("nan"))  # run 2's conv2 weights
    replays = []

    def check(s):
        for k in range(2):
            if not np.isfinite(s.loss[k]):
                replays.append((s.net.first_nonfinite(k), s.net.first_nonfinite(1 - k)))
                s.dead.add(k)
    batch.step(3, on_gradients=check)
    assert batch.dead == {1} and len(replays) == 1
    (found, bad), other = replays[0]
    assert (found["layer"], found["blob"]) == ("conv2", "conv2") and bad == ["conv2[0]"]
    assert other == (None, [])
    single = TorchSolver(sp, cwd=work, seed=1, test_nets=False, onednn=False)
    single.step(3)
    for (_, a), (_, b) in zip(batch.net.get_weights(0), single.net.get_weights()):
        for x, y in zip(a, b):
            assert rel(x, y) < 1e-6
    assert all(not w[1].any() for w in batch.net.learnable)  # the failed run is zeroed


def test_nonfinite_loss_fails_the_runs_in_one_line(work):
    proc = cli("train", "--net", "model2", "--dim", "2", "--iters", "20", "--set", "net.activation=relu",
               "--set", "solver.base_lr=10", "--batch", "1:nan/r1", "--batch", "2:nan/r2", cwd=work)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("caffe-cae: error: "), proc.stderr
    for k in (1, 2):
        m = grid.read_json(os.path.join(work, "nan", "r%d" % k, "manifest.json"))
        assert m["status"] == "failed" and m["failure"]["message"].startswith("non-finite loss at iteration")
        assert "first non-finite blob" in m["failure"]["message"]
        assert os.path.join(work, "nan", "r%d" % k) in lines[-1]


def test_sigterm_snapshots_every_run_and_resume_finishes(work):
    schedule = ["--set", "solver.display=5", "--set", "solver.test_interval=50", "--set", "solver.snapshot=50"]
    base = ["-m", "caffe_cae", "train", "--net", "deep_ae", "--dim", "2", "--iters", "100", *schedule,
            "--batch", "1:term/r1", "--batch", "2:term/r2"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, *base], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    log = os.path.join(work, "term", "r2", "log.jsonl")
    for _ in range(600):
        if os.path.exists(log) and os.path.getsize(log):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    its = set()
    for k in (1, 2):
        m = grid.read_json(os.path.join(work, "term", "r%d" % k, "manifest.json"))
        assert m["status"] == "interrupted" and m["interrupted_by"] == "SIGTERM", m
        assert m["snapshots"][-1]["iter"] == m["iterations"] < 100
        its.add(m["iterations"])
    assert len(its) == 1
    done = cli(*base[2:], "--resume", cwd=work)
    assert done.returncode == 0, done.stderr
    for k in (1, 2):
        m = grid.read_json(os.path.join(work, "term", "r%d" % k, "manifest.json"))
        assert m["status"] == "finished" and m["iterations"] == 100
        keys = [(r["iter"], r["phase"]) for r in read_log(os.path.join(work, "term", "r%d" % k))]
        assert len(keys) == len(set(keys)) and [i for i, p in keys if p == "train"] == list(range(5, 101, 5))
