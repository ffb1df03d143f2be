"""Blob shapes, parameter counts and the paper's size figures, from a parsed net alone.

``inspect_net(path_or_text)`` returns a dict (see ``caffe-cae inspect --json``):

* ``params``: weights + biases of every layer; as in the paper's Tables 1-3 a layer that
  shares its parameters (the Siamese net's second channel) is counted again, and
  ``unique_params`` counts each shared blob once;
* ``model_size``: Table 1's fourth column, the elements of all feature maps and hidden
  nodes of one sample: every top of a Convolution, Deconvolution, InnerProduct, Pooling
  (not its mask) or Unpooling layer, except a top the size of the input image (the
  reconstruction);
* ``blobs``: {name: dims} for batch N; ``layers``: per-layer output, weights, biases and
  the Table 3 term, e.g. ``(5*5w+1b)*26i*36o``;
* ``compression``: Section 5.1. The code is the smallest top of a weighted layer; a switch
  model's MAX pooling masks that feed Unpooling layers cost floor(log2(positions)) bits each
  (the paper's "at least"), e.g. Model 3 at D=2: 8 + 4212 + 432 = 4652 bytes. ``compression``
  (the function) is the one rule: ``caffe-cae analyze`` takes its figure from it.

Limits: HDF5Data tops are taken to be MNIST (``data`` N x 1 x 28 x 28, ``pair_data`` N x 2
x 28 x 28, anything else N), since their shapes live in the data files; train_test nets
are inspected in their TRAIN phase (``caffe_rules.active_layers``). Layer types outside the
table in ``_shape`` raise CaeError.
"""
import math

from . import caffe_rules
from .errors import CaeError
from .schema import parse_net, syntax_of
from .upgrade import upgrade

#: MNIST's training set, 60000 x 784: the paper's |Data| for the Data/(w+b) ratio.
DATA_ELEMENTS = 60000 * 784
#: one MNIST image, 784 bytes: Section 5.1's reference size
IMAGE_BYTES = 784

_WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct")
_HIDDEN = _WEIGHTED + ("Pooling", "Unpooling")


def _count(dims):
    return int(math.prod(dims))


class _Net:
    def __init__(self, where, legacy):
        self.where = where
        self.legacy = legacy
        self.shapes = {}

    def fail(self, layer, message):
        raise CaeError(f"{self.at(layer)}: {message}")

    def at(self, layer):
        return f"{self.where}: layer {layer.name!r}"

    def get(self, layer, blob):
        if blob not in self.shapes:
            self.fail(layer, f"bottom blob {blob!r} is not produced by any earlier layer")
        return self.shapes[blob]


def _shape(net, layer, batch):
    """Top shapes and (weights, biases, term) of one layer."""
    t = layer.type
    bottoms = [net.get(layer, b) for b in layer.bottom]
    none = (0, 0, "")
    if t == "HDF5Data":
        size = layer.hdf5_data_param.batch_size or batch
        tops = []
        for top in layer.top:
            tops.append({"data": [size, 1, 28, 28], "pair_data": [size, 2, 28, 28]}.get(top, [size]))
        return tops, none
    if t == "Input":
        shapes = [list(s.dim) for s in layer.input_param.shape]
        if not shapes:
            net.fail(layer, "Input layer without a shape")
        if len(shapes) == 1:
            shapes = shapes * len(layer.top)
        return shapes, none
    if t in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        (n, c, h, w) = _four(net, layer, bottoms[0])
        (kh, kw), (sh, sw), (ph, pw) = caffe_rules.window(p, where=net.at(layer))
        group = p.group or 1
        out_c = p.num_output
        if out_c < 1:
            net.fail(layer, "num_output must be at least 1")
        if t == "Convolution":
            if h + 2 * ph < kh or w + 2 * pw < kw:
                net.fail(layer, f"kernel {kh}x{kw} is larger than its {h}x{w} input")
            oh, ow = caffe_rules.conv_out(h, kh, sh, ph), caffe_rules.conv_out(w, kw, sw, pw)
        else:
            oh, ow = caffe_rules.deconv_out(h, kh, sh, ph), caffe_rules.deconv_out(w, kw, sw, pw)
            if oh < 1 or ow < 1:
                net.fail(layer, f"padding {ph}x{pw} leaves no output for kernel {kh}x{kw}")
        weights = kh * kw * (c // group) * out_c
        biases = out_c if p.bias_term else 0
        term = f"(({kh}*{kw}w+{1 if biases else 0}b)*{c}i*{out_c}o)"
        return [[n, out_c, oh, ow]], (weights, biases, term)
    if t == "InnerProduct":
        p = layer.inner_product_param
        shape = bottoms[0]
        axis = p.axis if p.axis >= 0 else len(shape) + p.axis
        inputs = _count(shape[axis:])
        out = p.num_output
        if out < 1:
            net.fail(layer, "num_output must be at least 1")
        top = shape[:axis] + [out]
        if net.legacy:
            top = top + [1, 1]
        biases = out if p.bias_term else 0
        return [top], (inputs * out, biases, f"({inputs}i*{out}o+{biases}b)")
    if t == "Pooling":
        p = layer.pooling_param
        (n, c, h, w) = _four(net, layer, bottoms[0])
        kernel, (sh, sw), (ph, pw) = caffe_rules.window(p, p.global_pooling, net.at(layer))
        kh, kw = kernel or (h, w)
        if h + 2 * ph < kh or w + 2 * pw < kw:
            net.fail(layer, f"kernel {kh}x{kw} is larger than its {h}x{w} input")
        oh, ow = caffe_rules.pool_out(h, kh, sh, ph), caffe_rules.pool_out(w, kw, sw, pw)
        return [[n, c, oh, ow] for _ in layer.top], none
    if t == "Unpooling":
        p = layer.unpooling_param
        (n, c, h, w) = _four(net, layer, bottoms[0])
        (kh, kw), (sh, sw), (ph, pw) = caffe_rules.window(p, where=net.at(layer))
        if ph or pw:
            net.fail(layer, "unpooling pad other than 0 is not supported")
        explicit = caffe_rules.unpool_explicit(p)
        oh, ow = explicit or (caffe_rules.unpool_out(h, kh, sh), caffe_rules.unpool_out(w, kw, sw))
        if (h - 1) * sh + 1 > oh or (w - 1) * sw + 1 > ow:
            net.fail(layer, f"unpooled size {oh}x{ow} is too small for a {h}x{w} input with stride {sh}")
        if len(bottoms) > 1 and bottoms[1] != bottoms[0]:
            net.fail(layer, f"mask {layer.bottom[1]!r} {bottoms[1]} differs from input {bottoms[0]}")
        return [[n, c, oh, ow]], none
    if t in ("Sigmoid", "TanH", "ReLU", "Dropout", "Power", "ELU", "AbsVal", "BNLL", "Exp", "Threshold"):
        return [list(bottoms[0]) for _ in layer.top], none
    if t == "PReLU":
        channels = 1 if layer.prelu_param.channel_shared else bottoms[0][1]
        return [list(bottoms[0])], (channels, 0, f"({channels}w)")
    if t in ("Softmax",):
        return [list(bottoms[0])], none
    if t == "Split":
        return [list(bottoms[0]) for _ in layer.top], none
    if t == "Flatten":
        p = layer.flatten_param
        shape = bottoms[0]
        start = p.axis if p.axis >= 0 else len(shape) + p.axis
        end = p.end_axis if p.end_axis >= 0 else len(shape) + p.end_axis
        return [shape[:start] + [_count(shape[start:end + 1])] + shape[end + 1:]], none
    if t == "Reshape":
        return [_reshape(net, layer, bottoms[0])], none
    if t == "Slice":
        p = layer.slice_param
        shape = bottoms[0]
        axis = p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim
        axis = axis if axis >= 0 else len(shape) + axis
        points = [0] + list(p.slice_point) + [shape[axis]]
        if len(p.slice_point) == 0:
            size = shape[axis] // len(layer.top)
            points = [i * size for i in range(len(layer.top) + 1)]
        if len(points) - 1 != len(layer.top):
            net.fail(layer, f"{len(p.slice_point)} slice points for {len(layer.top)} tops")
        tops = []
        for start, stop in zip(points, points[1:]):
            top = list(shape)
            top[axis] = stop - start
            tops.append(top)
        return tops, none
    if t == "Concat":
        axis = layer.concat_param.axis
        shape = list(bottoms[0])
        shape[axis] = sum(b[axis] for b in bottoms)
        return [shape], none
    if t == "Eltwise":
        return [list(bottoms[0])], none
    if t in ("SigmoidCrossEntropyLoss", "EuclideanLoss"):
        if _count(bottoms[0]) != _count(bottoms[1]):
            net.fail(layer, f"inputs {bottoms[0]} and {bottoms[1]} differ in size")
        return [[] for _ in layer.top], none
    if t in ("ContrastiveLoss", "SoftmaxWithLoss", "Accuracy", "MultinomialLogisticLoss", "HingeLoss",
             "InfogainLoss"):
        return [[] for _ in layer.top], none
    if t == "Silence":
        return [], none
    net.fail(layer, f"type {t!r} is not known to caffe-cae inspect")


def _four(net, layer, shape):
    if len(shape) == 4:
        return shape
    if len(shape) == 2 and net.legacy:
        return [shape[0], shape[1], 1, 1]
    net.fail(layer, f"expects a 4-D input (N x C x H x W), got {'x'.join(map(str, shape))}: "
                    "a fully-connected output needs the Reshape fix (caffe-cae upgrade)")


def _reshape(net, layer, shape):
    p = layer.reshape_param
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
    total = _count(middle)
    if -1 in out:
        known = _count([d for d in out if d != -1])
        out[out.index(-1)] = total // known
    if _count(out) != total:
        net.fail(layer, f"reshape of {total} elements to {out}")
    return head + out + tail


def analyse(net, where="<net>", batch=100):
    """The inspect dict for a parsed NetParameter (either syntax)."""
    legacy = syntax_of(net) == "legacy"
    # Legacy shapes as the V1 era had them: upgraded without the Reshape fix, and
    # fully-connected outputs kept 4-D (see _shape).
    modern = upgrade(net, reshape_fix=False) if legacy else caffe_rules.with_input_layer(net)
    state = _Net(where, legacy)
    layers_out = []
    params = unique = 0
    shared = set()
    producers = {}
    image_counts = set()
    for layer in caffe_rules.active_layers(modern, "train"):
        tops, (weights, biases, term) = _shape(state, layer, batch)
        for name, dims in zip(layer.top, tops):
            state.shapes[name] = dims
            if name not in layer.bottom:
                producers[name] = layer
            if layer.type in ("HDF5Data", "Input", "Slice") and len(dims) == 4:
                image_counts.add(_count(dims[1:]))
        params += weights + biases
        names = [p.name for p in layer.param]
        key = tuple(names) if names and all(names) else None
        if key is None or key not in shared:
            unique += weights + biases
            if key:
                shared.add(key)
        layers_out.append({
            "name": layer.name, "type": layer.type, "bottom": list(layer.bottom), "top": list(layer.top),
            "output": tops[0] if tops else [], "weights": weights, "biases": biases, "term": term,
        })
    hidden = []
    for name, layer in producers.items():
        if layer.type not in _HIDDEN:
            continue
        if layer.type == "Pooling" and name != layer.top[0]:
            continue
        per_sample = _count(state.shapes[name][1:])
        if per_sample in image_counts:
            continue
        hidden.append((name, per_sample))
    model_size = sum(size for _, size in hidden)
    result = {
        "file": where, "name": net.name, "syntax": "legacy" if legacy else "modern",
        "params": params, "unique_params": unique, "model_size": model_size,
        "data_ratio": round(DATA_ELEMENTS / params) if params else None,
        "blobs": {name: dims for name, dims in state.shapes.items()},
        "hidden": dict(hidden),
        "layers": layers_out,
    }
    result["compression"] = _compression(state, producers, modern, image_counts)
    return result


def _compression(state, producers, net, image_counts):
    weighted = [(name, _count(state.shapes[name][1:])) for name, layer in producers.items()
                if layer.type in _WEIGHTED and _count(state.shapes[name][1:]) not in image_counts]
    if not weighted:
        return None
    code_blob, code_dim = min(weighted, key=lambda item: item[1])
    unpool_masks = {layer.bottom[1] for layer in net.layer if layer.type == "Unpooling" and len(layer.bottom) > 1}
    switches = {}
    for name, layer in producers.items():
        if layer.type == "Pooling" and len(layer.top) > 1 and layer.top[1] == name and name in unpool_masks:
            bottom = state.shapes[layer.bottom[0]]
            switches[name] = {"count": _count(state.shapes[name][1:]), "positions": bottom[2] * bottom[3]}
    out = {"code_blob": code_blob, "code_dim": code_dim}
    out.update(compression(code_dim, switches, min(image_counts) if image_counts else IMAGE_BYTES))
    return out


def switch_bits(positions):
    """Bits per switch as the paper counts them ("at least"): floor(log2(positions in the pooled map))."""
    return int(math.floor(math.log2(positions)))


def compression(code_dim, switches=None, image_bytes=IMAGE_BYTES):
    """Section 5.1 for a code of ``code_dim`` floats plus pooling ``switches`` ({mask: {"count",
    "positions"}}, bits from ``switch_bits``): image, code, switch and total bytes and the
    ratio in % (1 - total / image bytes, two decimals)."""
    code_bytes = 4 * int(code_dim)
    switches = {name: {"count": int(s["count"]), "bits": switch_bits(s["positions"]),
                       "positions": int(s["positions"])} for name, s in (switches or {}).items()}
    for s in switches.values():
        s["bytes"] = s["count"] * s["bits"] / 8.0
    total = code_bytes + sum(s["bytes"] for s in switches.values())
    return {"image_bytes": image_bytes, "code_bytes": code_bytes, "switches": switches,
            "switch_bytes": total - code_bytes, "total_bytes": total,
            "ratio_percent": round(100.0 * (1.0 - total / image_bytes), 2)}


def inspect_net(source, batch=100):
    """Parse a net (path or text) and analyse it."""
    where = str(source) if "\n" not in str(source) else "<text>"
    return analyse(parse_net(source), where=where, batch=batch)


def format_table(info):
    """A text table in the style of the paper's Tables 1 and 3."""
    lines = [f"{info['file']} ({info['syntax']} syntax, net {info['name']!r})", ""]
    header = f"{'layer':<16} {'type':<24} {'output (HxWxC)':<16} {'weights':>9} {'biases':>7}  term"
    lines += [header, "-" * len(header)]
    for layer in info["layers"]:
        out = layer["output"]
        if len(out) == 4:
            shown = f"{out[2]}x{out[3]}x{out[1]}"
        elif len(out) >= 2:
            shown = "x".join(map(str, out[1:]))
        else:
            shown = "-" if not out else str(out[0])
        lines.append(f"{layer['name']:<16} {layer['type']:<24} {shown:<16} {layer['weights']:>9} "
                     f"{layer['biases']:>7}  {layer['term']}")
    lines.append("")
    lines.append(f"trainable parameters |w+b|: {info['params']}"
                 + (f" ({info['unique_params']} unique)" if info["unique_params"] != info["params"] else ""))
    lines.append(f"model size (elements):      {info['model_size']}  = "
                 + "-".join(str(v) for v in info["hidden"].values()))
    if info["data_ratio"]:
        lines.append(f"|Data/(w+b)| (MNIST train): {info['data_ratio']}")
    comp = info["compression"]
    if comp:
        text = f"code: {comp['code_blob']} ({comp['code_dim']} floats, {comp['code_bytes']} bytes)"
        if comp["switches"]:
            parts = " + ".join(f"{name} {s['count']} x {s['bits']} bits = {s['bytes']:g} bytes"
                               for name, s in comp["switches"].items())
            text += f"; switches: {parts}; total {comp['total_bytes']:g} bytes"
        lines.append(text)
        lines.append(f"compression vs a {comp['image_bytes']}-byte image: {comp['ratio_percent']:+.1f} %")
    return "\n".join(lines)
