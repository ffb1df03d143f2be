"""Caffe's first net upgrade: V0 layers (a ``layer {}`` record inside each V1 ``layers {}``,
string types such as "conv", flat parameters) to V1 layers.

``upgrade_v0_net(net)`` does what Caffe 1.0's ``UpgradeV0Net`` does: a "padding" layer is
folded into the convolution or pooling layer it feeds (its ``pad``, and the padding layer's
bottom as that layer's bottom); each V0 layer becomes a V1 layer of the matching enum type,
its flat parameters moved into the type's parameter message (``kernelsize`` into
``convolution_param.kernel_size`` or ``pooling_param.kernel_size``, ``scale`` /
``meanfile`` / ``cropsize`` / ``mirror`` into ``transform_param``, ...); the net keeps its
name, inputs and ``force_backward``.

Where Caffe would drop something (a parameter the layer type has no place for, a V0 field
without a V1 counterpart, a V1 field beside the V0 record, a net field a V0 net cannot carry)
or stop (an unknown type, a padding layer feeding anything but one convolution or pooling),
CaeError names the layer and the field instead.
"""
from .errors import CaeError
from .proto import caffe_cae_pb2 as pb

#: V0 type string -> V1 enum name (Caffe's UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

_CONV_IP = ("convolution_param", "inner_product_param")
_DATA4 = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
          "window_data": "window_data_param"}


def _for(types, params, field):
    return {t: "%s.%s" % (p, field) for t, p in zip(types, params)}


#: V0 field -> {V0 type ("*": any type): "message.field" of the V1 layer it moves to}.
V0_FIELDS = {
    "num_output": _for(("conv", "innerproduct"), _CONV_IP, "num_output"),
    "biasterm": _for(("conv", "innerproduct"), _CONV_IP, "bias_term"),
    "weight_filler": _for(("conv", "innerproduct"), _CONV_IP, "weight_filler"),
    "bias_filler": _for(("conv", "innerproduct"), _CONV_IP, "bias_filler"),
    "pad": _for(("conv", "pool"), ("convolution_param", "pooling_param"), "pad"),
    "kernelsize": _for(("conv", "pool"), ("convolution_param", "pooling_param"), "kernel_size"),
    "stride": _for(("conv", "pool"), ("convolution_param", "pooling_param"), "stride"),
    "group": {"conv": "convolution_param.group"},
    "pool": {"pool": "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": dict(_for(_DATA4, _DATA4.values(), "source"), infogain_loss="infogain_loss_param.source"),
    "batchsize": _for(_DATA4, _DATA4.values(), "batch_size"),
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
    "scale": {"*": "transform_param.scale"},
    "meanfile": {"*": "transform_param.mean_file"},
    "cropsize": {"*": "transform_param.crop_size"},
    "mirror": {"*": "transform_param.mirror"},
}

#: V0 fields copied as they are (name and type are handled on their own).
_COMMON = ("blobs", "blobs_lr", "weight_decay")
#: Net fields a V0 net keeps (UpgradeV0Net copies only these).
_NET_KEPT = ("name", "layers", "input", "input_dim", "force_backward")


def needs_v0_upgrade(net):
    """Caffe's NetNeedsV0ToV1Upgrade: some V1 record holds a V0 ``layer``."""
    return any(v1.HasField("layer") for v1 in net.layers)


def _label(index, v1):
    name = v1.layer.name or v1.name
    return "layer %s" % name if name else "layers[%d]" % index


def _put(layer, target, value):
    """Set ``message.field`` of ``layer`` to ``value`` (append when repeated, copy a message)."""
    holder, _, field = target.rpartition(".")
    message = getattr(layer, holder) if holder else layer
    current = getattr(message, field)
    if hasattr(current, "append"):
        current.append(value)
    elif hasattr(current, "CopyFrom"):
        current.CopyFrom(value)
    else:
        setattr(message, field, value)


def fold_padding(net):
    """Caffe's UpgradeV0PaddingLayers: a copy of ``net`` without its "padding" layers, each
    folded into the convolution or pooling layer that reads its output."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top = {name: None for name in net.input}  # blob -> index of the layer that wrote it last
    for i, v1 in enumerate(net.layers):
        kind = v1.layer.type
        if kind != "padding":
            out.layers.add().CopyFrom(v1)
        for j, blob in enumerate(v1.bottom):
            if blob not in last_top:
                raise CaeError("%s: bottom %r is no input and no earlier layer's top" % (_label(i, v1), blob))
            source = last_top[blob]
            if source is None or net.layers[source].layer.type != "padding":
                continue
            pad = net.layers[source]
            if kind not in ("conv", "pool") or len(v1.bottom) != 1:
                raise CaeError("%s: a padding layer (%s) feeds it; Caffe folds padding only into a conv or pool "
                               "layer with one bottom" % (_label(i, v1), _label(source, pad)))
            if len(pad.bottom) != 1 or len(pad.top) != 1:
                raise CaeError("%s: a padding layer needs one bottom and one top" % _label(source, pad))
            folded = out.layers[len(out.layers) - 1]
            folded.layer.pad = pad.layer.pad
            folded.bottom[j] = pad.bottom[0]
        for blob in v1.top:
            last_top[blob] = i
    return out


def upgrade_v0_layer(index, v1):
    """The V1 layer for one V1 record holding a V0 ``layer`` (Caffe's UpgradeV0LayerParameter)."""
    where = _label(index, v1)
    extra = [f.name for f, _ in v1.ListFields() if f.name not in ("bottom", "top", "layer")]
    if extra:
        raise CaeError("%s: V1 field %s beside a V0 `layer` record (Caffe's V0 upgrade drops it)"
                       % (where, extra[0]))
    v0 = v1.layer
    out = pb.V1LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_TYPES:
            raise CaeError("%s: unknown V0 layer type %r" % (where, v0.type))
        out.type = pb.V1LayerParameter.LayerType.Value(V0_TYPES[v0.type])
    for field, value in v0.ListFields():
        name = field.name
        if name in ("name", "type"):
            continue
        if name in _COMMON:
            getattr(out, name).extend(value)
            continue
        targets = V0_FIELDS.get(name)
        if targets is None:
            raise CaeError("%s: V0 field %s has no counterpart in Caffe 1.0" % (where, name))
        target = targets.get("*") or targets.get(v0.type)
        if target is None:
            raise CaeError("%s: V0 field %s does not apply to type %r (Caffe's upgrade drops it)"
                           % (where, name, v0.type))
        _put(out, target, value)
    return out


def upgrade_v0_net(net):
    """A V1 net from a V0 one (Caffe's UpgradeV0Net): padding folded, every layer upgraded."""
    extra = [f.name for f, _ in net.ListFields() if f.name not in _NET_KEPT]
    if extra:
        raise CaeError("net %s: field %s in a net with V0 layers (Caffe's V0 upgrade drops it)"
                       % (net.name, extra[0]))
    padded = fold_padding(net)
    out = pb.NetParameter()
    for name in _NET_KEPT:
        if name == "layers":
            out.layers.extend(upgrade_v0_layer(i, v1) for i, v1 in enumerate(padded.layers))
        elif name in ("input", "input_dim"):
            getattr(out, name).extend(getattr(padded, name))
        elif padded.HasField(name):
            setattr(out, name, getattr(padded, name))
    return out
