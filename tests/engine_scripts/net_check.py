"""Runs INSIDE the Caffe engine (caffe, numpy, h5py, stdlib only): instantiate nets and run
one SGD step of solvers in real Caffe, on tiny HDF5 files made here.

Usage: python3 net_check.py WORKDIR REPO_ROOT [--net FILE]... [--solver FILE]...
WORKDIR must be the current directory: data/hdf5/{train,test}[_pairs].txt are written
there (the generated nets read those repository-relative paths) and generated/ is linked.
Prints one JSON object: {"nets": {file: {...}}, "solvers": {file: {...}}}.
"""
import json
import os
import sys

import h5py
import numpy as np

import caffe
from caffe.proto import caffe_pb2
from google.protobuf import text_format

ROWS = 20


def make_data(workdir):
    rng = np.random.RandomState(7)
    hdf5 = os.path.join(workdir, "data", "hdf5")
    os.makedirs(hdf5)
    for split in ("train", "test"):
        path = os.path.join(hdf5, split + ".h5")
        with h5py.File(path, "w") as f:
            f["data"] = rng.rand(ROWS, 1, 28, 28).astype(np.float32)
            f["label"] = rng.randint(0, 10, size=ROWS).astype(np.float32)
        with open(os.path.join(hdf5, split + ".txt"), "w") as f:
            f.write(path + "\n")
        path = os.path.join(hdf5, split + "_pairs.h5")
        with h5py.File(path, "w") as f:
            f["pair_data"] = rng.rand(ROWS, 2, 28, 28).astype(np.float32)
            f["sim"] = rng.randint(0, 2, size=ROWS).astype(np.float32)
        with open(os.path.join(hdf5, split + "_pairs.txt"), "w") as f:
            f.write(path + "\n")


def param_counts(net):
    """{layer: [blob sizes]} for layers with parameters (shared blobs counted per layer)."""
    return {name: [int(b.data.size) for b in blobs] for name, blobs in net.params.items()}


def check_net(path):
    """Instantiate the net in every phase/stage it declares; forward once."""
    param = caffe_pb2.NetParameter()
    with open(path) as f:
        text_format.Merge(f.read(), param)
    stages = sorted({s for layer in param.layer for rule in layer.include for s in rule.stage})
    phases = [(caffe.TEST, [])] if not stages else [(caffe.TRAIN, [])] + [(caffe.TEST, [s]) for s in stages]
    out = {}
    for phase, st in phases:
        key = ("TRAIN" if phase == caffe.TRAIN else "TEST") + ("/" + st[0] if st else "")
        net = caffe.Net(path, phase, stages=st)
        for name in net.inputs:
            net.blobs[name].data[...] = np.random.RandomState(1).rand(*net.blobs[name].data.shape)
        outputs = net.forward()
        out[key] = {
            "params": param_counts(net),
            "total": sum(sum(v) for v in param_counts(net).values()),
            "blobs": {name: list(b.data.shape) for name, b in net.blobs.items()},
            "outputs": {name: float(np.asarray(v).sum()) for name, v in outputs.items()},
            "finite": bool(all(np.isfinite(b.data).all() for b in net.blobs.values())),
        }
    return out


def check_solver(path, workdir):
    """One SGD step (no tests, no snapshots); the loss tops after the step."""
    param = caffe_pb2.SolverParameter()
    with open(path) as f:
        text_format.Merge(f.read(), param)
    param.test_initialization = False
    param.max_iter = 1
    param.display = 0
    param.snapshot = 0
    param.ClearField("snapshot_prefix")
    param.solver_mode = caffe_pb2.SolverParameter.CPU
    tmp = os.path.join(workdir, os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(text_format.MessageToString(param))
    solver = caffe.SGDSolver(tmp)
    solver.step(1)
    net = solver.net
    losses = {}
    for layer, name in zip(net.layers, net._layer_names):
        if layer.type.endswith("Loss"):
            for top in net.top_names[name]:
                losses[top] = float(net.blobs[top].data.ravel()[0])
    return {"type": param.type or "SGD", "losses": losses, "iter": int(solver.iter),
            "finite": bool(losses) and all(np.isfinite(v) for v in losses.values())}


def main(argv):
    workdir, repo = argv[1], argv[2]
    if os.path.abspath(os.getcwd()) != os.path.abspath(workdir):
        sys.exit("net_check.py: run it with WORKDIR as the current directory")
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    make_data(workdir)
    os.symlink(os.path.join(repo, "generated"), os.path.join(workdir, "generated"))
    report = {"nets": {}, "solvers": {}}
    args = argv[3:]
    for flag, path in zip(args[::2], args[1::2]):
        if flag == "--net":
            report["nets"][path] = check_net(path)
        elif flag == "--solver":
            report["solvers"][path] = check_solver(path, workdir)
        else:
            sys.exit("net_check.py: unknown flag " + flag)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
