"""Caffe's own rules, written once, for every module that reads a net without Caffe.

* ``active_layers(net, phase, stages, level)``: the layers Caffe's ``Net::FilterNet`` keeps
  for a NetState (``include`` / ``exclude`` NetStateRules: phase, min/max level, stage,
  not_stage; a layer with both kinds of rule is refused, as Caffe refuses it);
* ``window(param)``: (kernel, stride, pad) of a Convolution, Pooling or Unpooling parameter
  (``*_h`` / ``*_w`` or the shared field, defaults 1 and 0); ``canonical_axis``;
* ``conv_out``, ``deconv_out``, ``pool_out``, ``unpool_out``: output sizes along one axis
  (pooling rounds up and drops a last window that starts in the padding, as
  ``PoolingLayer::Reshape``; unpooling is the engine's ``UnpoolingLayer::Reshape``);
  ``unpool_explicit(param)``: an UnpoolingParameter's fixed output size, if any;
* ``with_input_layer(net)``: a net's V1-era ``input`` / ``input_dim`` / ``input_shape``
  turned into an Input layer named "input" in front of the layers, as Caffe's upgrade does.

Standard library and the generated protobuf module only.
"""
from .errors import CaeError
from .proto import caffe_cae_pb2 as pb

#: phase names and enum values -> the enum value
PHASES = {"train": pb.TRAIN, "test": pb.TEST, "TRAIN": pb.TRAIN, "TEST": pb.TEST, pb.TRAIN: pb.TRAIN,
          pb.TEST: pb.TEST}


def meets_rule(rule, phase, stages=(), level=0):
    """Caffe's ``StateMeetsRule``: whether the NetState (phase, stages, level) meets ``rule``."""
    if rule.HasField("phase") and rule.phase != PHASES[phase]:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def is_active(layer, phase, stages=(), level=0):
    """Whether Caffe keeps ``layer`` (a LayerParameter or V1LayerParameter) in this NetState."""
    if len(layer.include) and len(layer.exclude):
        raise CaeError("layer %s: both include and exclude rules (Caffe accepts one kind)" % layer.name)
    if len(layer.include):
        return any(meets_rule(rule, phase, stages, level) for rule in layer.include)
    return not any(meets_rule(rule, phase, stages, level) for rule in layer.exclude)


def active_layers(net, phase, stages=(), level=0):
    """The layers of a modern ``net`` that Caffe's FilterNet keeps for the NetState, in order.
    ``phase``: "train", "test" or the enum value."""
    stages = tuple(stages)
    return [layer for layer in net.layer if is_active(layer, phase, stages, level)]


# ----------------------------------------------------------------------------- windows

def _fail(where, message):
    raise CaeError("%s: %s" % (where, message) if where else message)


def axis_pair(param, field, h_field=None, w_field=None, default=None, where=""):
    """(h, w) of a 2-D window setting as Caffe reads it: ``*_h`` / ``*_w`` (never together
    with ``field``), else ``field`` (one value for both axes, or one per axis), else
    ``default``; CaeError, prefixed with ``where``, when it is missing or malformed."""
    value = getattr(param, field)
    if isinstance(value, int):  # an optional scalar (Pooling, Unpooling)
        given = [value] if param.HasField(field) else []
    else:  # repeated (Convolution)
        given = [int(v) for v in value]
    if h_field and (param.HasField(h_field) or param.HasField(w_field)):
        if given:
            _fail(where, "give %s or %s/%s, not both" % (field, h_field, w_field))
        return int(getattr(param, h_field)), int(getattr(param, w_field))
    if not given:
        if default is None:
            _fail(where, "%s is required" % field)
        return default, default
    if len(given) > 2:
        _fail(where, "%s: expected 1 or 2 values for 2-D, got %d" % (field, len(given)))
    return given[0], given[-1]


def window(param, global_pooling=False, where=""):
    """(kernel, stride, pad), each (h, w), of a Convolution, Pooling or Unpooling parameter;
    kernel None for global pooling (its size is the input's)."""
    kernel = None if global_pooling else axis_pair(param, "kernel_size", "kernel_h", "kernel_w", where=where)
    return (kernel, axis_pair(param, "stride", "stride_h", "stride_w", 1, where),
            axis_pair(param, "pad", "pad_h", "pad_w", 0, where))


def canonical_axis(axis, num_axes, where=""):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end; out of range: CaeError."""
    index = axis + num_axes if axis < 0 else axis
    if not 0 <= index < num_axes:
        _fail(where, "axis %d out of range for a %d-axis blob" % (axis, num_axes))
    return index


# ----------------------------------------------------------------------------- sizes

def conv_out(size, kernel, stride=1, pad=0, dilation=1):
    """Convolution output along one axis (ConvolutionLayer::compute_output_shape)."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def deconv_out(size, kernel, stride=1, pad=0, dilation=1):
    """Deconvolution output along one axis (DeconvolutionLayer::compute_output_shape)."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def pool_out(size, kernel, stride=1, pad=0):
    """Pooling output along one axis: Caffe rounds up, then, with padding, drops a last
    window that would start inside the padding (PoolingLayer::Reshape)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def unpool_out(size, kernel, stride=1, pad=0):
    """Unpooling output along one axis when the layer gives no size (this project's engine
    layer): large enough for every window and for every stride step."""
    return max((size - 1) * stride + kernel - 2 * pad, size * stride - pad + 1)


def unpool_explicit(param):
    """(height, width) an UnpoolingParameter fixes (``unpool_size`` before ``unpool_h`` /
    ``unpool_w``, as the engine reads them), else None."""
    if param.HasField("unpool_size"):
        return int(param.unpool_size), int(param.unpool_size)
    if param.HasField("unpool_h") or param.HasField("unpool_w"):
        return int(param.unpool_h), int(param.unpool_w)
    return None


# ----------------------------------------------------------------------------- V1 inputs

def input_layer(net):
    """The Input LayerParameter that stands for ``net``'s net-level inputs (None without any):
    one top per ``input``, its shape from ``input_shape`` or four ``input_dim`` values."""
    if not len(net.input):
        return None
    if len(net.input_shape) not in (0, len(net.input)):
        raise CaeError("net %s: %d input_shape for %d input" % (net.name, len(net.input_shape), len(net.input)))
    if not len(net.input_shape) and not len(net.input_dim):
        raise CaeError("net %s: input %s has no shape (give input_shape or 4 input_dim per input)"
                       % (net.name, net.input[0]))
    if not len(net.input_shape) and len(net.input_dim) != 4 * len(net.input):
        raise CaeError("net %s: %d input_dim for %d input (4 each)" % (net.name, len(net.input_dim), len(net.input)))
    if len(net.input_shape) and len(net.input_dim) and \
            [d for s in net.input_shape for d in s.dim] != list(net.input_dim):
        raise CaeError("net %s: input_shape and input_dim disagree (Caffe keeps input_shape only)" % net.name)
    layer = pb.LayerParameter(name="input", type="Input")
    for i, name in enumerate(net.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if len(net.input_shape):
            shape.CopyFrom(net.input_shape[i])
        else:
            shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
    return layer


def with_input_layer(net):
    """``net`` itself when it has no net-level inputs; else a copy whose inputs are an Input
    layer in front of its (modern) layers and whose ``input*`` fields are empty."""
    layer = input_layer(net)
    if layer is None:
        return net
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    del out.input[:]
    del out.input_dim[:]
    del out.input_shape[:]
    out.layer.add().CopyFrom(layer)
    out.layer.extend(net.layer)
    return out
