"""Runs INSIDE the Caffe engine (caffe, stdlib only): the blob shapes and parameter blob sizes
real Caffe gives each net when it sets it up (TEST phase; no forward pass).

Usage: python3 shape_check.py NET...  Prints one JSON object {net: {"blobs": {name: shape},
"params": {layer: [sizes]}}}.
"""
import json
import sys

import caffe


def shapes(path):
    net = caffe.Net(path, caffe.TEST)
    return {"blobs": {name: list(blob.data.shape) for name, blob in net.blobs.items()},
            "params": {name: [int(b.data.size) for b in blobs] for name, blobs in net.params.items()}}


if __name__ == "__main__":
    caffe.set_mode_cpu()
    print(json.dumps({path: shapes(path) for path in sys.argv[1:]}))
