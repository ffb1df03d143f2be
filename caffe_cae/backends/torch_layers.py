"""The Caffe layer types of the torch backend (``LAYERS``: type string -> class).

Each ``Layer`` reads its LayerParameter, creates its parameter blobs in ``setup`` (through
``TorchNet.param``) and computes its tops in ``forward``; the numerics live in
``torch_kernels``, Caffe's window and size rules in ``caffe_cae.caffe_rules``. See
``torch_net`` for the supported types and their limits.
"""
import numpy as np

from .. import caffe_rules
from ..errors import CaeError
from ..proto import caffe_cae_pb2 as pb
from .torch_data import HDF5Source, to_device
from .torch_kernels import (F, _CaffeConv, _CaffeSigmoid, _ContrastiveLoss, _MaxPool, _SCELoss, torch,
                            unpool_spread, unpool_topleft)


def _window(p, name, global_pooling=False):
    return caffe_rules.window(p, global_pooling, "layer %s" % name)


def _canon(axis, nd, name):
    return caffe_rules.canonical_axis(axis, nd, "layer %s" % name)


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

    def need_same_counts(self, bottoms):
        """A loss's two inputs hold as many values (Caffe's CHECK_EQ in Reshape)."""
        if bottoms[0].numel() != bottoms[1].numel():
            raise CaeError("layer %s: %s inputs must have the same count (%d vs %d)"
                           % (self.name, self.type, bottoms[0].numel(), bottoms[1].numel()))

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
        self.last = [to_device(a, self.net.device) for a in self.source.next_batch()]
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
        self.kernel, self.stride, self.pad = _window(cp, self.name)
        self.dilation = caffe_rules.axis_pair(cp, "dilation", default=1, where="layer %s" % self.name)
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
        self.out_hw = (caffe_rules.pool_out(h, kh, sh, ph), caffe_rules.pool_out(w, kw, sw, pw))

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
        self.kernel, self.stride, pad = _window(p, self.name)
        if pad != (0, 0):
            raise CaeError("layer %s: Unpooling pad %dx%d is not supported; only pad 0" % ((self.name,) + pad))
        if len(self.bottoms) == 2 and self.method != pb.UnpoolingParameter.MAX:
            raise CaeError("layer %s: a mask bottom needs unpool: MAX" % self.name)
        self.size = caffe_rules.unpool_explicit(p)

    def setup(self, bottoms):
        x = bottoms[0]
        if x.dim() != 4:
            raise CaeError("layer %s: expected a 4-axis bottom, got shape %s" % (self.name, tuple(x.shape)))
        h, w = x.shape[2], x.shape[3]
        (kh, kw), (sh, sw) = self.kernel, self.stride
        if self.size is None:
            self.size = (caffe_rules.unpool_out(h, kh, sh), caffe_rules.unpool_out(w, kw, sw))
        oh, ow = self.size
        self.in_hw = (h, w)
        if len(bottoms) == 2 and tuple(bottoms[1].shape) != tuple(x.shape):
            raise CaeError("layer %s: the mask bottom must have the shape %s, not %s"
                           % (self.name, tuple(x.shape), tuple(bottoms[1].shape)))
        dev = self.net.device
        if self.method == pb.UnpoolingParameter.MAX:
            self.topleft = unpool_topleft(h, w, oh, ow, self.stride).to(dev)
        else:
            self.spread = unpool_spread(h, w, oh, ow, self.kernel, self.stride,
                                        self.method == pb.UnpoolingParameter.AVE).to(dev)

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
        self.need_same_counts(bottoms)
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
        self.need_same_counts(bottoms)

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
