"""The peer of the benchmark: the paper's auto-encoders as a user would write them in plain PyTorch.

Standard modules only (``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.MaxPool2d`` /
``nn.MaxUnpool2d``, ``nn.Linear``), autograd's own backward, ``optim.SGD`` with the paper's
solver (rate 0.006, biases at twice the rate and not decayed, weight decay 0.0005, no
momentum) and both losses of Section 3 (cross-entropy on the logits, Euclidean on the
sigmoid). The shapes are those of ``caffe_cae.specs``; PyTorch's default initialisation
(the speed does not depend on it). Nothing here is Caffe-exact: it is the obvious alternative
that ``caffe-cae bench`` times beside the torch backend. Models 1-5 and the deep AE
(``PLAIN_NETS``); the Siamese net has no peer here.
"""
import torch
from torch import nn

PLAIN_NETS = ("deep_ae", "model1", "model2", "model3", "model4", "model5")


class PlainCAE(nn.Module):
    """Models 1-5 (``model`` 1..5) with a code of ``dim`` floats; ``forward`` gives the logits."""

    def __init__(self, model, dim):
        super().__init__()
        self.act = torch.tanh if model == 5 else torch.sigmoid
        self.pooled, self.switches, self.unpooled = model != 1, model == 3, model >= 3
        if self.pooled:
            self.conv1, self.conv2 = nn.Conv2d(1, 26, 5), nn.Conv2d(26, 36, 5)
            self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
            flat = 36 * 4 * 4
        else:
            self.conv1, self.conv2 = nn.Conv2d(1, 8, 9), nn.Conv2d(8, 4, 9)
            flat = 4 * 12 * 12
        self.ip1encode, self.ip2encode = nn.Linear(flat, 250), nn.Linear(250, dim)
        self.ip1decode = nn.Linear(dim, 250)
        if self.unpooled:
            self.deconv2, self.deconv1 = nn.ConvTranspose2d(250, 36, 4), nn.ConvTranspose2d(36, 26, 5)
            self.deconv1neur = nn.ConvTranspose2d(26, 1, 5)
            self.unpool = nn.MaxUnpool2d(2, 2)
            # without switches each value goes to its window's top-left corner
            self.register_buffer("corner4", self._corners(4), persistent=False)
            self.register_buffer("corner12", self._corners(12), persistent=False)
        else:
            self.deconv2, self.deconv1 = nn.ConvTranspose2d(250, 4, 12), nn.ConvTranspose2d(4, 4, 17)
            self.deconv1neur = nn.ConvTranspose2d(4, 1, 1)

    @staticmethod
    def _corners(size):
        rows = torch.arange(size) * 2
        return (rows[:, None] * 2 * size + rows[None, :]).reshape(1, 1, size, size)

    def _unpool(self, x, mask, corners):
        index = mask if self.switches else corners.expand_as(x)
        return self.unpool(x, index)

    def forward(self, x):
        a = self.act
        masks = [None, None]
        if self.pooled:
            h, masks[0] = self.pool(a(self.conv1(x)))
            h, masks[1] = self.pool(a(self.conv2(h)))
        else:
            h = a(self.conv2(a(self.conv1(x))))
        code = self.ip2encode(a(self.ip1encode(h.flatten(1))))
        h = a(self.ip1decode(code)).reshape(-1, 250, 1, 1)
        h = a(self.deconv2(h))
        if self.unpooled:
            h = self._unpool(h, masks[1], self.corner4)
        h = a(self.deconv1(h))
        if self.unpooled:
            h = self._unpool(h, masks[0], self.corner12)
        return self.deconv1neur(h)


class PlainDeepAE(nn.Module):
    """784-1000-500-250-D-250-500-1000-784, sigmoid everywhere but the code and the logits."""

    def __init__(self, dim):
        super().__init__()
        sizes = [784, 1000, 500, 250, dim, 250, 500, 1000, 784]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        h = x.flatten(1)
        for i, fc in enumerate(self.fcs):
            h = fc(h)
            if i not in (3, len(self.fcs) - 1):
                h = torch.sigmoid(h)
        return h.reshape(x.shape)


def plain_net(net, dim):
    """The plain module of ``net`` (a name of ``PLAIN_NETS``)."""
    if net == "deep_ae":
        return PlainDeepAE(dim)
    return PlainCAE(int(net[len("model"):]), dim)


class PlainTrainer:
    """One SGD iteration of the plain module on a fixed batch ``x`` (N x 1 x 28 x 28 in [0, 1])."""

    def __init__(self, net, dim, x):
        self.model = plain_net(net, dim).to(x.device)
        self.x = x
        weights = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        biases = [p for name, p in self.model.named_parameters() if name.endswith("bias")]
        self.opt = torch.optim.SGD([{"params": weights, "lr": 0.006, "weight_decay": 0.0005},
                                    {"params": biases, "lr": 0.012, "weight_decay": 0.0}], lr=0.006)
        self.sce = nn.BCEWithLogitsLoss(reduction="sum")
        self.mse = nn.MSELoss(reduction="sum")

    def step(self, n=1):
        x, batch = self.x, self.x.shape[0]
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            logits = self.model(x)
            loss = self.sce(logits, x) / batch + self.mse(torch.sigmoid(logits), x) / (2 * batch)
            loss.backward()
            self.opt.step()
        return float(loss.detach())
