"""Legacy V1 nets to modern syntax, with the paper's Reshape fix.

``upgrade(net)`` does what Caffe's own V1 upgrade does (net-level inputs become an Input
layer named "input"; enum types become type strings, UNPOOLING included; ``blobs_lr``,
``weight_decay`` and shared ``param`` names become ``param {}`` records) and then inserts a
Reshape to N x C x 1 x 1 wherever a fully-connected output feeds a convolution,
deconvolution or unpooling layer (fully-connected outputs are 2-D in modern Caffe, 4-D in
the V1 era). A modern net goes through only the second step.
"""
from .caffe_rules import input_layer
from .proto import caffe_cae_pb2 as pb

#: V1 enum name -> modern type string (Caffe's UpgradeV1LayerType, plus Noh's UNPOOLING).
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold", "UNPOOLING": "Unpooling",
}

#: Layer types whose bottom must be 4-D (N x C x H x W).
SPATIAL = ("Convolution", "Deconvolution", "Unpooling", "Pooling")

_V1_PARAMS = [f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param")]


def upgrade_layer(v1):
    """One V1LayerParameter as a LayerParameter."""
    layer = pb.LayerParameter()
    layer.name = v1.name
    layer.type = V1_TYPES.get(pb.V1LayerParameter.LayerType.Name(v1.type), "")
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    layer.loss_weight.extend(v1.loss_weight)
    count = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(count):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)
    for field in _V1_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    return layer


def add_reshape_fix(net):
    """Insert the paper's Reshape wherever an InnerProduct output feeds a spatial layer."""
    producer = {}
    for layer in net.layer:
        for top in layer.top:
            in_place = top in layer.bottom
            if not in_place:
                producer[top] = layer.type
    # Find the blobs to fix and, for each, the first consumer.
    fixes = []
    seen = set()
    for index, layer in enumerate(net.layer):
        if layer.type in SPATIAL and len(layer.bottom) and producer.get(layer.bottom[0]) == "InnerProduct":
            blob = layer.bottom[0]
            if blob not in seen:
                seen.add(blob)
                fixes.append((index, blob))
    if not fixes:
        return net
    layers = list(net.layer)
    new = []
    fix_at = {index: blob for index, blob in fixes}
    for index, layer in enumerate(layers):
        if index in fix_at:
            blob = fix_at[index]
            reshape = pb.LayerParameter()
            reshape.name = "reshape" if len(fixes) == 1 else f"reshape_{blob}"
            reshape.type = "Reshape"
            reshape.bottom.append(blob)
            reshape.top.append(blob + "sh")
            reshape.reshape_param.shape.dim.extend([0, 0, 1, 1])
            new.append(reshape)
        new.append(layer)
    for layer in new:
        if layer.type in SPATIAL and len(layer.bottom) and layer.bottom[0] in seen:
            layer.bottom[0] = layer.bottom[0] + "sh"
    del net.layer[:]
    for layer in new:
        net.layer.add().CopyFrom(layer)
    return net


def upgrade(net, reshape_fix=True):
    """A modern NetParameter from a legacy (or modern) one; the input is not changed."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    if len(net.layers) or len(net.input):
        del out.layers[:]
        del out.layer[:]
        del out.input[:]
        del out.input_dim[:]
        del out.input_shape[:]
        inputs = input_layer(net)
        if inputs is not None:
            out.layer.add().CopyFrom(inputs)
        for layer in net.layer:
            out.layer.add().CopyFrom(layer)
        for v1 in net.layers:
            out.layer.add().CopyFrom(upgrade_layer(v1))
    return add_reshape_fix(out) if reshape_fix else out
