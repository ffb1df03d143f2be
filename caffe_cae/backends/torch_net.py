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

Limits: 2-D spatial convolution and pooling only (4-D blobs, ``axis: 1``); STOCHASTIC pooling,
``shuffle: true`` and the Unpooling ``pad`` are refused; Unpooling MAX with colliding
switches keeps an unspecified one of the values (Caffe: the last). Exact RNG equality with
Caffe's Boost mt19937 is not attempted: equality with Caffe starts from a shared .caffemodel.
PyTorch is imported here only; the rest of the package works without it.
"""
import math
import os

import numpy as np

from ..errors import CaeError
from ..proto import caffe_cae_pb2 as pb


def import_torch():
    """The ``torch`` module, or CaeError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise CaeError("--backend torch: PyTorch is not installed "
                       "(pip install 'caffe-cae[torch]', or pip install torch)") from None
    return torch


torch = import_torch()
F = torch.nn.functional

PHASES = {"train": pb.TRAIN, "test": pb.TEST, pb.TRAIN: pb.TRAIN, pb.TEST: pb.TEST}


def resolve_device(mode):
    """``cpu`` -> cpu; ``gpu`` -> cuda if PyTorch sees a GPU, else CaeError."""
    if mode in (None, "cpu"):
        return torch.device("cpu")
    if mode in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise CaeError("--mode gpu: PyTorch sees no CUDA GPU on this machine (use --mode cpu)")
        return torch.device("cuda")
    raise CaeError("--mode %s: expected cpu or gpu" % mode)


# ----------------------------------------------------------------------------- filtering

def _meets(rule, phase, level, stages):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(net, phase, stages=(), level=0):
    """The LayerParameters of a modern ``net`` that Caffe keeps in this state, in order."""
    phase = PHASES[phase]
    kept = []
    for lp in net.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaeError("layer %s: both include and exclude rules" % lp.name)
        if len(lp.include):
            ok = any(_meets(r, phase, level, stages) for r in lp.include)
        else:
            ok = not any(_meets(r, phase, level, stages) for r in lp.exclude)
        if ok:
            kept.append(lp)
    return kept


def modern(net):
    """``net`` with V1 ``layers`` upgraded and net-level ``input`` turned into an Input layer."""
    if len(net.layers):
        from ..upgrade import upgrade
        net = upgrade(net)
    if len(net.input):
        out = pb.NetParameter()
        out.CopyFrom(net)
        del out.layer[:]
        inp = out.layer.add(name="input", type="Input")
        for i, name in enumerate(net.input):
            inp.top.append(name)
            shape = inp.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        out.layer.extend(net.layer)
        del out.input[:]
        del out.input_shape[:]
        del out.input_dim[:]
        return out
    return net


# ----------------------------------------------------------------------------- fillers

def fill(shape, fp, gen, what):
    """A float32 CPU tensor of ``shape`` filled per FillerParameter ``fp`` (Caffe's filler.hpp)."""
    count = int(np.prod(shape))
    kind = fp.type
    if kind == "constant":
        return torch.full(shape, float(fp.value), dtype=torch.float32)
    if kind in ("xavier", "msra"):
        fan_in = count // shape[0]
        fan_out = count // shape[1] if len(shape) > 1 else count
        n = {pb.FillerParameter.FAN_IN: fan_in, pb.FillerParameter.FAN_OUT: fan_out,
             pb.FillerParameter.AVERAGE: (fan_in + fan_out) / 2.0}[fp.variance_norm]
        if fp.sparse != -1:
            raise CaeError("%s: sparse is not supported by the %s filler" % (what, kind))
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            return torch.empty(shape, dtype=torch.float32).uniform_(-scale, scale, generator=gen)
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, math.sqrt(2.0 / n), generator=gen)
    if kind == "gaussian":
        data = torch.empty(shape, dtype=torch.float32).normal_(float(fp.mean), float(fp.std),
                                                                generator=gen)
        if fp.sparse < -1:
            raise CaeError("%s: gaussian filler sparse %d, expected >= -1" % (what, fp.sparse))
        if fp.sparse >= 0:
            p = float(np.float32(fp.sparse) / np.float32(shape[0]))
            if p > 1:
                raise CaeError("%s: gaussian filler sparse %d > %d outputs" % (what, fp.sparse, shape[0]))
            data *= torch.bernoulli(torch.full(shape, p), generator=gen)
        return data
    if kind == "uniform":
        return torch.empty(shape, dtype=torch.float32).uniform_(float(fp.min), float(fp.max),
                                                                 generator=gen)
    raise CaeError("%s: filler type %r is not supported by the torch backend "
                   "(constant, gaussian, uniform, xavier, msra)" % (what, kind))


# ----------------------------------------------------------------------------- helpers

def _pair(values, h_field, w_field, msg, name, default, has_h):
    if has_h:
        return int(h_field), int(w_field)
    values = list(values)
    if not values:
        if default is None:
            raise CaeError("layer %s: %s is required" % (name, msg))
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise CaeError("layer %s: %s: expected 1 or 2 values for 2-D, got %d" % (name, msg, len(values)))


def _canon(axis, nd, name):
    a = axis + nd if axis < 0 else axis
    if not 0 <= a < nd:
        raise CaeError("layer %s: axis %d out of range for a %d-axis blob" % (name, axis, nd))
    return a


class _SCELoss(torch.autograd.Function):
    """Caffe's SigmoidCrossEntropyLoss: forward sum / normalizer, backward (sigmoid - t)."""

    @staticmethod
    def forward(ctx, x, t, valid, normalization):
        pos = (x >= 0).to(x.dtype)
        terms = x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        count = x.numel()
        if valid is not None:
            terms = terms * valid
            n_valid = int(valid.sum().item())
        else:
            n_valid = count
        outer = x.shape[0]
        norm = {pb.LossParameter.FULL: count, pb.LossParameter.VALID: n_valid,
                pb.LossParameter.BATCH_SIZE: outer, pb.LossParameter.NONE: 1}[normalization]
        norm = max(1.0, float(norm))
        ctx.save_for_backward(x, t, valid)
        ctx.norm = norm
        ctx.has_valid = valid is not None
        # Caffe accumulates the terms one by one in float32; its rounding shows at ~1e-5
        # relative for 78400 terms, so the same sequential float32 sum is done here.
        flat = terms.detach().reshape(-1).cpu().numpy()
        total = np.add.accumulate(flat, dtype=np.float32)[-1] if flat.size else np.float32(0)
        return torch.tensor(float(np.float32(-total) / np.float32(norm)), dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad):
        x, t, valid = ctx.saved_tensors
        g = torch.sigmoid(x) - t
        if ctx.has_valid:
            g = g * valid
        return g * (grad / ctx.norm), None, None, None


class _kernels:
    """Context: oneDNN on or off, NNPACK off, for the convolutions (restores the settings)."""

    def __init__(self, onednn):
        self.onednn = onednn

    def __enter__(self):
        self.saved = torch.backends.mkldnn.enabled, torch.backends.nnpack.set_flags(False)[0]
        torch.backends.mkldnn.enabled = self.onednn

    def __exit__(self, *exc):
        torch.backends.mkldnn.enabled = self.saved[0]
        torch.backends.nnpack.set_flags(self.saved[1])


#: reduction length (images x output positions) of one chunk in _weight_grad
WGRAD_CHUNK = 8192


def _gemm_shaped(rows, depth, cols):
    """Whether im2col's per-image GEMM ``(rows x depth) @ (depth x cols)`` is well shaped:
    PyTorch's im2col path (Caffe's algorithm) is then about as fast as oneDNN."""
    return rows >= 16 and depth >= 16 and cols >= 16


def _flipped(w, groups):
    """Weights ``(A, B/g, kh, kw)`` -> ``(B, A/g, kh, kw)`` rotated by 180 degrees: the kernel
    that turns the adjoint of a stride-1 convolution into a forward convolution."""
    a, bg, kh, kw = w.shape
    return (w.reshape(groups, a // groups, bg, kh, kw).transpose(1, 2)
            .reshape(groups * bg, a // groups, kh, kw).flip(2, 3))


def _dnn_conv2d(x, w, b, pad, groups):
    """A stride-1 forward convolution on oneDNN."""
    with _kernels(True):
        return F.conv2d(x, w, b, 1, list(pad), 1, groups)


def _weight_grad(inp, gout, kernel, stride, pad, dilation, groups):
    """The weight gradient ``(O, C/groups, kh, kw)`` of the convolution ``inp (N, C, H, W) ->
    gout (N, O, Ho, Wo)``, with Caffe's float32 accuracy and oneDNN's speed: a forward
    convolution of the inputs with the output gradients, the images acting as channels, in
    one grouped oneDNN call over equal chunks of at most WGRAD_CHUNK terms (images x output
    positions) whose partial sums are added in float64. (oneDNN's own weight gradient, like
    a single chunk of the whole batch, accumulates up to 57600 terms in one float32 chain:
    2-4e-6 from float64, ~10x Caffe's error, which Model 5's tanh code amplifies past 1e-5.
    PyTorch's im2col weight gradient is as accurate but 2-3x slower and single-threaded.)"""
    if groups > 1:
        ci, co = inp.shape[1] // groups, gout.shape[1] // groups
        return torch.cat([_weight_grad(inp[:, i * ci:(i + 1) * ci], gout[:, i * co:(i + 1) * co], kernel,
                                       stride, pad, dilation, 1) for i in range(groups)])
    n_img, c, _, _ = inp.shape
    o, ho, wo = gout.shape[1:]
    chunks = min(n_img, -(-n_img * ho * wo // WGRAD_CHUNK))
    while n_img % chunks:  # equal chunks: the smallest divisor of the batch size that is large enough
        chunks += 1
    per = n_img // chunks
    x = inp.transpose(0, 1)
    w = gout.transpose(0, 1).reshape(o, chunks, per, ho, wo).transpose(0, 1).reshape(chunks * o, per, ho, wo)
    with _kernels(True):
        r = F.conv2d(x, w, None, list(dilation), list(pad), list(stride), chunks)
    r = r[:, :, :kernel[0], :kernel[1]].reshape(c, chunks, o, kernel[0], kernel[1])
    if chunks == 1:
        return r[:, 0].transpose(0, 1)
    return r.sum(1, dtype=torch.float64).to(inp.dtype).transpose(0, 1)


class _CaffeConv(torch.autograd.Function):
    """Convolution / deconvolution on the CPU with Caffe's accuracy (within float32 rounding).

    NNPACK is never used: its Winograd/FFT transforms give ~1e-7 outputs where Caffe gives
    exact zeros, which flips MAX pooling ties and so the switches. Without ``onednn``
    everything is PyTorch's im2col + GEMM path, Caffe's own algorithm. With ``onednn`` (the
    default), each product takes the faster of two kernels of Caffe's accuracy:

    - a convolution's forward pass stays im2col + GEMM where that GEMM is well shaped
      (:func:`_gemm_shaped`; all of Models 3-5's encoder): that is Caffe's summation order,
      and a tanh code (Model 5) amplifies any other rounding of the encoder ~100x (oneDNN's
      direct convolution there puts Model 5's gradients 2.4e-5 from Caffe's); elsewhere
      (Model 1's 4-map and 8-map layers) oneDNN;
    - a deconvolution's forward pass and every input gradient are oneDNN forward
      convolutions (stride 1: the adjoint with the rotated kernel, :func:`_flipped`),
      ~1e-7 from float64 like Caffe; a deconvolution to fewer than 4 maps (oneDNN is slow
      there) stays im2col;
    - the weight gradient is :func:`_weight_grad`, the bias gradient a sum.

    2-10x faster than the im2col path alone on these shapes (whose backward zero-fills
    large buffers). Strides, dilations or pads >= the kernel take PyTorch's oneDNN
    convolution for the forward pass and input gradient instead."""

    @staticmethod
    def forward(ctx, x, w, b, stride, pad, dilation, groups, transposed, onednn):
        ctx.save_for_backward(x, w)
        ctx.conf = (list(stride), list(pad), list(dilation), transposed, [0, 0], groups)
        ctx.bias_sizes = [b.shape[0]] if b is not None else None
        kh, kw = w.shape[2:]
        ctx.simple = (tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and pad[0] < kh and pad[1] < kw)
        ctx.onednn = onednn
        full = (kh - 1 - pad[0], kw - 1 - pad[1])
        if transposed:
            n_out = w.shape[1]
            if onednn and ctx.simple and n_out >= 4:
                return _dnn_conv2d(x, _flipped(w, groups), b, full, groups)
            use_dnn = onednn and n_out >= 4
        else:
            ho = (x.shape[2] + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            wo = (x.shape[3] + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            use_dnn = onednn and not _gemm_shaped(w.shape[0] // groups, w[0].numel(), ho * wo)
        with _kernels(use_dnn):
            return torch.ops.aten.convolution(x, w, b, list(stride), list(pad), list(dilation), transposed,
                                              [0, 0], groups)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = bool(need_b and ctx.bias_sizes)
        gx = gw = gb = None
        stride, pad, dilation, transposed, _, groups = ctx.conf
        if not ctx.onednn:
            with _kernels(False):
                gx, gw, gb = torch.ops.aten.convolution_backward(gy, x, w, ctx.bias_sizes, *ctx.conf,
                                                                 [bool(need_x), bool(need_w), need_b])
            return gx, gw, gb, None, None, None, None, None, None
        if need_x:
            kh, kw = w.shape[2:]
            if ctx.simple and transposed:
                gx = _dnn_conv2d(gy, w, None, pad, groups)
            elif ctx.simple:
                gx = _dnn_conv2d(gy, _flipped(w, groups), None, (kh - 1 - pad[0], kw - 1 - pad[1]), groups)
            else:
                with _kernels(True):
                    gx = torch.ops.aten.convolution_backward(gy, x, w, None, *ctx.conf, [True, False, False])[0]
        if need_w:
            kernel = tuple(w.shape[2:])
            if transposed:  # the weight gradient of the adjoint convolution gy -> x
                gw = _weight_grad(gy, x, kernel, stride, pad, dilation, groups)
            else:
                gw = _weight_grad(x, gy, kernel, stride, pad, dilation, groups)
        if need_b:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None, None


class _ContrastiveLoss(torch.autograd.Function):
    """Caffe's ContrastiveLoss with its exact backward (the 1e-4 in the distance)."""

    @staticmethod
    def forward(ctx, a, b, sim, margin, legacy):
        n = a.shape[0]
        diff = (a - b).reshape(n, -1)
        dist_sq = (diff * diff).sum(1)
        similar = sim.reshape(n).to(torch.int64) != 0
        if legacy:
            dis = torch.clamp(margin - dist_sq, min=0)
        else:
            dis = torch.clamp(margin - torch.sqrt(dist_sq), min=0) ** 2
        loss = torch.where(similar, dist_sq, dis).sum() / n / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shape = margin, legacy, a.shape
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, dist_sq, similar = ctx.saved_tensors
        n = diff.shape[0]
        alpha = grad / n
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(similar, alpha.expand_as(dist_sq),
                           torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        ga = (coef[:, None] * diff).reshape(ctx.shape)
        return ga, -ga, None, None, None


# ----------------------------------------------------------------------------- data

class HDF5Source:
    """Caffe's HDF5Data without shuffle: rows of the listed files in order, wrapping around."""

    def __init__(self, lp, cwd, cache=None):
        import h5py
        p = lp.hdf5_data_param
        if p.shuffle:
            raise CaeError("layer %s: hdf5_data_param shuffle: true is not supported by the torch "
                           "backend" % lp.name)
        if not p.batch_size:
            raise CaeError("layer %s: hdf5_data_param batch_size is required" % lp.name)
        self.name, self.tops, self.batch = lp.name, list(lp.top), int(p.batch_size)
        src = os.path.join(cwd, p.source)
        try:
            with open(src) as f:
                files = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise CaeError("layer %s: %s: cannot read HDF5 list file (%s)"
                           % (lp.name, p.source, exc.strerror)) from None
        if not files:
            raise CaeError("layer %s: %s lists no HDF5 files" % (lp.name, p.source))
        self.files = [os.path.join(cwd, f) for f in files]
        self._h5py = h5py
        self._cache = cache if cache is not None else {}
        self.file, self.row = 0, 0
        self.data = self._load(0)

    def _load(self, k):
        path = self.files[k]
        key = (os.path.abspath(path), tuple(self.tops))
        if key in self._cache:
            return self._cache[key]
        try:
            with self._h5py.File(path, "r") as f:
                arrays = []
                for top in self.tops:
                    if top not in f:
                        raise CaeError("layer %s: %s has no dataset %r" % (self.name, path, top))
                    arrays.append(np.ascontiguousarray(f[top][()], dtype=np.float32))
        except OSError as exc:
            raise CaeError("layer %s: %s: cannot read HDF5 file (%s)" % (self.name, path, exc)) from None
        n = arrays[0].shape[0]
        if n == 0 or any(a.shape[0] != n for a in arrays):
            raise CaeError("layer %s: %s: datasets %s are empty or differ in rows"
                           % (self.name, path, self.tops))
        if len(self.files) == 1:
            self._cache[key] = arrays
        return arrays

    def shapes(self):
        return [(self.batch,) + a.shape[1:] for a in self.data]

    def next_batch(self):
        """One batch per top (numpy float32), advancing like Caffe's HDF5DataLayer::Next."""
        parts = [[] for _ in self.tops]
        need = self.batch
        while need:
            n = self.data[0].shape[0]
            take = min(need, n - self.row)
            for j, a in enumerate(self.data):
                parts[j].append(a[self.row:self.row + take])
            need -= take
            self.row += take
            if self.row == n:
                self.row = 0
                if len(self.files) > 1:
                    self.file = (self.file + 1) % len(self.files)
                    self.data = self._load(self.file)
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def skip(self, batches):
        """Advance by ``batches`` batches without reading them (resume at the same data order)."""
        rows = batches * self.batch
        if len(self.files) == 1:
            self.row = (self.row + rows) % self.data[0].shape[0]
            return
        while rows:
            n = self.data[0].shape[0]
            take = min(rows, n - self.row)
            rows -= take
            self.row += take
            if self.row == n:
                self.row = 0
                self.file = (self.file + 1) % len(self.files)
                self.data = self._load(self.file)

    def state(self):
        return {"file": self.file, "row": self.row}

    def set_state(self, state):
        self.file, self.row = int(state["file"]), int(state["row"])
        self.data = self._load(self.file)


# ----------------------------------------------------------------------------- layers

class Layer:
    """One Caffe layer: ``setup`` (creates parameter blobs from bottom shapes) and ``forward``."""

    def __init__(self, lp, net):
        self.lp, self.name, self.type = lp, lp.name, lp.type
        self.bottoms, self.tops = list(lp.bottom), list(lp.top)
        self.blobs = []
        self.net = net

    def setup(self, bottoms):
        pass

    def forward(self, bottoms):
        raise NotImplementedError

    def need_bottoms(self, *counts):
        if len(self.bottoms) not in counts:
            raise CaeError("layer %s (%s): expected %s bottom(s), got %d"
                           % (self.name, self.type, " or ".join(map(str, counts)), len(self.bottoms)))

    def need_tops(self, *counts):
        if len(self.tops) not in counts:
            raise CaeError("layer %s (%s): expected %s top(s), got %d"
                           % (self.name, self.type, " or ".join(map(str, counts)), len(self.tops)))


class InputLayer(Layer):
    def __init__(self, lp, net):
        super().__init__(lp, net)
        shapes = list(lp.input_param.shape)
        if len(shapes) not in (1, len(self.tops)):
            raise CaeError("layer %s: input_param needs one shape, or one per top" % self.name)
        self.shapes = [tuple(int(d) for d in shapes[min(i, len(shapes) - 1)].dim)
                       for i in range(len(self.tops))]

    def forward(self, bottoms):
        out = []
        for top, shape in zip(self.tops, self.shapes):
            x = self.net.inputs.get(top)
            if x is None:
                x = torch.zeros(shape, device=self.net.device)
            out.append(x)
        return out


class HDF5DataLayer(Layer):
    def __init__(self, lp, net):
        super().__init__(lp, net)
        self.source = HDF5Source(lp, net.cwd, net.h5_cache)
        self.last = None

    def forward(self, bottoms):
        if self.net.setting_up:
            return [torch.zeros(s, device=self.net.device) for s in self.source.shapes()]
        if self.net.replaying and self.last is not None:
            return self.last
        self.last = [torch.from_numpy(a).to(self.net.device) for a in self.source.next_batch()]
        return self.last


class ConvLayer(Layer):
    deconv = False

    def __init__(self, lp, net):
        super().__init__(lp, net)
        self.need_bottoms(1)
        self.need_tops(1)
        cp = lp.convolution_param
        if cp.axis != 1:
            raise CaeError("layer %s: convolution_param axis %d: only 1 is supported" % (self.name, cp.axis))
        has_k = cp.HasField("kernel_h") or cp.HasField("kernel_w")
        self.kernel = _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w, "kernel_size", self.name, None, has_k)
        self.stride = _pair(cp.stride, cp.stride_h, cp.stride_w, "stride", self.name, 1,
                            cp.HasField("stride_h") or cp.HasField("stride_w"))
        self.pad = _pair(cp.pad, cp.pad_h, cp.pad_w, "pad", self.name, 0,
                         cp.HasField("pad_h") or cp.HasField("pad_w"))
        self.dilation = _pair(cp.dilation, 0, 0, "dilation", self.name, 1, False)
        self.group = int(cp.group)
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise CaeError("layer %s: convolution_param num_output is required" % self.name)
        self.bias_term = cp.bias_term
        self.cp = cp

    def setup(self, bottoms):
        x = bottoms[0]
        if x.dim() != 4:
            raise CaeError("layer %s: expected a 4-axis bottom, got shape %s" % (self.name, tuple(x.shape)))
        c = x.shape[1]
        if c % self.group or self.num_output % self.group:
            raise CaeError("layer %s: channels %d and num_output %d must divide by group %d"
                           % (self.name, c, self.num_output, self.group))
        if self.deconv:
            wshape = (c, self.num_output // self.group) + self.kernel
        else:
            wshape = (self.num_output, c // self.group) + self.kernel
        self.blobs = [self.net.param(self, 0, wshape, self.cp.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.net.param(self, 1, (self.num_output,), self.cp.bias_filler))

    def forward(self, bottoms):
        b = self.blobs[1] if self.bias_term else None
        x, w = bottoms[0], self.blobs[0]
        if (self.deconv and self.net.onednn and x.shape[2:] == (1, 1) and self.pad == (0, 0)
                and self.group == 1 and self.dilation == (1, 1)):
            # a deconvolution of a 1x1 map (Models 1-5's deconv2) is a fully-connected layer: one GEMM
            n, kh, kw = x.shape[0], w.shape[2], w.shape[3]
            y = x.reshape(n, -1).mm(w.reshape(w.shape[0], -1)).reshape(n, w.shape[1], kh, kw)
            return [y + b.reshape(1, -1, 1, 1) if b is not None else y]
        return [_CaffeConv.apply(bottoms[0], self.blobs[0], b, self.stride, self.pad, self.dilation,
                                 self.group, self.deconv, self.net.onednn)]


class DeconvLayer(ConvLayer):
    deconv = True


class InnerProductLayer(Layer):
    def __init__(self, lp, net):
        super().__init__(lp, net)
        self.need_bottoms(1)
        self.need_tops(1)
        self.ip = lp.inner_product_param
        if self.ip.num_output <= 0:
            raise CaeError("layer %s: inner_product_param num_output is required" % self.name)

    def setup(self, bottoms):
        x = bottoms[0]
        self.axis = _canon(self.ip.axis, x.dim(), self.name)
        k = int(np.prod(x.shape[self.axis:]))
        n = int(self.ip.num_output)
        wshape = (k, n) if self.ip.transpose else (n, k)
        self.blobs = [self.net.param(self, 0, wshape, self.ip.weight_filler)]
        if self.ip.bias_term:
            self.blobs.append(self.net.param(self, 1, (n,), self.ip.bias_filler))

    def forward(self, bottoms):
        x = bottoms[0]
        x = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        w = self.blobs[0].t() if self.ip.transpose else self.blobs[0]
        return [F.linear(x, w, self.blobs[1] if self.ip.bias_term else None)]


def _window(p, name, allow_global):
    has_k = p.HasField("kernel_h") or p.HasField("kernel_w")
    if p.HasField("kernel_size") and has_k:
        raise CaeError("layer %s: give kernel_size or kernel_h/kernel_w, not both" % name)
    if has_k:
        k = (int(p.kernel_h), int(p.kernel_w))
    elif p.HasField("kernel_size"):
        k = (int(p.kernel_size),) * 2
    elif allow_global:
        k = None
    else:
        raise CaeError("layer %s: kernel_size is required" % name)
    if p.HasField("stride_h") or p.HasField("stride_w"):
        s = (int(p.stride_h), int(p.stride_w))
    else:
        s = (int(p.stride),) * 2
    if p.HasField("pad_h") or p.HasField("pad_w"):
        pad = (int(p.pad_h), int(p.pad_w))
    else:
        pad = (int(p.pad),) * 2
    return k, s, pad


class _MaxPool(torch.autograd.Function):
    """PyTorch's MAX pooling (Caffe's rule: the first maximum of the window in row-major
    order, flat index ``h*W+w``) with the forward pass on a channels-last copy on the CPU,
    ~4x faster there than on NCHW; the backward pass routes the gradient by the indices."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pad):
        src = x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x
        y, idx = F.max_pool2d(src, kernel, stride, pad, ceil_mode=True, return_indices=True)
        y, idx = y.contiguous(), idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.conf = (list(kernel), list(stride), list(pad))
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, gy, _gidx):
        x, idx = ctx.saved_tensors
        kernel, stride, pad = ctx.conf
        gx = torch.ops.aten.max_pool2d_with_indices_backward(gy.contiguous(), x, kernel, stride, pad, [1, 1],
                                                             True, idx)
        return gx, None, None, None


class PoolingLayer(Layer):
    def __init__(self, lp, net):
        super().__init__(lp, net)
        self.need_bottoms(1)
        self.need_tops(1, 2)
        p = lp.pooling_param
        self.method = p.pool
        if self.method == pb.PoolingParameter.STOCHASTIC:
            raise CaeError("layer %s: STOCHASTIC pooling is not supported by the torch backend" % self.name)
        if len(self.tops) == 2 and self.method != pb.PoolingParameter.MAX:
            raise CaeError("layer %s: a mask top needs pool: MAX" % self.name)
        self.kernel, self.stride, self.pad = _window(p, self.name, p.global_pooling)
        self.global_pooling = p.global_pooling

    def setup(self, bottoms):
        x = bottoms[0]
        if x.dim() != 4:
            raise CaeError("layer %s: expected a 4-axis bottom, got shape %s" % (self.name, tuple(x.shape)))
        h, w = x.shape[2], x.shape[3]
        if self.global_pooling:
            self.kernel, self.stride, self.pad = (h, w), (1, 1), (0, 0)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        if ph >= kh or pw >= kw:
            raise CaeError("layer %s: pad must be smaller than the kernel" % self.name)
        if 2 * ph > kh or 2 * pw > kw:
            raise CaeError("layer %s: pad > kernel/2 is not supported by the torch backend" % self.name)
        oh = int(math.ceil((h + 2 * ph - kh) / sh)) + 1
        ow = int(math.ceil((w + 2 * pw - kw) / sw)) + 1
        if ph or pw:
            if (oh - 1) * sh >= h + ph:
                oh -= 1
            if (ow - 1) * sw >= w + pw:
                ow -= 1
        self.out_hw = (oh, ow)

    def forward(self, bottoms):
        x = bottoms[0]
        if self.method == pb.PoolingParameter.MAX:
            y, idx = _MaxPool.apply(x, self.kernel, self.stride, self.pad)
            out = [y, idx.to(x.dtype)] if len(self.tops) == 2 else [y]
        else:
            y = F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=True,
                             count_include_pad=True)
            out = [y]
        if tuple(y.shape[2:]) != self.out_hw:
            raise CaeError("layer %s: torch pooling gives %s, Caffe %s (window geometry not supported)"
                           % (self.name, tuple(y.shape[2:]), self.out_hw))
        return out


class UnpoolingLayer(Layer):
    def __init__(self, lp, net):
        super().__init__(lp, net)
        self.need_bottoms(1, 2)
        self.need_tops(1)
        p = lp.unpooling_param
        self.method = p.unpool
        self.kernel, self.stride, pad = _window(p, self.name, False)
        if pad != (0, 0):
            raise CaeError("layer %s: Unpooling pad %dx%d is not supported; only pad 0" % ((self.name,) + pad))
        if len(self.bottoms) == 2 and self.method != pb.UnpoolingParameter.MAX:
            raise CaeError("layer %s: a mask bottom needs unpool: MAX" % self.name)
        if p.HasField("unpool_size"):
            self.size = (int(p.unpool_size),) * 2
        elif p.HasField("unpool_h") or p.HasField("unpool_w"):
            self.size = (int(p.unpool_h), int(p.unpool_w))
        else:
            self.size = None

    def setup(self, bottoms):
        x = bottoms[0]
        if x.dim() != 4:
            raise CaeError("layer %s: expected a 4-axis bottom, got shape %s" % (self.name, tuple(x.shape)))
        h, w = x.shape[2], x.shape[3]
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if self.size is None:
            self.size = (max((h - 1) * sh + kh, h * sh + 1), max((w - 1) * sw + kw, w * sw + 1))
        oh, ow = self.size
        self.in_hw = (h, w)
        if len(bottoms) == 2 and tuple(bottoms[1].shape) != tuple(x.shape):
            raise CaeError("layer %s: the mask bottom must have the shape %s, not %s"
                           % (self.name, tuple(x.shape), tuple(bottoms[1].shape)))
        dev = self.net.device
        if self.method == pb.UnpoolingParameter.MAX:
            ph = np.minimum(np.arange(h) * sh, oh - 1)
            pw = np.minimum(np.arange(w) * sw, ow - 1)
            self.topleft = torch.from_numpy((ph[:, None] * ow + pw[None, :]).reshape(-1)).to(dev)
        else:
            m = np.zeros((h * w, oh * ow), dtype=np.float32)
            for i in range(h):
                for j in range(w):
                    h0, w0 = i * sh, j * sw
                    h1, w1 = min(h0 + kh, oh), min(w0 + kw, ow)
                    if h1 <= h0 or w1 <= w0:
                        continue
                    v = 1.0
                    if self.method == pb.UnpoolingParameter.AVE:
                        v = 1.0 / ((h1 - h0) * (w1 - w0))
                    for a in range(h0, h1):
                        m[i * w + j, a * ow + w0:a * ow + w1] += v
            self.spread = torch.from_numpy(m).to(dev)

    def forward(self, bottoms):
        x = bottoms[0]
        n, c, h, w = x.shape
        oh, ow = self.size
        flat = x.reshape(n * c, h * w)
        if self.method == pb.UnpoolingParameter.MAX:
            if len(bottoms) == 2:
                idx = bottoms[1].reshape(n * c, h * w).to(torch.int64)
            else:
                idx = self.topleft.expand(n * c, h * w)
            out = flat.new_zeros(n * c, oh * ow).scatter(1, idx, flat)
        else:
            out = flat @ self.spread
        return [out.reshape(n, c, oh, ow)]


class ReshapeLayer(Layer):
    def forward(self, bottoms):
        self.need_bottoms(1)
        x = bottoms[0]
        rp = self.lp.reshape_param
        dims = [int(d) for d in rp.shape.dim]
        nd = x.dim()
        start = rp.axis if rp.axis >= 0 else nd + rp.axis + 1
        if not 0 <= start <= nd:
            raise CaeError("layer %s: reshape_param axis %d out of range" % (self.name, rp.axis))
        end = nd if rp.num_axes == -1 else start + rp.num_axes
        if rp.num_axes < -1 or end > nd:
            raise CaeError("layer %s: reshape_param num_axes %d out of range" % (self.name, rp.num_axes))
        shape = list(x.shape[:start]) + dims + list(x.shape[end:])
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= nd:
                    raise CaeError("layer %s: reshape dim 0 copies a missing axis" % self.name)
                shape[start + i] = x.shape[start + i]
        if shape.count(-1) > 1:
            raise CaeError("layer %s: at most one reshape dim may be -1" % self.name)
        known = int(np.prod([d for d in shape if d != -1]))
        if -1 in shape:
            if known == 0 or x.numel() % known:
                raise CaeError("layer %s: cannot infer the -1 reshape dim" % self.name)
            shape[shape.index(-1)] = x.numel() // known
        if int(np.prod(shape)) != x.numel():
            raise CaeError("layer %s: reshape %s -> %s changes the count" % (self.name, tuple(x.shape), shape))
        return [x.reshape(shape)]


class FlattenLayer(Layer):
    def forward(self, bottoms):
        x = bottoms[0]
        fp = self.lp.flatten_param
        a = _canon(fp.axis, x.dim(), self.name)
        e = _canon(fp.end_axis, x.dim(), self.name)
        return [x.reshape(tuple(x.shape[:a]) + (-1,) + tuple(x.shape[e + 1:]))]


class SliceLayer(Layer):
    def forward(self, bottoms):
        x = bottoms[0]
        sp = self.lp.slice_param
        axis = _canon(sp.slice_dim if sp.HasField("slice_dim") else sp.axis, x.dim(), self.name)
        size = x.shape[axis]
        points = [int(p) for p in sp.slice_point]
        if points:
            if len(points) != len(self.tops) - 1:
                raise CaeError("layer %s: %d slice_point(s) for %d tops" % (self.name, len(points), len(self.tops)))
            bounds = [0] + points + [size]
        else:
            if size % len(self.tops):
                raise CaeError("layer %s: axis size %d does not divide into %d tops"
                               % (self.name, size, len(self.tops)))
            step = size // len(self.tops)
            bounds = list(range(0, size + 1, step))
        if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
            raise CaeError("layer %s: slice points %s are not increasing within %d" % (self.name, points, size))
        return [x.narrow(axis, b0, b1 - b0) for b0, b1 in zip(bounds, bounds[1:])]


class SplitLayer(Layer):
    def forward(self, bottoms):
        return [bottoms[0]] * len(self.tops)


class _CaffeSigmoid(torch.autograd.Function):
    """Caffe's sigmoid, ``0.5 * tanh(0.5 * x) + 0.5``: it rounds differently from
    ``1 / (1 + exp(-x))`` near 0.5 and 1, which decides ties in the MAX pooling that follows
    (and so the switches). Backward ``dy * y * (1 - y)`` as Caffe."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x * 0.5).mul_(0.5).add_(0.5)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return (gy * y).mul_(1 - y)


class SigmoidLayer(Layer):
    def forward(self, bottoms):
        return [_CaffeSigmoid.apply(bottoms[0])]


class TanHLayer(Layer):
    def forward(self, bottoms):
        return [torch.tanh(bottoms[0])]


class ReLULayer(Layer):
    def forward(self, bottoms):
        slope = float(self.lp.relu_param.negative_slope)
        if slope:
            return [F.leaky_relu(bottoms[0], slope)]
        return [F.relu(bottoms[0])]


class SCELossLayer(Layer):
    def setup(self, bottoms):
        self.need_bottoms(2)
        if bottoms[0].numel() != bottoms[1].numel():
            raise CaeError("layer %s: SigmoidCrossEntropyLoss inputs must have the same count (%d vs %d)"
                           % (self.name, bottoms[0].numel(), bottoms[1].numel()))
        lo = self.lp.loss_param
        if lo.HasField("normalization"):
            self.norm = lo.normalization
        elif lo.HasField("normalize"):
            self.norm = pb.LossParameter.VALID if lo.normalize else pb.LossParameter.BATCH_SIZE
        else:
            self.norm = pb.LossParameter.BATCH_SIZE
        self.ignore = int(lo.ignore_label) if lo.HasField("ignore_label") else None

    def forward(self, bottoms):
        x = bottoms[0]
        t = bottoms[1].reshape(x.shape)
        valid = None
        if self.ignore is not None:
            valid = (t.to(torch.int64) != self.ignore).to(x.dtype)
        return [_SCELoss.apply(x, t, valid, self.norm)]


class EuclideanLossLayer(Layer):
    def setup(self, bottoms):
        self.need_bottoms(2)
        if bottoms[0].numel() != bottoms[1].numel():
            raise CaeError("layer %s: EuclideanLoss inputs must have the same count (%d vs %d)"
                           % (self.name, bottoms[0].numel(), bottoms[1].numel()))

    def forward(self, bottoms):
        a, b = bottoms
        d = a - b.reshape(a.shape)
        return [(d * d).sum() / a.shape[0] / 2]


class ContrastiveLossLayer(Layer):
    def setup(self, bottoms):
        self.need_bottoms(3)

    def forward(self, bottoms):
        p = self.lp.contrastive_loss_param
        return [_ContrastiveLoss.apply(bottoms[0], bottoms[1], bottoms[2], float(np.float32(p.margin)),
                                       bool(p.legacy_version))]


LAYERS = {
    "Input": InputLayer, "HDF5Data": HDF5DataLayer, "Convolution": ConvLayer,
    "Deconvolution": DeconvLayer, "InnerProduct": InnerProductLayer, "Pooling": PoolingLayer,
    "Unpooling": UnpoolingLayer, "Reshape": ReshapeLayer, "Flatten": FlattenLayer,
    "Slice": SliceLayer, "Split": SplitLayer, "Sigmoid": SigmoidLayer, "TanH": TanHLayer,
    "ReLU": ReLULayer, "SigmoidCrossEntropyLoss": SCELossLayer, "EuclideanLoss": EuclideanLossLayer,
    "ContrastiveLoss": ContrastiveLossLayer,
}


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
    (top name -> loss weight), ``blobs`` (after ``forward``).
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
        self.layer_params = filter_layers(net_param, self.phase, tuple(stages), level)
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
        self.losses = {}
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
        Returns (blobs, total loss as a float)."""
        blobs, total = self.forward()
        if total is None:
            raise CaeError("net %s: no loss top to train on" % self.name)
        total.backward()
        return blobs, float(total.detach())

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
