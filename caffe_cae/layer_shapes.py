"""Top shapes and parameter counts of one layer from its bottoms' shapes: Caffe 1.0's
``Reshape`` rules for the layers a user of BVLC's examples meets, plus Noh's Unpooling.

``layer_shapes(net, layer)`` returns (tops, (weights, biases, term)) for a layer whose
bottoms ``net`` (a :class:`Net`) already knows; data and Input layers are
:mod:`caffe_cae.data_shapes`'s. A type without a rule here is refused by name (CaeError).
Parameters are the trained ones (w + b): BatchNorm's mean and variance are statistics,
counted 0.

Standard library and the generated protobuf module only.
"""
import math

from . import caffe_rules
from .errors import CaeError

#: types whose one top (or each top, in place or not) has the shape of their first bottom
PRESERVING = ("ReLU", "Sigmoid", "TanH", "Dropout", "LRN", "BatchNorm", "Softmax", "Power", "ELU", "AbsVal",
              "BNLL", "Exp", "Log", "Threshold", "MVN", "Split")
#: types whose tops are scalars (a loss, an accuracy)
LOSSES = ("SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "ContrastiveLoss", "HingeLoss",
          "InfogainLoss", "MultinomialLogisticLoss")


def count(dims):
    return int(math.prod(dims))


class Net:
    """What is known while walking a net: blob shapes, where errors point, the syntax."""

    def __init__(self, where, legacy):
        self.where = where
        self.legacy = legacy
        self.shapes = {}

    def at(self, layer):
        return f"{self.where}: layer {layer.name!r} ({layer.type})"

    def fail(self, layer, message):
        raise CaeError(f"{self.at(layer)}: {message}")

    def get(self, layer, blob):
        if blob not in self.shapes:
            self.fail(layer, f"bottom blob {blob!r} is not produced by any earlier layer")
        return self.shapes[blob]


def four(net, layer, shape):
    """N, C, H, W of a 4-D bottom (a V1-era 2-D fully-connected output counts as N x C x 1 x 1)."""
    if len(shape) == 4:
        return shape
    if len(shape) == 2 and net.legacy:
        return [shape[0], shape[1], 1, 1]
    net.fail(layer, f"expects a 4-D input (N x C x H x W), got {'x'.join(map(str, shape))}: "
                    "a fully-connected output needs the Reshape fix (caffe-cae upgrade)")


def _axis(net, layer, axis, shape):
    try:
        return caffe_rules.canonical_axis(axis, len(shape))
    except CaeError as exc:
        net.fail(layer, str(exc))


def _conv(net, layer, bottoms):
    p = layer.convolution_param
    (n, c, h, w) = four(net, layer, bottoms[0])
    (kh, kw), (sh, sw), (ph, pw) = caffe_rules.window(p, where=net.at(layer))
    dh, dw = caffe_rules.axis_pair(p, "dilation", default=1, where=net.at(layer))
    group, out_c = p.group, p.num_output
    if out_c < 1:
        net.fail(layer, "num_output must be at least 1")
    if c % group or out_c % group:
        net.fail(layer, f"group {group} does not divide {c} input and {out_c} output channels")
    if layer.type == "Convolution":
        if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
            net.fail(layer, f"kernel {kh}x{kw} is larger than its {h}x{w} input")
        oh, ow = caffe_rules.conv_out(h, kh, sh, ph, dh), caffe_rules.conv_out(w, kw, sw, pw, dw)
    else:
        oh, ow = caffe_rules.deconv_out(h, kh, sh, ph, dh), caffe_rules.deconv_out(w, kw, sw, pw, dw)
        if oh < 1 or ow < 1:
            net.fail(layer, f"padding {ph}x{pw} leaves no output for kernel {kh}x{kw}")
    weights = kh * kw * (c // group) * out_c
    biases = out_c if p.bias_term else 0
    term = f"(({kh}*{kw}w+{1 if biases else 0}b)*{c}i*{out_c}o)"
    return [[n, out_c, oh, ow]], (weights, biases, term)


def _inner_product(net, layer, bottoms):
    p = layer.inner_product_param
    shape = bottoms[0]
    axis = _axis(net, layer, p.axis, shape)
    inputs, out = count(shape[axis:]), p.num_output
    if out < 1:
        net.fail(layer, "num_output must be at least 1")
    top = shape[:axis] + [out]
    if net.legacy:
        top = top + [1, 1]
    biases = out if p.bias_term else 0
    return [top], (inputs * out, biases, f"({inputs}i*{out}o+{biases}b)")


def _pooling(net, layer, bottoms):
    p = layer.pooling_param
    (n, c, h, w) = four(net, layer, bottoms[0])
    kernel, (sh, sw), (ph, pw) = caffe_rules.window(p, p.global_pooling, net.at(layer))
    kh, kw = kernel or (h, w)
    if h + 2 * ph < kh or w + 2 * pw < kw:
        net.fail(layer, f"kernel {kh}x{kw} is larger than its {h}x{w} input")
    ceil = p.round_mode == p.CEIL
    oh, ow = caffe_rules.pool_out(h, kh, sh, ph, ceil), caffe_rules.pool_out(w, kw, sw, pw, ceil)
    return [[n, c, oh, ow] for _ in layer.top], None


def _unpooling(net, layer, bottoms):
    p = layer.unpooling_param
    (n, c, h, w) = four(net, layer, bottoms[0])
    (kh, kw), (sh, sw), (ph, pw) = caffe_rules.window(p, where=net.at(layer))
    if ph or pw:
        net.fail(layer, "unpooling pad other than 0 is not supported")
    explicit = caffe_rules.unpool_explicit(p)
    oh, ow = explicit or (caffe_rules.unpool_out(h, kh, sh), caffe_rules.unpool_out(w, kw, sw))
    if (h - 1) * sh + 1 > oh or (w - 1) * sw + 1 > ow:
        net.fail(layer, f"unpooled size {oh}x{ow} is too small for a {h}x{w} input with stride {sh}")
    if len(bottoms) > 1 and bottoms[1] != bottoms[0]:
        net.fail(layer, f"mask {layer.bottom[1]!r} {bottoms[1]} differs from input {bottoms[0]}")
    return [[n, c, oh, ow]], None


def _prelu(net, layer, bottoms):
    channels = 1 if layer.prelu_param.channel_shared else bottoms[0][1]
    return [list(bottoms[0])], (channels, 0, f"({channels}w)")


def _scale(net, layer, bottoms):
    p = layer.scale_param
    shape = bottoms[0]
    axis = _axis(net, layer, p.axis, shape)
    scale = shape[axis:] if p.num_axes == -1 else shape[axis:axis + p.num_axes]
    if len(bottoms) > 1:  # the factors are the second bottom, not a parameter
        scale = bottoms[1]
    size = 0 if len(bottoms) > 1 else count(scale)
    biases = count(scale) if p.bias_term else 0
    return [list(shape)], (size, biases, f"({size}w+{biases}b)" if size or biases else "")


def _flatten(net, layer, bottoms):
    p, shape = layer.flatten_param, bottoms[0]
    start, end = _axis(net, layer, p.axis, shape), _axis(net, layer, p.end_axis, shape)
    return [shape[:start] + [count(shape[start:end + 1])] + shape[end + 1:]], None


def _reshape(net, layer, bottoms):
    p, shape = layer.reshape_param, bottoms[0]
    dims = list(p.shape.dim)
    axis = p.axis if p.axis >= 0 else len(shape) + p.axis + 1
    end = len(shape) if p.num_axes == -1 else axis + p.num_axes
    head, middle, tail = shape[:axis], shape[axis:end], shape[end:]
    out = []
    for i, d in enumerate(dims):
        if d == 0:
            if i >= len(middle):
                net.fail(layer, "reshape copies an axis the input does not have")
            out.append(middle[i])
        else:
            out.append(d)
    if out.count(-1) > 1:
        net.fail(layer, "reshape infers more than one axis")
    total = count(middle)
    if -1 in out:
        out[out.index(-1)] = total // count([d for d in out if d != -1])
    if count(out) != total:
        net.fail(layer, f"reshape of {total} elements to {out}")
    return [head + out + tail], None


def _slice(net, layer, bottoms):
    p, shape = layer.slice_param, bottoms[0]
    axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
    axis = _axis(net, layer, axis, shape)
    points = [0] + list(p.slice_point) + [shape[axis]]
    if len(p.slice_point) == 0:
        if shape[axis] % len(layer.top):
            net.fail(layer, f"{shape[axis]} does not split into {len(layer.top)} equal slices")
        size = shape[axis] // len(layer.top)
        points = [i * size for i in range(len(layer.top) + 1)]
    if len(points) - 1 != len(layer.top):
        net.fail(layer, f"{len(p.slice_point)} slice points for {len(layer.top)} tops")
    tops = []
    for start, stop in zip(points, points[1:]):
        if stop <= start:
            net.fail(layer, f"slice points {list(p.slice_point)} are not increasing inside {shape[axis]}")
        tops.append(shape[:axis] + [stop - start] + shape[axis + 1:])
    return tops, None


def _concat(net, layer, bottoms):
    p = layer.concat_param
    axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
    axis = _axis(net, layer, axis, bottoms[0])
    for name, shape in zip(layer.bottom, bottoms):
        if len(shape) != len(bottoms[0]) or shape[:axis] + shape[axis + 1:] != bottoms[0][:axis] + bottoms[0][axis + 1:]:
            net.fail(layer, f"bottom {name!r} {shape} does not match {bottoms[0]} outside axis {axis}")
    return [bottoms[0][:axis] + [sum(b[axis] for b in bottoms)] + bottoms[0][axis + 1:]], None


def _eltwise(net, layer, bottoms):
    for name, shape in zip(layer.bottom, bottoms):
        if shape != bottoms[0]:
            net.fail(layer, f"bottom {name!r} {shape} differs from {bottoms[0]}")
    return [list(bottoms[0])], None


def _accuracy(net, layer, bottoms):
    tops = [[]]
    if len(layer.top) > 1:  # per-class accuracies
        axis = _axis(net, layer, layer.accuracy_param.axis, bottoms[0])
        tops.append([bottoms[0][axis]])
    return tops, None


def _loss(net, layer, bottoms):
    if layer.type in ("SigmoidCrossEntropyLoss", "EuclideanLoss") and count(bottoms[0]) != count(bottoms[1]):
        net.fail(layer, f"inputs {bottoms[0]} and {bottoms[1]} differ in size")
    return [[] for _ in layer.top], None


RULES = {
    "Convolution": _conv, "Deconvolution": _conv, "InnerProduct": _inner_product, "Pooling": _pooling,
    "Unpooling": _unpooling, "PReLU": _prelu, "Scale": _scale, "Flatten": _flatten, "Reshape": _reshape,
    "Slice": _slice, "Concat": _concat, "Eltwise": _eltwise, "Accuracy": _accuracy,
    "Silence": lambda net, layer, bottoms: ([], None),
}
RULES.update({t: _loss for t in LOSSES})
RULES.update({t: (lambda net, layer, bottoms: ([list(bottoms[0]) for _ in layer.top], None)) for t in PRESERVING})


def layer_shapes(net, layer):
    """(tops, (weights, biases, term)) of a layer that is not a data layer."""
    rule = RULES.get(layer.type)
    if rule is None:
        net.fail(layer, f"type {layer.type!r} has no shape rule in caffe-cae inspect")
    bottoms = [net.get(layer, b) for b in layer.bottom]
    if not bottoms and layer.type != "Silence":
        net.fail(layer, "has no bottom")
    tops, params = rule(net, layer, bottoms)
    if len(tops) != len(layer.top):
        net.fail(layer, f"expects {len(tops)} top(s), has {len(layer.top)}")
    return tops, params or (0, 0, "")
