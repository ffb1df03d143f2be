"""Runs INSIDE the Caffe engine (caffe, numpy, stdlib only): a small LMDB that Caffe's own
convert_mnist_data makes from our MNIST (lenet_lmdb.py's conversion), a net whose Data layer
reads it (cropped to 24 x 24), and the blob shapes real Caffe gives that net.

Usage: python3 lmdb_shapes.py WORKDIR MNIST_DIR
Prints one JSON object {"net": the net file, "blobs": {name: shape}}.
"""
import json
import os
import sys

import caffe

from lenet_lmdb import convert

NET = """name: "lmdb_shapes"
layer { name: "mnist" type: "Data" top: "data" top: "label" transform_param { crop_size: 24 }
  data_param { source: "%s" batch_size: 8 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 5 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def main(work, mnist_dir):
    path = os.path.join(work, "lmdb_shapes.prototxt")
    with open(path, "w") as f:
        f.write(NET % convert(work, mnist_dir, "train", "train", 50, "lmdb"))
    caffe.set_mode_cpu()
    net = caffe.Net(path, caffe.TRAIN)
    print(json.dumps({"net": path, "blobs": {name: list(b.data.shape) for name, b in net.blobs.items()}}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
