"""The Caffe-exact numerics of the torch backend, apart from the layers that use them.

* ``fill``: Caffe's fillers (filler.hpp) on a ``torch.Generator``;
* autograd Functions whose forward and backward are Caffe's to float32 rounding:
  ``_CaffeConv`` (convolution and deconvolution, im2col or oneDNN per product, see there),
  ``_MaxPool`` (Caffe's first-maximum rule, channels-last on the CPU), ``_CaffeSigmoid``
  (``torch.sigmoid``, within an ulp of Caffe's ``0.5 * tanh(0.5 * x) + 0.5``), ``_SCELoss``
  (SigmoidCrossEntropyLoss: a sequential float32 sum on the CPU as Caffe's CPU layer, a
  reduction on the device elsewhere as its GPU layer) and ``_ContrastiveLoss`` (with Caffe's
  1e-4 in the distance);
* ``unpool_topleft`` / ``unpool_spread``: the index and matrix of the engine's Unpooling.

PyTorch is imported here (``import_torch``); the rest of the package works without it.
"""
import math

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


# ----------------------------------------------------------------------------- autograd kernels

class _SCELoss(torch.autograd.Function):
    """Caffe's SigmoidCrossEntropyLoss: forward sum / normalizer, backward (sigmoid - t)."""

    @staticmethod
    def forward(ctx, x, t, valid, normalization):
        pos = (x >= 0).to(x.dtype)
        terms = x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        count = x.numel()
        host = x.device.type == "cpu"
        if valid is not None:
            terms = terms * valid
            n_valid = valid.sum()
            n_valid = float(n_valid) if host else n_valid.clamp(min=1.0)
        else:
            n_valid = count
        outer = x.shape[0]
        norm = {pb.LossParameter.FULL: count, pb.LossParameter.VALID: n_valid,
                pb.LossParameter.BATCH_SIZE: outer, pb.LossParameter.NONE: 1}[normalization]
        norm = max(1.0, float(norm)) if not torch.is_tensor(norm) else norm
        ctx.save_for_backward(x, t, valid)
        ctx.norm = norm
        ctx.has_valid = valid is not None
        if not host:
            # Caffe's GPU layer sums the terms in a parallel float32 reduction (caffe_gpu_asum):
            # so here, on the device, with nothing read back.
            return -terms.detach().sum() / norm
        # Caffe's CPU layer accumulates the terms one by one in float32; its rounding shows at
        # ~1e-5 relative for 78400 terms, so the same sequential float32 sum is done here.
        flat = terms.detach().reshape(-1).numpy()
        total = np.add.accumulate(flat, dtype=np.float32)[-1] if flat.size else np.float32(0)
        return torch.tensor(float(np.float32(-total) / np.float32(norm)), dtype=x.dtype)

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


class _CaffeSigmoid(torch.autograd.Function):
    """Caffe's Sigmoid layer. Caffe computes ``0.5 * tanh(0.5 * x) + 0.5``; ``torch.sigmoid``
    differs from that by at most one float32 ulp (in about half of the values) and costs
    about a tenth of it, and the equality tests against Caffe (forward, gradients, 100 iterations,
    the chaotic nets' bounds, MAX-pooling switches included) pass with it, so it is used.
    Backward ``dy * y * (1 - y)`` as Caffe."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return (gy * y).mul_(1 - y)


# ----------------------------------------------------------------------------- unpooling

def unpool_topleft(h, w, oh, ow, stride):
    """Flat output index ``h*W+w`` of each input's window corner (MAX unpooling without a mask)."""
    ph = np.minimum(np.arange(h) * stride[0], oh - 1)
    pw = np.minimum(np.arange(w) * stride[1], ow - 1)
    return torch.from_numpy((ph[:, None] * ow + pw[None, :]).reshape(-1))


def unpool_spread(h, w, oh, ow, kernel, stride, average):
    """The (h*w, oh*ow) matrix that copies each input over its window (TILE), divided by the
    window's size inside the output for AVE (``average``)."""
    (kh, kw), (sh, sw) = kernel, stride
    m = np.zeros((h * w, oh * ow), dtype=np.float32)
    for i in range(h):
        for j in range(w):
            h0, w0 = i * sh, j * sw
            h1, w1 = min(h0 + kh, oh), min(w0 + kw, ow)
            if h1 <= h0 or w1 <= w0:
                continue
            v = 1.0
            if average:
                v = 1.0 / ((h1 - h0) * (w1 - w0))
            for a in range(h0, h1):
                m[i * w + j, a * ow + w0:a * ow + w1] += v
    return torch.from_numpy(m)
