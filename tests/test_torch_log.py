"""The torch worker's log records are the host-float means of its losses, bit for bit.

The torch adapter hands :func:`caffe_cae.backends.protocol.run_schedule` its loss tops as
float64 scalars on the device and the display-window sums stay there (no read-back per
iteration). The ``train`` records must still be exactly what summing the host floats gives,
across a stop and resume (the snapshot carries the window's partial sum), and the test
records exactly the test passes' means. Here a run is trained through ``run_schedule``
(stop after 8, resume to 14, display 3) and compared with == against a second solver of the
same seed stepped by hand, whose ``losses`` (floats) are summed in Python. Real torch, real
files (tiny MNIST HDF5), no engine needed.
"""
import json
import os

import pytest

from engine_support import require_torch  # noqa: E402

torch = require_torch()

from caffe_cae import REPO_ROOT  # noqa: E402
from caffe_cae.backends import protocol  # noqa: E402
from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.backends.torch_worker import TorchAdapter  # noqa: E402
from caffe_cae.data import write_tiny  # noqa: E402
from caffe_cae.schema import parse_net, parse_solver  # noqa: E402

DISPLAY, STOP, ITERS, TEST_BATCHES = 3, 8, 14, 2


class NoStop:
    reason = None


def solver(net):
    gen = os.path.join(REPO_ROOT, "generated", "modern")
    sp = parse_solver(os.path.join(gen, "%s_d2_solver.prototxt" % net))
    sp.net_param.CopyFrom(parse_net(os.path.join(gen, "%s_d2_train_test.prototxt" % net)))
    sp.ClearField("net")
    return sp


def schedule(work, capsys, job, resume=None):
    s = TorchSolver(job["sp"], cwd=work, seed=1)
    body = {k: v for k, v in job.items() if k != "sp"}
    assert protocol.run_schedule(TorchAdapter(s, torch, "cpu"), dict(body, resume=resume), stop=NoStop()) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("net", ["model4", "deep_ae"])
def test_log_records_are_the_host_float_means(tmp_path, capsys, net):
    torch.set_num_threads(1)
    work = str(tmp_path)
    write_tiny(os.path.join(work, "data", "hdf5"), n=250, n_test=120, list_prefix="data/hdf5")
    sp = solver(net)
    # batches of 100: the data cycles are 250 / gcd(250, 100) = 5 and 120 / gcd(120, 100) = 6 batches
    stages = [{"name": "test-on-train", "iter": TEST_BATCHES, "period": 5},
              {"name": "test-on-test", "iter": TEST_BATCHES, "period": 6}]
    job = dict(sp=sp, max_iter=ITERS, display=DISPLAY, test_interval=5, snapshot=100, train_period=5,
               snapshot_prefix=os.path.join(work, "snap"), test_stages=stages, stop_after=STOP)
    events = schedule(work, capsys, job)
    snap = [e for e in events if e["event"] == "snapshot"][-1]
    assert snap["iter"] == STOP and snap["train_count"] == STOP % DISPLAY
    resume = dict(solverstate=snap["solverstate"], caffemodel=snap["caffemodel"], iter=STOP,
                  test_passes=snap["test_passes"], train_sum=snap["train_sum"], train_count=snap["train_count"])
    events += schedule(work, capsys, dict(job, stop_after=None), resume=resume)
    logs = [(e["iter"], e["phase"], e["loss"]) for e in events if e["event"] == "log"]

    ref = TorchSolver(sp, cwd=work, seed=1)
    expected, sums, count = [], {}, 0
    for it in range(1, ITERS + 1):
        ref.step(1)
        for top, value in ref.losses.items():
            sums[protocol.loss_key(top)] = sums.get(protocol.loss_key(top), 0.0) + value
        count += 1
        if it % DISPLAY == 0 or it == ITERS:
            expected.append((it, "train", {k: v / count for k, v in sums.items()}))
            sums, count = {}, 0
        if it % 5 == 0 or it == ITERS:
            for j, stage in enumerate(stages):
                expected.append((it, stage["name"], protocol.keyed(ref.test(j, TEST_BATCHES))))
    assert logs == expected
