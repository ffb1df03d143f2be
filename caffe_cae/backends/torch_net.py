"""Caffe nets executed by PyTorch, built from a parsed NetParameter (no hand-written models).

``TorchNet(net_param, phase, stages)`` filters the layers like Caffe's ``FilterNet`` (include /
exclude rules against the NetState), creates every layer's parameter blobs with Caffe's
shapes and fillers (in layer order, from one ``torch.Generator``), and runs forward passes
whose backward (autograd) gives Caffe's gradients. Blobs are float32 tensors named as in
Caffe; in-place layers overwrite their blob's name, as in Caffe.

Supported layer types (Caffe semantics; anything else raises CaeError naming the layer):
Input, HDF5Data (files of the ``source`` list in order, rows read sequentially without
shuffle and wrapping around, batches may span files), Convolution, Deconvolution (weights
``(C_in, num_output/group, kh, kw)`` as Caffe), InnerProduct (``axis``, ``transpose``),
Pooling MAX/AVE (Caffe's ceil rounding, pad rules, mask top = flat index ``h*W+w`` as float),
Unpooling (MAX with mask or top-left, AVE, TILE; this project's engine layer), Reshape,
Flatten, Slice, Split, Sigmoid, TanH, ReLU (``negative_slope``), SigmoidCrossEntropyLoss
(``normalization``, default BATCH_SIZE; ``ignore_label``), EuclideanLoss, ContrastiveLoss
(legacy and non-legacy, Caffe's backward including its ``1e-4`` in the distance), and
``loss_weight`` on any top. Legacy V1 nets are upgraded first (``caffe_cae.upgrade``).

The layers are in ``torch_layers``, their Caffe-exact numerics (autograd kernels, fillers) in
``torch_kernels``, the data reader in ``torch_data``, Caffe's layer filtering and size rules in
``caffe_cae.caffe_rules``.

Limits: 2-D spatial convolution and pooling only (4-D blobs, ``axis: 1``); STOCHASTIC pooling,
``shuffle: true`` and the Unpooling ``pad`` are refused; Unpooling MAX with colliding
switches keeps an unspecified one of the values (Caffe: the last). Exact RNG equality with
Caffe's Boost mt19937 is not attempted: equality with Caffe starts from a shared .caffemodel.
PyTorch is imported by the torch modules only; the rest of the package works without it.
"""
import numpy as np

from .. import caffe_rules
from ..errors import CaeError
from ..proto import caffe_cae_pb2 as pb
from .torch_kernels import _CaffeConv, fill, torch  # noqa: F401 (_CaffeConv: torch_batch and the tests)
from .torch_layers import LAYERS, HDF5DataLayer, InputLayer, _canon  # noqa: F401 (_canon: torch_batch)

PHASES = caffe_rules.PHASES


def resolve_device(mode):
    """``cpu`` -> cpu; ``gpu`` -> cuda if PyTorch sees a GPU, else CaeError."""
    if mode in (None, "cpu"):
        return torch.device("cpu")
    if mode in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise CaeError("--mode gpu: PyTorch sees no CUDA GPU on this machine (use --mode cpu)")
        return torch.device("cuda")
    raise CaeError("--mode %s: expected cpu or gpu" % mode)


def modern(net):
    """``net`` with V1 ``layers`` upgraded and net-level ``input`` turned into an Input layer."""
    if len(net.layers):
        from ..upgrade import upgrade
        net = upgrade(net)
    return caffe_rules.with_input_layer(net)


# ----------------------------------------------------------------------------- net

def copy_weights(params, layers, source):
    """Copy (layer name, [arrays]) into ``params`` (layer name -> [tensors]), as Caffe's
    CopyTrainedLayersFrom: unknown names are ignored; blob count and shapes must match (a
    legacy 4-D shape padded with leading 1s is accepted). CaeError names ``source``."""
    with torch.no_grad():
        for name, arrays in layers:
            target = params.get(name)
            if target is None:
                continue
            if len(arrays) != len(target):
                raise CaeError("%s: layer %s has %d blobs, the net expects %d"
                               % (source, name, len(arrays), len(target)))
            for i, (t, a) in enumerate(zip(target, arrays)):
                a = np.asarray(a, dtype=np.float32)
                if tuple(a.shape) != tuple(t.shape):
                    legacy = (1,) * (4 - t.dim()) + tuple(t.shape)
                    if t.dim() > 4 or a.size != t.numel() or tuple(a.shape) != legacy:
                        raise CaeError("%s: layer %s blob %d has shape %s, the net expects %s"
                                       % (source, name, i, a.shape, tuple(t.shape)))
                t.copy_(torch.from_numpy(a.reshape(tuple(t.shape))).to(t.device))



class TorchNet:
    """A Caffe net in PyTorch. See the module docstring.

    ``net_param``: NetParameter (modern or legacy); ``phase``: "train" or "test";
    ``stages``/``level``: the NetState; ``cwd``: directory relative paths (HDF5 lists) are
    resolved against; ``generator``: torch.Generator for the fillers (default seed 0);
    ``share_with``: a TorchNet whose parameter blobs are used for layers of the same name
    (Caffe's ShareTrainedLayersWith, as a solver's test nets do); ``h5_cache``: a dict shared
    by nets reading the same single-file HDF5 lists (the arrays are read once, never written);
    ``onednn``: convolutions run on oneDNN (default), else im2col + GEMM (see _CaffeConv).

    Attributes: ``layers`` (Layer objects in order), ``params`` (layer name -> list of
    tensors, as pycaffe's ``net.params``), ``learnable`` (unique parameter tensors in Caffe's
    ``learnable_params`` order), ``lr_mult`` / ``decay_mult`` (per learnable), ``losses``
    (top name -> nonzero loss weight: what is trained on), ``reported`` (the loss tops Caffe
    computes and shows as the net's outputs: every Loss layer's first top, a ``loss_weight: 0``
    one included, and any other weighted top), ``blobs`` (after ``forward``).
    """

    def __init__(self, net_param, phase="train", stages=(), level=0, cwd=".", device="cpu",
                 generator=None, share_with=None, h5_cache=None, onednn=True):
        net_param = modern(net_param)
        self.onednn = bool(onednn)
        self.h5_cache = h5_cache if h5_cache is not None else {}
        self.name = net_param.name
        self.phase = PHASES[phase]
        self.cwd = cwd
        self.device = torch.device(device)
        self.gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.share_with = share_with
        self.layer_params = caffe_rules.active_layers(net_param, self.phase, tuple(stages), level)
        self.layers = []
        for lp in self.layer_params:
            cls = LAYERS.get(lp.type)
            if cls is None:
                raise CaeError("layer %s: type %r is not supported by the torch backend (supported: %s)"
                               % (lp.name, lp.type, ", ".join(sorted(LAYERS))))
            self.layers.append(cls(lp, self))
        self.learnable, self.lr_mult, self.decay_mult = [], [], []
        self._owners = {}
        self.inputs = {}
        self.losses, self.reported = {}, []
        for layer in self.layers:
            is_loss = layer.type.endswith("Loss")
            weights = list(layer.lp.loss_weight)
            if weights and len(weights) != len(layer.tops):
                raise CaeError("layer %s: %d loss_weight values for %d tops"
                               % (layer.name, len(weights), len(layer.tops)))
            for i, top in enumerate(layer.tops):
                w = weights[i] if weights else (1.0 if is_loss and i == 0 else 0.0)
                if w:
                    self.losses[top] = float(w)
                if (w or (is_loss and i == 0)) and top not in self.reported:
                    self.reported.append(top)
        self.params = {}
        self.replaying = False
        self.setting_up = True
        try:
            with torch.no_grad():
                self._run(setup=True)
        finally:
            self.setting_up = False
        for layer in self.layers:
            if layer.blobs:
                self.params[layer.name] = layer.blobs

    # parameters ---------------------------------------------------------------
    def param(self, layer, index, shape, filler):
        """Create (or share) parameter blob ``index`` of ``layer``."""
        lp = layer.lp
        spec = lp.param[index] if index < len(lp.param) else None
        what = "layer %s blob %d" % (lp.name, index)
        if self.share_with is not None and lp.name in self.share_with.params:
            src = self.share_with.params[lp.name]
            if index < len(src) and tuple(src[index].shape) == tuple(shape):
                return src[index]
            raise CaeError("%s: cannot share with the train net (shape %s)" % (what, tuple(shape)))
        name = spec.name if spec is not None and spec.name else None
        if name and name in self._owners:
            k = self._owners[name]
            t = self.learnable[k]
            strict = spec.share_mode != pb.ParamSpec.PERMISSIVE
            if (strict and tuple(t.shape) != tuple(shape)) or t.numel() != int(np.prod(shape)):
                raise CaeError("%s: shared parameter %r has shape %s, expected %s"
                               % (what, name, tuple(t.shape), tuple(shape)))
            if spec.HasField("lr_mult") and spec.lr_mult != self.lr_mult[k]:
                raise CaeError("%s: shared parameter %r with a different lr_mult" % (what, name))
            if spec.HasField("decay_mult") and spec.decay_mult != self.decay_mult[k]:
                raise CaeError("%s: shared parameter %r with a different decay_mult" % (what, name))
            return t if tuple(t.shape) == tuple(shape) else t.view(shape)
        t = fill(tuple(int(s) for s in shape), filler, self.gen, what)
        t = t.to(self.device).requires_grad_(True)
        if name:
            self._owners[name] = len(self.learnable)
        self.learnable.append(t)
        self.lr_mult.append(float(spec.lr_mult) if spec is not None else 1.0)
        self.decay_mult.append(float(spec.decay_mult) if spec is not None else 1.0)
        return t

    # running ------------------------------------------------------------------
    def _run(self, setup=False, stop=None, trace=None):
        blobs = {}
        for index, layer in enumerate(self.layers):
            try:
                bottoms = [blobs[b] for b in layer.bottoms]
            except KeyError as exc:
                raise CaeError("layer %s: unknown bottom blob %s" % (layer.name, exc)) from None
            if setup:
                layer.setup(bottoms)
            tops = layer.forward(bottoms)
            if len(tops) != len(layer.tops):
                raise CaeError("layer %s (%s): gives %d top(s), the net names %d"
                               % (layer.name, layer.type, len(tops), len(layer.tops)))
            for name, t in zip(layer.tops, tops):
                blobs[name] = t
                if trace is not None:
                    trace(index, layer, name, t)
            if stop is not None and layer.name == stop:
                break
        self.blobs = blobs
        return blobs

    def forward(self, inputs=None, end=None, replay=False, trace=None):
        """Run the net (next batch for data layers, ``inputs`` name -> array for Input tops).
        ``replay``: data layers give their last batch again; ``trace(index, layer, top, tensor)``
        is called after each layer for each of its tops; ``end``: stop after that layer.
        Returns (blobs dict, weighted total loss as a 0-d tensor or None)."""
        self.inputs = {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device)
                       for k, v in (inputs or {}).items()}
        self.replaying = replay
        try:
            blobs = self._run(stop=end, trace=trace)
        finally:
            self.replaying = False
        total = None
        for top, w in self.losses.items():
            if top in blobs:
                term = blobs[top].sum() * w
                total = term if total is None else total + term
        return blobs, total

    def forward_backward(self):
        """Forward with autograd, then backward of the weighted loss into ``.grad`` (accumulating).
        Returns (blobs, total loss as a detached scalar tensor on the net's device)."""
        blobs, total = self.forward()
        if total is None:
            raise CaeError("net %s: no loss top to train on" % self.name)
        total.backward()
        return blobs, total.detach()

    def zero_grad(self):
        for t in self.learnable:
            t.grad = None

    # weights ------------------------------------------------------------------
    def get_weights(self):
        """[(layer name, [float32 arrays])] for every layer with parameter blobs, in order."""
        return [(name, [t.detach().cpu().numpy().copy() for t in blobs])
                for name, blobs in self.params.items()]

    def set_weights(self, layers, source="weights"):
        """Copy (layer name, [arrays]) into same-named layers, as Caffe's CopyTrainedLayersFrom:
        unknown names are ignored; blob count and shapes must match."""
        copy_weights(self.params, layers, source)

    def input_names(self):
        """Top names of the Input layers, in order."""
        return [t for layer in self.layers if isinstance(layer, InputLayer) for t in layer.tops]

    def input_shapes(self):
        """Input top name -> declared shape."""
        return {t: s for layer in self.layers if isinstance(layer, InputLayer)
                for t, s in zip(layer.tops, layer.shapes)}

    def skip_batches(self, batches):
        """Advance every data layer by ``batches`` batches (Caffe does not store the position)."""
        for source in self.data_sources().values():
            source.skip(batches)

    def data_sources(self):
        """name -> HDF5Source of the data layers (for saving / restoring the data position)."""
        return {layer.name: layer.source for layer in self.layers if isinstance(layer, HDF5DataLayer)}
