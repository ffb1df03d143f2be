"""Runs INSIDE the Caffe engine (caffe, stdlib only): BVLC's MNIST example, as a user runs it.

1. Small MNIST idx files (the first TRAIN training and TEST test images of the given idx .gz files),
   converted by Caffe's own convert_mnist_data into an LMDB and a LevelDB;
2. LeNet (written here: conv 20@5x5, max pool, conv 50@5x5, max pool, fully connected 500, ReLU,
   fully connected 10, softmax loss; Data layers scaling pixels by 1/256) trained for ITERS
   iterations by the `caffe train` tool on the LMDB, testing on the test LMDB;
3. the same net's Data layer read through pycaffe from both back ends.

Usage: python3 lenet_lmdb.py WORKDIR MNIST_DIR
Prints one JSON object with the tool's log records and what pycaffe saw.
"""
import json
import os
import re
import subprocess
import sys

import caffe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from engine_net_check import idx_subset  # noqa: E402 (the one idx reader, tools/)

TRAIN, TEST, ITERS, BATCH = 2000, 500, 200, 64

NET = """name: "LeNet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(train)s" batch_size: %(batch)d backend: %(backend)s } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(test)s" batch_size: 100 backend: %(backend)s } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "%(net)s"
test_iter: %(test_iter)d
test_interval: %(iters)d
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 20
max_iter: %(iters)d
snapshot_prefix: "%(prefix)s"
random_seed: 1
solver_mode: CPU
"""


def convert(work, mnist_dir, split, prefix, count, backend):
    images, labels = (os.path.join(work, "%s-%s" % (split, kind)) for kind in ("images", "labels"))
    idx_subset(os.path.join(mnist_dir, prefix + "-images-idx3-ubyte.gz"), images, count)
    idx_subset(os.path.join(mnist_dir, prefix + "-labels-idx1-ubyte.gz"), labels, count)
    db = os.path.join(work, "mnist_%s_%s" % (split, backend))
    subprocess.run(["convert_mnist_data", images, labels, db, "--backend=" + backend], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return db


def main(work, mnist_dir):
    dbs = {}
    for backend in ("lmdb", "leveldb"):
        dbs[backend] = {split: convert(work, mnist_dir, split, prefix, count, backend)
                        for split, prefix, count in (("train", "train", TRAIN), ("test", "t10k", TEST))}
    nets = {}
    for backend in dbs:
        nets[backend] = os.path.join(work, "lenet_%s.prototxt" % backend)
        with open(nets[backend], "w") as f:
            f.write(NET % dict(dbs[backend], batch=BATCH, backend=backend.upper()))
    solver = os.path.join(work, "lenet_solver.prototxt")
    with open(solver, "w") as f:
        f.write(SOLVER % dict(net=nets["lmdb"], test_iter=TEST // 100, iters=ITERS,
                              prefix=os.path.join(work, "lenet")))
    proc = subprocess.run(["caffe", "train", "--solver=" + solver], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, env=dict(os.environ, GLOG_minloglevel="0"))
    if proc.returncode != 0:
        sys.exit("caffe train failed:\n" + proc.stdout[-3000:])
    train = [(int(i), float(v)) for i, v in re.findall(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([0-9.e+-]+)",
                                                                     proc.stdout)]
    accuracy = [float(v) for v in re.findall(r"Test net output #\d+: accuracy = ([0-9.e+-]+)", proc.stdout)]
    seen = {}
    caffe.set_mode_cpu()
    for backend, net_file in nets.items():
        net = caffe.Net(net_file, caffe.TRAIN)
        net.forward()
        data, label = net.blobs["data"].data, net.blobs["label"].data
        seen[backend] = {"shape": list(data.shape), "min": float(data.min()), "max": float(data.max()),
                         "labels": sorted(set(int(v) for v in label)), "first": data[0].ravel().tolist()}
    print(json.dumps({"train": train, "accuracy": accuracy, "data": seen,
                      "snapshot": os.path.isfile(os.path.join(work, "lenet_iter_%d.caffemodel" % ITERS))}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
