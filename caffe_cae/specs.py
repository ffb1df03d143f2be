"""The paper's seven nets as data: one plain function per net returning a list of layers.

A layer is a dict with ``name``, ``kind``, ``bottom``, ``top`` and the kind's settings;
``templates/{modern,legacy}.prototxt.j2`` turn the list into either Caffe syntax. Kinds:
``hdf5`` ``input`` ``conv`` ``deconv`` ``ip`` ``pool`` ``unpool`` ``act`` ``flatten``
``reshape`` ``slice`` ``sce_loss`` ``euclid_loss`` ``contrastive_loss``.

Every number a user may change lives in :data:`DEFAULTS`, each with the reason for its
value; :func:`settings` resolves overrides (``--set key=value``) against it. Limits:

* ``sparse`` of the Gaussian filler is capped at the layer's ``num_output``: Caffe keeps
  each weight with probability ``sparse / num_output`` and aborts when that exceeds 1, so
  the paper's ``sparse: 25`` cannot be used as written on ip2encode at D = 2 or 10 (nor the
  deep AE's ``sparse: 15`` at D = 2). With the cap those layers start dense.
* The legacy (V1) syntax has no Reshape layer: fully-connected outputs were 4-D there, so
  ip1decode feeds deconv2 directly. The modern syntax adds the paper's Reshape fix.
* Shapes are checked by :mod:`caffe_cae.inspect` on the rendered net, not here.
"""
from .errors import CaeError

NETS = ("siamese", "deep_ae", "model1", "model2", "model3", "model4", "model5")

#: The code sizes of the paper's grid: Table 4 (the Siamese rows use 20 instead of 30).
PAPER_DIMS = {net: (2, 10, 30) for net in NETS}
PAPER_DIMS["siamese"] = (2, 10, 20)

#: Every setting, its default and why. Keys are ``section.name``.
DEFAULTS = {
    # -- net --------------------------------------------------------------------------
    "net.activation": ("sigmoid", "Models 1-4 and the deep AE use sigmoid (Section 3, rule 4); "
                                  "model5 defaults to tanh, the siamese net to relu"),
    "net.conv_filler": ("xavier", "Section 4.2: xavier for conv/deconv layers"),
    "net.fc_filler": ("gaussian", "Section 4.2: gaussian std 1 sparse 25 for fully-connected layers"),
    "net.fc_std": (1.0, "Section 4.2"),
    "net.fc_sparse": (25, "Section 4.2 (15 for the deep AE, as Caffe's mnist_autoencoder); "
                          "capped at num_output, see module docstring"),
    "net.bias_value": (0.0, "Section 4.2: constant bias filler"),
    "net.weight_lr_mult": (1.0, "Caffe's examples: weights learn at the base rate"),
    "net.bias_lr_mult": (2.0, "Caffe's examples: biases learn at twice the base rate"),
    "net.weight_decay_mult": (1.0, "weights are decayed"),
    "net.bias_decay_mult": (0.0, "biases are not decayed"),
    # -- loss -------------------------------------------------------------------------
    "loss.cross_entropy_weight": (1.0, "Section 3, rule 2: both losses are needed"),
    "loss.euclidean_weight": (1.0, "Section 3, rule 2: both losses are needed"),
    "loss.contrastive_margin": (1.0, "Caffe's siamese example"),
    # -- data -------------------------------------------------------------------------
    "data.dir": ("data/hdf5", "where `caffe-cae data` writes; relative to the directory Caffe runs in"),
    "data.batch_size": (100, "Section 4.2: one hundred patterns in a batch"),
    "data.train_size": (60000, "MNIST training set; the test-on-train stage covers all of it"),
    "data.test_size": (10000, "MNIST test set; the test-on-test stage covers all of it"),
    "deploy.batch_size": (100, "deploy nets take the training batch; extraction reshapes as needed"),
    # -- solver -----------------------------------------------------------------------
    "solver.type": ("SGD", "Section 4.2: stochastic gradient descent"),
    "solver.base_lr": (0.006, "Section 4.2"),
    "solver.lr_policy": ("fixed", "Section 4.2"),
    "solver.momentum": (0.0, "not stated in the paper, so Caffe's code default; 0.9 (Caffe's mnist_autoencoder "
                           "example) keeps Model 5 (tanh) from training on the paper's schedule: test CE ~2000 "
                           "against the paper's 91 (docs/reproduction.md)"),
    "solver.weight_decay": (0.0005, "Section 4.2"),
    "solver.max_iter": (50000, "Section 4.2: 50000 training iterations"),
    "solver.display": (100, "a training-loss line every 100 iterations"),
    "solver.test_interval": (5000, "both test stages every 5000 iterations (about 10 % of the run time)"),
    "solver.test_initialization": (False, "no test pass before training"),
    "solver.snapshot": (5000, "a snapshot every 5000 iterations, so an interrupted run loses little"),
    "solver.solver_mode": ("CPU", "CPU or GPU"),
    "solver.random_seed": (1, "reproducible runs; the grid uses seeds 1..runs"),
}

LAYER_KEYS = ("num_output", "kernel")


def settings(net, overrides=None):
    """Resolve the settings of ``net``: DEFAULTS, then per-net defaults, then overrides.

    ``overrides`` maps ``section.name`` (or ``layer.<layer>.num_output|kernel``) to a value
    or a string to be converted to the default's type. Unknown keys and wrong types raise
    CaeError naming the key.
    """
    values = {key: value for key, (value, _why) in DEFAULTS.items()}
    if net == "model5":
        values["net.activation"] = "tanh"
    if net == "siamese":
        values["net.activation"] = "relu"
        values["net.fc_filler"] = "xavier"
    if net == "deep_ae":
        values["net.fc_sparse"] = 15
    for key, raw in (overrides or {}).items():
        if key.startswith("layer."):
            parts = key.split(".")
            if len(parts) != 3 or parts[2] not in LAYER_KEYS:
                raise CaeError(f"--set {key}: expected layer.<name>.num_output or layer.<name>.kernel")
            values[key] = _convert(key, raw, 1)
            if values[key] < 1:
                raise CaeError(f"--set {key}: expected a positive integer, got {raw!r}")
            continue
        if key not in values:
            raise CaeError(f"--set {key}: unknown setting (see `caffe-cae render --list-settings`)")
        values[key] = _convert(key, raw, DEFAULTS[key][0])
    if values["net.activation"] not in ("sigmoid", "tanh", "relu"):
        raise CaeError(f"--activation: expected sigmoid, tanh or relu, got {values['net.activation']!r}")
    for key in ("net.conv_filler", "net.fc_filler"):
        if values[key] not in ("xavier", "msra", "gaussian"):
            raise CaeError(f"--set {key}: expected xavier, msra or gaussian, got {values[key]!r}")
    if values["solver.solver_mode"] not in ("CPU", "GPU"):
        raise CaeError(f"--set solver.solver_mode: expected CPU or GPU, got {values['solver.solver_mode']!r}")
    for key in ("data.batch_size", "deploy.batch_size", "solver.max_iter", "data.train_size", "data.test_size"):
        if values[key] < 1:
            raise CaeError(f"--set {key}: expected a positive integer, got {values[key]}")
    return values


def _convert(key, raw, default):
    if not isinstance(raw, str):
        if isinstance(default, float) and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if type(raw) is not type(default):
            raise CaeError(f"--set {key}: expected {type(default).__name__}, got {raw!r}")
        return raw
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise CaeError(f"--set {key}: expected {type(default).__name__}, got {raw!r}") from None
    return raw


# --------------------------------------------------------------------------------------
# Building blocks


def _filler(kind, s, num_output=None):
    if kind == "xavier":
        return {"type": "xavier"}
    if kind == "msra":
        return {"type": "msra"}
    sparse = s["net.fc_sparse"]
    filler = {"type": "gaussian", "std": s["net.fc_std"]}
    if sparse >= 0 and num_output is not None:
        filler["sparse"] = min(sparse, num_output)
    return filler


def _params(s, name=None):
    params = [
        {"lr_mult": s["net.weight_lr_mult"], "decay_mult": s["net.weight_decay_mult"]},
        {"lr_mult": s["net.bias_lr_mult"], "decay_mult": s["net.bias_decay_mult"]},
    ]
    if name:
        params[0]["name"] = name + "_w"
        params[1]["name"] = name + "_b"
    return params


def _size(s, name, key, default):
    return s.get(f"layer.{name}.{key}", default)


def conv(s, name, bottom, num_output, kernel, top=None, deconv=False, share=None):
    """A (de)convolution with the paper's xavier weights and constant biases."""
    return {"name": name, "kind": "deconv" if deconv else "conv", "bottom": [bottom], "top": [top or name],
            "num_output": _size(s, name, "num_output", num_output),
            "kernel": _size(s, name, "kernel", kernel), "stride": 1,
            "weight_filler": _filler(s["net.conv_filler"], s),
            "bias_filler": {"type": "constant", "value": s["net.bias_value"]},
            "params": _params(s, share)}


def ip(s, name, bottom, num_output, top=None, share=None, filler=None):
    """A fully-connected layer with the paper's sparse Gaussian weights and constant biases."""
    n = _size(s, name, "num_output", num_output)
    return {"name": name, "kind": "ip", "bottom": [bottom], "top": [top or name], "num_output": n,
            "weight_filler": _filler(filler or s["net.fc_filler"], s, n),
            "bias_filler": {"type": "constant", "value": s["net.bias_value"]},
            "params": _params(s, share)}


def act(s, name, blob, kind=None):
    """An in-place activation (sigmoid, tanh or relu)."""
    return {"name": name, "kind": "act", "act": kind or s["net.activation"], "bottom": [blob], "top": [blob]}


def pool(name, bottom, mask=False):
    """2x2 max pooling, stride 2; with ``mask`` a second top carries the switches."""
    tops = [name, name + "_mask"] if mask else [name]
    return {"name": name, "kind": "pool", "bottom": [bottom], "top": tops, "kernel": 2, "stride": 2}


def unpool(name, bottom, size, mask=None):
    """Noh's MAX unpooling 2x2, stride 2, to ``size`` x ``size``; with a mask, to the switches."""
    bottoms = [bottom, mask] if mask else [bottom]
    return {"name": name, "kind": "unpool", "bottom": bottoms, "top": [name], "kernel": 2, "stride": 2,
            "size": size}


def _act_name(s, index, part):
    prefix = {"sigmoid": "sig", "tanh": "tanh", "relu": "relu"}[s["net.activation"]]
    return f"{prefix}{index}{part}"


def data_layers(s, stage, siamese=False):
    """Input layers: HDF5Data for TRAIN and the two TEST stages, or one Input for deploy."""
    if stage == "deploy":
        return [{"name": "input", "kind": "input", "bottom": [], "top": ["data"],
                 "shape": [s["deploy.batch_size"], 1, 28, 28]}]
    tops = ["pair_data", "sim"] if siamese else ["data"]
    suffix = "_pairs" if siamese else ""
    folder = s["data.dir"].rstrip("/")
    layers = []
    for phase, test_stage, split in (("TRAIN", None, "train"), ("TEST", "test-on-train", "train"),
                                     ("TEST", "test-on-test", "test")):
        layers.append({"name": "data", "kind": "hdf5", "bottom": [], "top": list(tops),
                       "source": f"{folder}/{split}{suffix}.txt", "batch_size": s["data.batch_size"],
                       "phase": phase, "stage": test_stage})
    return layers


def ae_losses(s, logits, target_4d, flat=True):
    """The two losses of Section 3, rule 2, and the sigmoid that makes the reconstruction."""
    layers = []
    target = target_4d
    if flat:
        layers.append({"name": "flatdata", "kind": "flatten", "bottom": [target_4d], "top": ["flatdata"]})
        target = "flatdata"
    layers.append({"name": "loss_sce", "kind": "sce_loss", "bottom": [logits, target], "top": ["cross_entropy_loss"],
                   "loss_weight": s["loss.cross_entropy_weight"]})
    return layers


# --------------------------------------------------------------------------------------
# The nets


def _encoder(s, dim, pooled, mask=False):
    """conv1 [pool1] conv2 [pool2] ip1encode ip2encode (the code, linear)."""
    layers = []
    if pooled:
        layers += [conv(s, "conv1", "data", 26, 5), act(s, _act_name(s, 1, "en"), "conv1"),
                   pool("pool1", "conv1", mask),
                   conv(s, "conv2", "pool1", 36, 5), act(s, _act_name(s, 2, "en"), "conv2"),
                   pool("pool2", "conv2", mask)]
        last = "pool2"
    else:
        layers += [conv(s, "conv1", "data", 8, 9), act(s, _act_name(s, 1, "en"), "conv1"),
                   conv(s, "conv2", "conv1", 4, 9), act(s, _act_name(s, 2, "en"), "conv2")]
        last = "conv2"
    layers += [ip(s, "ip1encode", last, 250), act(s, _act_name(s, 3, "en"), "ip1encode"),
               ip(s, "ip2encode", "ip1encode", dim)]
    return layers


def _cae(s, dim, stage, model, syntax):
    pooled = model != 1
    switches = model == 3
    layers = data_layers(s, stage) + _encoder(s, dim, pooled, mask=switches)
    layers += [ip(s, "ip1decode", "ip2encode", 250), act(s, _act_name(s, 3, "de"), "ip1decode")]
    first = "ip1decode"
    if syntax == "modern":
        layers.append({"name": "reshape", "kind": "reshape", "bottom": ["ip1decode"], "top": ["ip1decodesh"],
                       "dims": [0, 0, 1, 1]})
        first = "ip1decodesh"
    if model in (1, 2):
        layers += [conv(s, "deconv2", first, 4, 12, deconv=True), act(s, _act_name(s, 2, "de"), "deconv2"),
                   conv(s, "deconv1", "deconv2", 4, 17, deconv=True), act(s, _act_name(s, 1, "de"), "deconv1"),
                   conv(s, "deconv1neur", "deconv1", 1, 1, deconv=True)]
    else:
        layers += [conv(s, "deconv2", first, 36, 4, deconv=True), act(s, _act_name(s, 2, "de"), "deconv2"),
                   unpool("unpool2", "deconv2", 8, "pool2_mask" if switches else None),
                   conv(s, "deconv1", "unpool2", 26, 5, deconv=True), act(s, _act_name(s, 1, "de"), "deconv1"),
                   unpool("unpool1", "deconv1", 24, "pool1_mask" if switches else None),
                   conv(s, "deconv1neur", "unpool1", 1, 5, deconv=True)]
    return layers + output_and_losses(s, stage, "deconv1neur", "deconv1neursig", "data")


def output_and_losses(s, stage, logits, output, target):
    """The sigmoid reconstruction ``output`` of ``logits``; outside deploy, the cross-entropy on
    the logits and the Euclidean loss of ``output`` against ``target`` (the image as the net
    holds it: 1x28x28 for the CAEs, flattened for the deep AE)."""
    layers = [{"name": output, "kind": "act", "act": "sigmoid", "bottom": [logits], "top": [output]}]
    if stage != "deploy":
        layers += ae_losses(s, logits, "data")
        layers.append({"name": "loss_euclid", "kind": "euclid_loss", "bottom": [output, target],
                       "top": ["euclidean_loss"], "loss_weight": s["loss.euclidean_weight"]})
    return layers


def _deep_ae(s, dim, stage, syntax):
    """Hinton's 784-1000-500-250-D auto-encoder, as Caffe's mnist_autoencoder example."""
    layers = data_layers(s, stage)
    bottom = "data"
    sizes = [("encode1", 1000), ("encode2", 500), ("encode3", 250), ("encode4", dim),
             ("decode4", 250), ("decode3", 500), ("decode2", 1000), ("decode1", 784)]
    for name, n in sizes:
        layers.append(ip(s, name, bottom, n))
        if name not in ("encode4", "decode1"):
            layers.append({"name": name + "neuron", "kind": "act", "act": s["net.activation"], "bottom": [name],
                           "top": [name]})
        bottom = name
    return layers + output_and_losses(s, stage, "decode1", "decode1neuron", "flatdata")


def _siamese_channel(s, dim, data, suffix):
    def n(name):
        return name + suffix
    return [
        conv(s, n("conv1"), data, 26, 5, share="conv1"),
        pool(n("pool1"), n("conv1")),
        conv(s, n("conv2"), n("pool1"), 36, 5, share="conv2"),
        pool(n("pool2"), n("conv2")),
        ip(s, n("ip1encode"), n("pool2"), 250, share="ip1encode"),
        act(s, n("relu1"), n("ip1encode"), "relu"),
        ip(s, n("ip2encode"), n("ip1encode"), dim, share="ip2encode"),
    ]


def _siamese(s, dim, stage, syntax):
    """Caffe's mnist_siamese example with the planes of Models 2-5 (Section 4.1)."""
    if stage == "deploy":
        return data_layers(s, stage) + _siamese_channel(s, dim, "data", "")
    layers = data_layers(s, stage, siamese=True)
    layers.append({"name": "slice_pair", "kind": "slice", "bottom": ["pair_data"], "top": ["data", "data_p"],
                   "slice_point": 1})
    layers += _siamese_channel(s, dim, "data", "") + _siamese_channel(s, dim, "data_p", "_p")
    layers.append({"name": "loss", "kind": "contrastive_loss", "bottom": ["ip2encode", "ip2encode_p", "sim"],
                   "top": ["contrastive_loss"], "margin": s["loss.contrastive_margin"], "loss_weight": 1.0})
    return layers


def layers(net, dim, stage, syntax="modern", overrides=None, resolved=None):
    """The layer list of ``net`` with code size ``dim`` for ``stage`` (train_test or deploy).

    ``resolved`` may pass settings already resolved by :func:`settings`.
    """
    if net not in NETS:
        raise CaeError(f"--net: expected one of {', '.join(NETS)}, got {net!r}")
    if not isinstance(dim, int) or dim < 1:
        raise CaeError(f"--dim: expected a code size of at least 1, got {dim!r}")
    if stage not in ("train_test", "deploy"):
        raise CaeError(f"stage: expected train_test or deploy, got {stage!r}")
    if syntax not in ("modern", "legacy"):
        raise CaeError(f"--syntax: expected modern or legacy, got {syntax!r}")
    s = resolved if resolved is not None else settings(net, overrides)
    if net == "siamese":
        return _siamese(s, dim, stage, syntax)
    if net == "deep_ae":
        return _deep_ae(s, dim, stage, syntax)
    return _cae(s, dim, stage, int(net[-1]), syntax)


#: Blob names the later stages read: the code and (auto-encoders) the reconstruction.
def code_blob(net):
    return "encode4" if net == "deep_ae" else "ip2encode"


def reconstruction_blob(net):
    return {"deep_ae": "decode1neuron", "siamese": None}.get(net, "deconv1neursig")
