"""Any Caffe net to modern syntax, as Caffe 1.0 upgrades it, then the paper's Reshape fix.

``upgrade(net)`` performs Caffe 1.0's net upgrades (``UpgradeNetAsNeeded`` in
upgrade_proto.cpp), in Caffe's order, each only where the net needs it:

1. V0 layers (and "padding" layers) to V1 layers (:mod:`caffe_cae.upgrade_v0`);
2. the data transformation: a V1 Data, ImageData or WindowData layer's ``scale``,
   ``mean_file``, ``crop_size`` and ``mirror`` move from its data parameter into
   ``transform_param`` (Caffe 1.0 reads them only there);
3. V1 layers to modern ones: enum types become type strings (Noh's ``UNPOOLING`` included),
   ``blobs_lr``, ``weight_decay``, ``blob_share_mode`` and shared ``param`` names become
   ``param {}`` records, every parameter message is carried over;
4. net-level ``input`` / ``input_dim`` / ``input_shape`` become an Input layer named "input"
   in front of the layers (:func:`caffe_cae.caffe_rules.input_layer`);
5. a BatchNorm layer with three ``param`` records gets ``lr_mult: 0`` and ``decay_mult: 0``
   in each (its statistics are not learnt).

It then inserts a Reshape to N x C x 1 x 1 wherever a fully-connected output feeds a
convolution, deconvolution, pooling or unpooling layer (fully-connected outputs are 2-D in
modern Caffe, 4-D in the V1 era). Nothing is dropped silently: where Caffe would drop a
field or stop (Noh's fork-only V1 ``BN`` layer, a field Caffe 1.0 has no place for, a net
mixing ``layers`` and ``layer``, an input without a shape), CaeError names the layer and
what it cannot carry.
"""
from .caffe_rules import with_input_layer
from .errors import CaeError
from .proto import caffe_cae_pb2 as pb
from .upgrade_v0 import needs_v0_upgrade, upgrade_v0_net

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

#: V1 parameter messages that modern layers have (every one but Noh's bn_param).
_V1_PARAMS = [f.name for f in pb.V1LayerParameter.DESCRIPTOR.fields
              if f.name.endswith("_param") and f.name in pb.LayerParameter.DESCRIPTOR.fields_by_name]

#: V1 data layer type -> its parameter message whose transformation fields Caffe moves.
DATA_PARAMS = {pb.V1LayerParameter.DATA: "data_param", pb.V1LayerParameter.IMAGE_DATA: "image_data_param",
               pb.V1LayerParameter.WINDOW_DATA: "window_data_param"}
#: The transformation fields Caffe moves into transform_param (same names there).
TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def upgrade_data_transformation(net):
    """Caffe's UpgradeNetDataTransformation, in place: a V1 data layer's transformation
    fields move from its data parameter into ``transform_param``. As in Caffe, once one layer
    needs it, every V1 data layer gets both messages, if only empty."""
    layers = [v1 for v1 in net.layers if v1.type in DATA_PARAMS]
    if not any(getattr(v1, DATA_PARAMS[v1.type]).HasField(field) for v1 in layers for field in TRANSFORM_FIELDS):
        return
    for v1 in layers:
        param = getattr(v1, DATA_PARAMS[v1.type])
        param.SetInParent()
        v1.transform_param.SetInParent()
        for field in TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(v1.transform_param, field, getattr(param, field))
                param.ClearField(field)


def upgrade_layer(v1):
    """One V1LayerParameter as a LayerParameter (Caffe's UpgradeV1LayerParameter)."""
    where = "layer %s" % v1.name
    if v1.HasField("type") and v1.type == pb.V1LayerParameter.BN:
        raise CaeError("%s: V1 type BN (the 2015 fork's batch normalization) has no Caffe 1.0 layer; "
                       "replace it by BatchNorm + Scale" % where)
    if v1.HasField("bn_param"):
        raise CaeError("%s: bn_param (the 2015 fork's batch normalization) has no Caffe 1.0 field" % where)
    if v1.HasField("layer"):
        raise CaeError("%s: a V0 `layer` record left after the V0 upgrade" % where)
    layer = pb.LayerParameter()
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        layer.type = V1_TYPES.get(pb.V1LayerParameter.LayerType.Name(v1.type), "")
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    layer.blobs.extend(v1.blobs)
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
    for field in _V1_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    return layer


def upgrade_v1_net(net):
    """Caffe's UpgradeV1Net: a copy of ``net`` with its V1 ``layers`` as modern ``layer``."""
    if len(net.layer):
        raise CaeError("net %s: both `layer {}` and V1 `layers {}` records (Caffe refuses to upgrade "
                       "such a net; write every layer in one syntax)" % net.name)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    out.layer.extend(upgrade_layer(v1) for v1 in net.layers)
    return out


def upgrade_batch_norm(net):
    """Caffe's UpgradeNetBatchNorm, in place: a BatchNorm layer with three ``param`` records
    (the old way to freeze its statistics) gets lr_mult 0 and decay_mult 0 in each."""
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0


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


#: Modern data layer type -> the parameter message whose transformation fields Caffe 1.0 ignores.
IGNORED_TRANSFORM = {"Data": "data_param", "ImageData": "image_data_param"}


def ignored_fields(net):
    """Warnings (one line each) for what Caffe 1.0 keeps in a modern net but never reads: a
    Data or ImageData layer's ``scale``, ``mean_file``, ``crop_size`` or ``mirror`` in its
    data parameter (Caffe's upgrade moves them only out of V1 layers)."""
    warnings = []
    for layer in net.layer:
        holder = IGNORED_TRANSFORM.get(layer.type)
        if holder and layer.HasField(holder):
            for field in TRANSFORM_FIELDS:
                if getattr(layer, holder).HasField(field):
                    warnings.append("layer %s: %s.%s is ignored by Caffe 1.0 (give it in transform_param)"
                                    % (layer.name, holder, field))
    return warnings


def upgrade(net, reshape_fix=True):
    """A modern NetParameter from any Caffe net (see the module's text); ``net`` is not changed."""
    out = pb.NetParameter()
    out.CopyFrom(net)
    if needs_v0_upgrade(out):
        out = upgrade_v0_net(out)
    upgrade_data_transformation(out)
    if len(out.layers):
        out = upgrade_v1_net(out)
    out = with_input_layer(out)
    upgrade_batch_norm(out)
    return add_reshape_fix(out) if reshape_fix else out
