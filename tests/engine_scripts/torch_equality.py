"""Runs INSIDE the Caffe engine (caffe, numpy, h5py, stdlib only): the Caffe half of the
torch-backend equality tests (tests/test_torch_backend.py).

Usage: python3 torch_equality.py TASKS_JSON
TASKS_JSON is a file holding a list of tasks; the current directory is the one the nets'
relative data paths (data/hdf5/...) are resolved against. Task kinds:

- {"kind": "init", "solver": S, "out": M}: build the solver (Caffe's fillers from its
  random_seed) and save its train net's weights to M;
- {"kind": "fwdbwd", "net": N, "weights": M, "out": H5}: a TRAIN net from M, one forward and
  backward on the first batch; H5 gets /blobs/NAME (data) and /diffs/LAYER/I (param diffs);
- {"kind": "sgd", "solver": S, "weights": M or null, "restore": STATE or null,
  "skip": K, "iters": N, "snapshot_at": [J...], "out": H5, "final": M2}: SGD from M
  (or a restored .solverstate whose data position is advanced by K batches), N iterations
  one at a time; H5 gets /loss/TOP per iteration; the final weights go to M2; snapshots
  (solver.snapshot(), snapshot_prefix of S) after each iteration J.
Prints one JSON line {"ok": true, "seconds": {...}}.
"""
import json
import os
import sys
import time

import h5py
import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402


def zero_diffs(net):
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0


def skip_batches(net, n):
    names = list(net._layer_names)
    for i in range(len(names)):
        if net.layers[i].type == "HDF5Data":
            for _ in range(n):
                net._forward(i, i)


def init(task):
    solver = caffe.get_solver(str(task["solver"]))
    solver.net.save(str(task["out"]))


def fwdbwd(task):
    net = caffe.Net(str(task["net"]), caffe.TRAIN, weights=str(task["weights"]))
    zero_diffs(net)
    net.forward()
    net.backward()
    with h5py.File(task["out"], "w") as f:
        for name, blob in net.blobs.items():
            f["blobs/" + name] = blob.data.astype(np.float32)
        for layer, blobs in net.params.items():
            for i, b in enumerate(blobs):
                f["diffs/%s/%d" % (layer, i)] = b.diff.astype(np.float32)


def sgd(task):
    solver = caffe.get_solver(str(task["solver"]))
    if task.get("restore"):
        solver.restore(str(task["restore"]))
        skip_batches(solver.net, int(task.get("skip") or 0))
    elif task.get("weights"):
        solver.net.copy_from(str(task["weights"]))
    net = solver.net
    curves = {top: [] for top in net.outputs}
    for _ in range(int(task["iters"])):
        solver.step(1)
        for top in net.outputs:
            curves[top].append(float(net.blobs[top].data.reshape(-1)[0]))
        if solver.iter in (task.get("snapshot_at") or []):
            solver.snapshot()
    net.save(str(task["final"]))
    with h5py.File(task["out"], "w") as f:
        for top, values in curves.items():
            f["loss/" + top] = np.asarray(values, dtype=np.float64)
        f.attrs["iter"] = solver.iter


def main(argv):
    caffe.set_mode_cpu()
    with open(argv[1]) as f:
        tasks = json.load(f)
    seconds = {}
    for k, task in enumerate(tasks):
        start = time.time()
        {"init": init, "fwdbwd": fwdbwd, "sgd": sgd}[task["kind"]](task)
        seconds["%d_%s" % (k, task["kind"])] = round(time.time() - start, 3)
    print(json.dumps({"ok": True, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
