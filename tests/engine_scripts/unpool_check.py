"""Runs INSIDE the Caffe engine (caffe, numpy, stdlib only): Unpooling through pycaffe
against a NumPy reference, for every mode, on random data.

Usage: python3 unpool_check.py WORKDIR  -> prints one JSON object {case: result}, where
result has the max abs errors of forward and backward and the output shape.
The reference below is written from the layer's documented semantics, independently
of the C++ code.
"""
import json
import os
import sys

import numpy as np

import caffe

CASES = {
    # name: (unpool method, input NCHW, params, with mask)
    "max_mask": ("MAX", (2, 3, 4, 4), {"kernel_size": 2, "stride": 2, "unpool_size": 8}, True),
    "max_mask_odd": ("MAX", (2, 2, 3, 3), {"kernel_size": 2, "stride": 2, "unpool_size": 7}, True),
    "max_nomask": ("MAX", (2, 3, 4, 4), {"kernel_size": 2, "stride": 2, "unpool_size": 8}, False),
    "max_nomask_default_size": ("MAX", (1, 2, 3, 5), {"kernel_size": 2, "stride": 2}, False),
    "ave": ("AVE", (2, 3, 4, 4), {"kernel_size": 2, "stride": 2, "unpool_size": 8}, False),
    "ave_overlap_clipped": ("AVE", (2, 2, 3, 3), {"kernel_size": 3, "stride": 2, "unpool_size": 6}, False),
    "tile": ("TILE", (2, 3, 4, 4), {"kernel_size": 2, "stride": 2, "unpool_size": 8}, False),
    "tile_rect_overlap": ("TILE", (2, 2, 3, 2), {"kernel_h": 3, "kernel_w": 2, "stride_h": 2, "stride_w": 1}, False),
}


def out_size(n, k, s, given):
    return given if given else max((n - 1) * s + k, n * s + 1)


def geometry(params, h, w):
    kh = params.get("kernel_h", params.get("kernel_size"))
    kw = params.get("kernel_w", params.get("kernel_size"))
    sh = params.get("stride_h", params.get("stride", 1))
    sw = params.get("stride_w", params.get("stride", 1))
    uh = out_size(h, kh, sh, params.get("unpool_size"))
    uw = out_size(w, kw, sw, params.get("unpool_size"))
    return kh, kw, sh, sw, uh, uw


def windows(h, w, kh, kw, sh, sw, uh, uw):
    """(ph, pw, rows, cols) of every input cell: its window clipped to the output."""
    for ph in range(h):
        for pw in range(w):
            r0, c0 = ph * sh, pw * sw
            yield ph, pw, slice(r0, min(r0 + kh, uh)), slice(c0, min(c0 + kw, uw))


def reference(method, x, mask, params, dy):
    n, c, h, w = x.shape
    kh, kw, sh, sw, uh, uw = geometry(params, h, w)
    y = np.zeros((n, c, uh, uw))
    dx = np.zeros(x.shape)
    for ph, pw, rows, cols in windows(h, w, kh, kw, sh, sw, uh, uw):
        v = x[:, :, ph, pw]
        if method == "MAX":
            if mask is not None:
                flat_y = y.reshape(n, c, -1)
                flat_dy = dy.reshape(n, c, -1)
                for i in range(n):
                    for j in range(c):
                        k = int(mask[i, j, ph, pw])
                        flat_y[i, j, k] = v[i, j]
                        dx[i, j, ph, pw] = flat_dy[i, j, k]
            else:
                r, q = min(ph * sh, uh - 1), min(pw * sw, uw - 1)
                y[:, :, r, q] = v
                dx[:, :, ph, pw] = dy[:, :, r, q]
        else:
            size = (rows.stop - rows.start) * (cols.stop - cols.start)
            if size <= 0:
                continue
            scale = 1.0 / size if method == "AVE" else 1.0
            y[:, :, rows, cols] += (v * scale)[:, :, None, None]
            dx[:, :, ph, pw] = dy[:, :, rows, cols].sum(axis=(2, 3)) * scale
    return y, dx


def random_switches(rng, shape, params):
    """A switch inside each cell's window (what a MAX Pooling mask holds)."""
    n, c, h, w = shape
    kh, kw, sh, sw, uh, uw = geometry(params, h, w)
    mask = np.zeros(shape)
    for ph, pw, rows, cols in windows(h, w, kh, kw, sh, sw, uh, uw):
        r = rng.randint(rows.start, rows.stop, size=(n, c))
        q = rng.randint(cols.start, cols.stop, size=(n, c))
        mask[:, :, ph, pw] = r * uw + q
    return mask


def input_layer(name, shape):
    dims = " ".join("dim: %d" % d for d in shape)
    return 'layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n' % (name, name, dims)


def run_case(workdir, name, method, shape, params, with_mask, rng):
    text = "force_backward: true\n" + input_layer("x", shape)
    bottoms = 'bottom: "x"'
    if with_mask:
        text += input_layer("m", shape)
        bottoms += ' bottom: "m"'
    fields = " ".join("%s: %s" % kv for kv in sorted(params.items()))
    text += 'layer { name: "u" type: "Unpooling" %s top: "y" unpooling_param { unpool: %s %s } }\n' % (
        bottoms, method, fields)
    path = os.path.join(workdir, name + ".prototxt")
    with open(path, "w") as f:
        f.write(text)
    net = caffe.Net(path, caffe.TEST)
    x = rng.randn(*shape)
    mask = random_switches(rng, shape, params) if with_mask else None
    net.blobs["x"].data[...] = x
    if with_mask:
        net.blobs["m"].data[...] = mask
    net.forward()
    y = net.blobs["y"].data.copy()
    dy = rng.randn(*y.shape)
    net.blobs["y"].diff[...] = dy
    net.backward()
    ref_y, ref_dx = reference(method, net.blobs["x"].data.astype(np.float64), mask, params, dy.astype(np.float32))
    result = {"shape": list(y.shape), "ref_shape": list(ref_y.shape)}
    if y.shape == ref_y.shape:
        result["forward"] = float(np.abs(y - ref_y).max())
        result["backward"] = float(np.abs(net.blobs["x"].diff - ref_dx).max())
        result["nonzero"] = int((y != 0).sum())
    if with_mask:
        result["mask_diff"] = float(np.abs(net.blobs["m"].diff).max())
    return result


def pool_unpool(workdir, rng):
    """Model 3: MAX pooling with a mask top, unpooling with it puts every maximum back."""
    shape = (2, 4, 24, 24)
    text = (input_layer("x", shape) +
            'layer { name: "pool1" type: "Pooling" bottom: "x" top: "p" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "unpool1" type: "Unpooling" bottom: "p" bottom: "mask" top: "y" '
            'unpooling_param { unpool: MAX kernel_size: 2 stride: 2 unpool_size: 24 } }\n')
    path = os.path.join(workdir, "pool_unpool.prototxt")
    with open(path, "w") as f:
        f.write(text)
    net = caffe.Net(path, caffe.TEST)
    x = rng.randn(*shape).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    y = net.blobs["y"].data
    blocks = x.reshape(2, 4, 12, 2, 12, 2)
    block_max = blocks.max(axis=(3, 5))
    is_max = blocks == block_max[:, :, :, None, :, None]
    expected = np.where(is_max, blocks, 0).reshape(shape)
    return {"maxima": int(block_max.size), "kept": int((y != 0).sum()),
            "error": float(np.abs(y - expected).max()), "shape": list(y.shape)}


def main():
    workdir = sys.argv[1]
    caffe.set_mode_cpu()
    rng = np.random.RandomState(20190101)
    report = {}
    for name, (method, shape, params, with_mask) in sorted(CASES.items()):
        report[name] = run_case(workdir, name, method, shape, params, with_mask, rng)
    report["pool_unpool"] = pool_unpool(workdir, rng)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
