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

Shapes are inferred only from what is known: the inputs' shapes by
:mod:`caffe_cae.data_shapes` (``--input-shape``, the layer, the file it reads, the project's
MNIST layout), every other layer's by :mod:`caffe_cae.layer_shapes` (Caffe 1.0's rules); an
unknown input shape or layer type raises a one-line CaeError naming the layer. train_test
nets are inspected in their TRAIN phase (``caffe_rules.active_layers``; ``phase="test"`` and
``stages`` choose another NetState). A file without a
layer or input is an error.

The paper's figures are given only where they mean something:

* ``data_ratio`` (|Data|/(w+b), |Data| = MNIST's 60000 x 784 training set): the project's
  own nets (``data_shapes.is_project_net``), whose data is MNIST; else None;
* ``compression``: auto-encoders only (``autoencoder``): a net whose last weighted layer
  outputs as many elements per sample as one of its inputs (its reconstruction); else None.
"""
import math

from . import caffe_rules, data_shapes, layer_shapes
from .errors import CaeError
from .layer_shapes import count
from .schema import parse_net, syntax_of
from .upgrade import upgrade

#: MNIST's training set, 60000 x 784: the paper's |Data| for the Data/(w+b) ratio.
DATA_ELEMENTS = 60000 * 784
#: one MNIST image, 784 bytes: Section 5.1's reference size
IMAGE_BYTES = 784

_WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct")
_HIDDEN = _WEIGHTED + ("Pooling", "Unpooling")


def analyse(net, where="<net>", batch=100, input_shapes=None, phase="train", stages=()):
    """The inspect dict for a parsed NetParameter (either syntax); ``input_shapes``:
    {top: dims} from ``--input-shape``; ``phase`` ("train" or "test") and ``stages``: the
    NetState whose layers are taken."""
    if not (len(net.layer) or len(net.layers) or len(net.input)):
        raise CaeError(f"{where}: no net in this file (no layer, no input): expected a Caffe net in text format")
    given = dict(input_shapes or {})
    legacy = syntax_of(net) == "legacy"
    project = data_shapes.is_project_net(net)
    # Legacy shapes as the V1 era had them: upgraded without the Reshape fix, and
    # fully-connected outputs kept 4-D (layer_shapes).
    modern = upgrade(net, reshape_fix=False) if legacy else caffe_rules.with_input_layer(net)
    state = layer_shapes.Net(where, legacy)
    layers_out = []
    params = unique = 0
    shared = set()
    producers = {}
    inputs, image_counts = set(), set()
    for layer in caffe_rules.active_layers(modern, phase, stages):
        if layer.type in data_shapes.TYPES:
            tops, (weights, biases, term) = data_shapes.input_shapes(state.at(layer), layer, batch, given, project), \
                (0, 0, "")
            inputs.update(layer.top)
        else:
            tops, (weights, biases, term) = layer_shapes.layer_shapes(state, layer)
        images = layer.type in data_shapes.TYPES or (layer.type == "Slice" and set(layer.bottom) <= inputs)
        for name, dims in zip(layer.top, tops):
            state.shapes[name] = dims
            if name not in layer.bottom:
                producers[name] = layer
            if images and len(dims) >= 2:
                image_counts.add(count(dims[1:]))
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
    unused = sorted(set(given) - inputs)
    if unused:
        raise CaeError(f"--input-shape {unused[0]}: no data or Input layer of {where} has a top of that name")
    hidden = []
    for name, layer in producers.items():
        if layer.type not in _HIDDEN:
            continue
        if layer.type == "Pooling" and name != layer.top[0]:
            continue
        per_sample = count(state.shapes[name][1:])
        if per_sample in image_counts:
            continue
        hidden.append((name, per_sample))
    weighted = [name for name, layer in producers.items() if layer.type in _WEIGHTED]
    autoencoder = bool(weighted) and count(state.shapes[weighted[-1]][1:]) in image_counts
    return {
        "file": where, "name": net.name, "syntax": "legacy" if legacy else "modern",
        "params": params, "unique_params": unique, "model_size": sum(size for _, size in hidden),
        "project_net": project, "autoencoder": autoencoder,
        "data_ratio": round(DATA_ELEMENTS / params) if params and project else None,
        "blobs": {name: dims for name, dims in state.shapes.items()},
        "hidden": dict(hidden),
        "layers": layers_out,
        "compression": _compression(state, producers, modern, image_counts) if autoencoder else None,
    }


def _compression(state, producers, net, image_counts):
    weighted = [(name, count(state.shapes[name][1:])) for name, layer in producers.items()
                if layer.type in _WEIGHTED and count(state.shapes[name][1:]) not in image_counts]
    if not weighted:
        return None
    code_blob, code_dim = min(weighted, key=lambda item: item[1])
    unpool_masks = {layer.bottom[1] for layer in net.layer if layer.type == "Unpooling" and len(layer.bottom) > 1}
    switches = {}
    for name, layer in producers.items():
        if layer.type == "Pooling" and len(layer.top) > 1 and layer.top[1] == name and name in unpool_masks:
            bottom = state.shapes[layer.bottom[0]]
            switches[name] = {"count": count(state.shapes[name][1:]), "positions": bottom[2] * bottom[3]}
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


def inspect_net(source, batch=100, input_shapes=None, phase="train", stages=()):
    """Parse a net (path or text) and analyse it."""
    where = str(source) if "\n" not in str(source) else "<text>"
    return analyse(parse_net(source), where=where, batch=batch, input_shapes=input_shapes, phase=phase,
                   stages=stages)


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
