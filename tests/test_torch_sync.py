"""The torch backend's deferred non-finite check gives what the eager check gives.

Eager (``CAFFE_CAE_TORCH_SYNC=eager``, the CPU default) reads one flag per iteration before
the update; deferred (the CUDA default) keeps the flag, the first bad iteration and its losses
on the device, masks the update and reads them only where the schedule reads anyway
(:func:`caffe_cae.backends.protocol.run_schedule`). Checked here on the CPU, both modes side
by side:

(a) a normal run (stopped, then resumed): the same events, log records and snapshot bytes;
(b) a run driven to a non-finite loss (the paper's ReLU failure, Section 5.2: Model 2 with
    ReLU and base_lr 10, whose first non-finite blob is inside the net): the same events at
    the same iteration, naming the same blob, while the deferred solver ran past that
    iteration before it looked, and ends with the weights and history of the eager one
    (the masked updates); also after a resume and with ``iter_size`` 2;
(c) ``--batch-runs``: one of two runs poisoned between two display points fails alike, the
    other trains on to the same weights;
(d) ``caffe-cae train`` with either setting writes the same log.jsonl, snapshots and
    manifest records (normal and failing run), and a bad setting is one line.

The progress event (a read point every 0.25 s) is made rare in (a)-(c) so the failures fall
between read points. Real torch, real files (tiny MNIST HDF5), no engine needed.
"""
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine_support import require_torch  # noqa: E402

torch = require_torch()

from caffe_cae import caffemodel  # noqa: E402
from caffe_cae.backends import protocol  # noqa: E402
from caffe_cae.backends.torch_batch import BatchSolver  # noqa: E402
from caffe_cae.backends.torch_batch_worker import BatchAdapter  # noqa: E402
from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.backends.torch_worker import TorchAdapter, deferred  # noqa: E402
from caffe_cae.data import write_tiny  # noqa: E402
from caffe_cae.errors import CaeError  # noqa: E402
from caffe_cae.recorder import RunFailed  # noqa: E402
from caffe_cae.render import render_files  # noqa: E402
from caffe_cae.schema import parse_net, parse_solver  # noqa: E402

from train_support import run_train  # noqa: E402

RELU = {"net.activation": "relu", "solver.base_lr": 10}
#: batches of 100: the data cycles are 250 / gcd(250, 100) = 5 and 120 / gcd(120, 100) = 6 batches
STAGES = [{"name": "test-on-train", "iter": 2, "period": 5}, {"name": "test-on-test", "iter": 2, "period": 6}]
MODES = ("eager", "deferred")


class NoStop:
    reason = None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sync"))
    write_tiny(os.path.join(root, "data", "hdf5"), n=250, n_test=120, list_prefix="data/hdf5")
    torch.set_num_threads(1)
    return root


@pytest.fixture(autouse=True)
def rare_progress(monkeypatch):
    """A progress event at the first and last iteration only (the other reads are the schedule's)."""
    monkeypatch.setattr(protocol, "PROGRESS_EVERY", 1e12)


def solver_param(net, overrides=None, **fields):
    texts = render_files(net, 2, overrides=overrides)
    sp = parse_solver(texts["solver"])
    sp.net_param.CopyFrom(parse_net(texts["train_test"]))
    sp.ClearField("net")
    for key, value in fields.items():
        setattr(sp, key, value)
    return sp


def job_of(work, tag, **fields):
    job = dict(max_iter=30, display=5, test_interval=10, snapshot=100, train_period=5, test_stages=STAGES,
               snapshot_prefix=os.path.join(work, tag, "snap"), stop_after=None, resume=None)
    os.makedirs(os.path.join(work, tag), exist_ok=True)
    job.update(fields)
    return job


def schedule(capsys, adapter, job):
    """(exit status, events without the fields that differ between runs: time, pid, paths)."""
    status = protocol.run_schedule(adapter, job, stop=NoStop())
    events = []
    for line in capsys.readouterr().out.splitlines():
        e = json.loads(line)
        for key in ("time", "pid", "caffemodel", "solverstate"):
            e.pop(key, None)
        events.append(e)
    return status, events


def single(work, capsys, sp, mode, tag, resume_at=None, data=None, **fields):
    """A run of ``sp`` (seed 1) through run_schedule (snapshots in work/tag/e or d, the data
    of ``data`` or ``work``); with ``resume_at``, stopped there and resumed."""
    job = job_of(work, os.path.join(tag, mode[0]), **fields)
    s = TorchSolver(sp, cwd=data or work, seed=1, deferred=mode == "deferred")
    if resume_at is None:
        status, events = schedule(capsys, TorchAdapter(s, torch, "cpu"), job)
        return status, events, s
    status, events = schedule(capsys, TorchAdapter(s, torch, "cpu"), dict(job, stop_after=resume_at))
    snap = [e for e in events if e["event"] == "snapshot"][-1]
    prefix = job["snapshot_prefix"] + "_iter_%d" % resume_at
    resume = dict(solverstate=prefix + ".solverstate", caffemodel=prefix + ".caffemodel", iter=resume_at,
                  test_passes=snap["test_passes"], train_sum=snap["train_sum"], train_count=snap["train_count"])
    s = TorchSolver(sp, cwd=data or work, seed=1, deferred=mode == "deferred")
    status, more = schedule(capsys, TorchAdapter(s, torch, "cpu"), dict(job, resume=resume))
    return status, events + more, s


def state_of(s, k=None):
    """Weights and history of a solver (run k of a BatchSolver) as numpy arrays."""
    pick = (lambda t: t) if k is None else (lambda t: t[k])
    return [pick(t).detach().numpy().copy() for t in list(s.net.learnable) + list(s.history)]


def same_arrays(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def snapshot_bytes(work, mode, tag):
    folder = os.path.join(work, tag, mode[0])
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        if name.endswith(".solverstate"):  # it names its .caffemodel by path (of the same length)
            data = data.replace(folder.encode(), b"DIR")
        out[name] = data
    return out


# -- (a) a normal run -------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["model2", "model4"])
def test_normal_run_is_bitwise_the_same(work, capsys, net):
    sp = solver_param(net)
    runs = {mode: single(work, capsys, sp, mode, net, resume_at=8, max_iter=14, display=3, test_interval=5,
                         snapshot=6) for mode in MODES}
    assert runs["eager"][0] == runs["deferred"][0] == 0
    assert runs["eager"][1] == runs["deferred"][1]
    assert [e["iter"] for e in runs["eager"][1] if e["event"] == "snapshot"] == [6, 8, 12, 14]
    assert same_arrays(state_of(runs["eager"][2]), state_of(runs["deferred"][2]))
    snaps = {mode: snapshot_bytes(work, mode, net) for mode in MODES}
    assert len(snaps["eager"]) == 8 and snaps["eager"] == snaps["deferred"]


# -- (b) a non-finite loss --------------------------------------------------------------------

@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """The tiny data with a NaN in training image 230: the third batch (rows 200-249, 0-49) is
    the first to hold it, and only that batch's forward pass is non-finite."""
    root = str(tmp_path_factory.mktemp("poisoned"))
    folder = os.path.join(root, "data", "hdf5")
    write_tiny(folder, n=250, n_test=120, list_prefix="data/hdf5")
    with h5py.File(os.path.join(folder, "train.h5"), "r+") as f:
        f["data"][230, 0, 5, 5] = np.nan
    return root


@pytest.mark.parametrize("case", ["display", "end", "resumed", "iter_size", "data", "data_resumed"])
def test_nonfinite_loss_is_reported_alike(work, poisoned, capsys, case):
    """Model 2 with ReLU and base_lr 10 (its weights blow up) or a NaN in the data (only the
    failing batch is non-finite: the replay must be of that batch). The failure is found at
    the next display point, or only at the end (display and tests past max_iter), after a
    resume, or with two passes per iteration."""
    fields = {"iter_size": 2} if case == "iter_size" else {}
    sp = solver_param("model2", None if case.startswith("data") else RELU, **fields)
    schedule_fields = dict(display=100, test_interval=100, max_iter=25) if case == "end" else {}
    resume_at = {"resumed": 2, "data_resumed": 1}.get(case)
    data = poisoned if case.startswith("data") else None
    runs = {mode: single(work, capsys, sp, mode, "nonfinite_" + case, resume_at, data, **schedule_fields)
            for mode in MODES}
    (status, events, eager), (dstatus, devents, late) = runs["eager"], runs["deferred"]
    assert status == dstatus == 3
    assert events == devents
    failure = [e for e in events if e["event"] == "nonfinite"][0]
    b, first = failure["iter"], failure["first"]
    print(case, failure["message"])
    if data:
        assert (b, first["blob"], failure["params"]) == (3, "data", [])
    else:
        assert first and first["layer_type"] != "HDF5Data" and not failure["params"]
    assert b > (resume_at or 1) and b % 5, "the failure should fall between two display points"
    assert events[-1] == {"event": "end", "status": "failed", "iter": b, "message": failure["message"]}
    assert all(e["iter"] < b for e in events if e["event"] in ("log", "progress", "snapshot"))
    assert eager.iter == b - 1 and late.iter > b  # the deferred run went on and looked later
    assert same_arrays(state_of(eager), state_of(late))  # ... with its updates masked from b on


# -- (c) --batch-runs -------------------------------------------------------------------------

class Poisoned(BatchAdapter):
    """Run 1's conv2 weights become NaN before iteration 7 (between the display points 5 and 10)."""

    def step(self, before_update):
        if self.solver.iter == 6:
            with torch.no_grad():
                self.solver.net.learnable[2][1].fill_(float("nan"))
        return super().step(before_update)


def test_batched_runs_fail_alone_alike(work, capsys):
    sp = solver_param("model4", momentum=0.9)
    out = {}
    for mode in MODES:
        jobs = [job_of(work, os.path.join("batch", mode[0], str(k)), max_iter=12) for k in range(2)]
        s = BatchSolver(sp, (1, 2), cwd=work, deferred=mode == "deferred")
        status, events = schedule(capsys, Poisoned(s, torch, torch.device("cpu")), {"runs": jobs})
        out[mode] = status, events, s
    (status, events, eager), (dstatus, devents, late) = out["eager"], out["deferred"]
    assert status == dstatus == 3 and events == devents
    failure = [e for e in events if e["event"] == "nonfinite"]
    assert len(failure) == 1 and failure[0]["run"] == 1 and failure[0]["iter"] == 7
    assert failure[0]["first"]["blob"] == "conv2" and failure[0]["params"] == ["conv2[0]"]
    assert events[-1] == {"event": "batch_end", "status": "failed"}
    assert [e["iter"] for e in events if e["event"] == "log" and e["phase"] == "train" and e["run"] == 0] == [5, 10, 12]
    assert same_arrays(state_of(eager, 0), state_of(late, 0))
    assert same_arrays(state_of(eager, 1), state_of(late, 1))  # zeroed once dropped, in both


# -- (d) caffe-cae train with either setting --------------------------------------------------

def run_dir_files(out):
    """log.jsonl, the snapshots' bytes and the manifest's records of a run directory."""
    with open(os.path.join(out, "log.jsonl"), "rb") as f:
        log = f.read()
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    snaps = {}
    for name in sorted(os.listdir(os.path.join(out, "snapshots"))):
        with open(os.path.join(out, "snapshots", name), "rb") as f:
            snaps[name] = f.read().replace(out.encode(), b"DIR")  # a .solverstate names its .caffemodel
    records = {k: m.get(k) for k in ("status", "iterations", "failure")}
    records["snapshots"] = [{k: v for k, v in s.items() if k != "time"} for s in m["snapshots"]]
    return log, snaps, records


@pytest.mark.parametrize("overrides", [{}, dict(RELU, **{"solver.display": 5})], ids=["normal", "relu"])
def test_train_writes_the_same_run_directory(work, monkeypatch, overrides):
    settings = {"solver.display": 3, "solver.test_interval": 5, "solver.snapshot": 6}
    settings.update(overrides)
    files = {}
    for mode in MODES:
        monkeypatch.setenv("CAFFE_CAE_TORCH_SYNC", mode)
        out = os.path.join(work, "relu" if overrides else "train", mode[0])
        kwargs = dict(net="model2", dim=2, iters=14, seed=1, overrides=settings, backend="torch")
        if overrides:
            with pytest.raises(RunFailed):
                run_train(work, out, **kwargs)
        else:
            run_train(work, out, stop_after=8, **kwargs)
            run_train(work, out, resume=True)
        files[mode] = run_dir_files(out)
    assert files["eager"] == files["deferred"]
    records = files["eager"][2]
    if overrides:
        assert records["status"] == "failed" and records["failure"]["iter"] == records["iterations"] + 1
    else:
        assert records["status"] == "finished" and records["iterations"] == 14
        assert [s["iter"] for s in records["snapshots"]] == [6, 8, 12, 14]


def test_the_setting(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("CAFFE_CAE_TORCH_SYNC", raising=False)
    assert (deferred(cpu), deferred(cuda)) == (False, True)
    monkeypatch.setenv("CAFFE_CAE_TORCH_SYNC", "deferred")
    assert deferred(cpu)
    monkeypatch.setenv("CAFFE_CAE_TORCH_SYNC", "eager")
    assert not deferred(cuda)
    monkeypatch.setenv("CAFFE_CAE_TORCH_SYNC", "lazy")
    with pytest.raises(CaeError, match="CAFFE_CAE_TORCH_SYNC=lazy: expected eager or deferred"):
        deferred(cpu)
