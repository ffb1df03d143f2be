"""The paper's two code classifiers, as MATLAB ran them (Section 4.2).

``matlab_classify`` is ``classify(sample, training, group)`` called with no options: the
'linear' rule, Gaussian classes with one pooled within-class covariance (denominator
N - K), **uniform priors** (MATLAB's default; they drop out of the arg max). MATLAB refuses
a pooled covariance that is not positive definite (its test: a singular value of the
scaled QR factor at or below max(N, D) * eps(largest)); so does this, with
``SingularCovariance`` naming the dimensions, instead of pseudo-inverting.

``patternnet_cv`` is ``net = patternnet(H); net = train(net, x, t)`` on each training fold,
with the paper's trainParam (epochs 6000, goal 1e-10, min_grad 1e-10, max_fail 6000) and
everything else MATLAB's default (``MLP_DEFAULTS`` says where each comes from):

* inputs: ``removeconstantrows`` then ``mapminmax`` to [-1, 1], fitted on the samples given
  to train() (the whole training fold); the held-out fold is mapped with the same
  settings, without clipping;
* ``dividerand`` 70/15/15 of the training fold (seeded per fold): SCG sees the 70 %, the
  15 % validation part picks the returned epoch, the last 15 % is not used;
* D-H-10: ``tansig`` (tanh) hidden units (``logsig`` as a setting), softmax outputs;
  Nguyen-Widrow initial hidden weights (MATLAB's initnw for a finite active range:
  rows of U(-1, 1) normalised, scaled by 0.7 H^(1/R) and by half the active range, biases
  spread linearly), U(-1, 1) output weights and biases (initnw falls back to rands for
  softmax's infinite active range);
* performance ``crossentropy``: the mean of -t log y over all K x N elements, no
  regularisation;
* ``trainscg``: Moller's scaled conjugate gradient as MATLAB writes it (sigma 5e-5,
  lambda 5e-7, restart every n-weights epochs, the finite-difference curvature); the
  weights returned are those of the epoch with the lowest validation cross-entropy.

Each fold is computed in float64 (as MATLAB computes) with PyTorch on the CPU; folds run
in parallel processes. The SCG loop (``caffe_cae.analysis.scg``) is generic over an
objective that evaluates along the current search direction; the MLP's objective exploits
that the first layer is linear in its weights, X (W + t P)' = XW' + t XP', so an epoch costs
two products with the input matrix instead of five (an identity, not an approximation: the same SCG).
"""
import time

import numpy as np

from ..errors import CaeError
from .scg import scg

#: MATLAB's patternnet/train/trainscg settings as the paper used them, each with its source.
MLP_DEFAULTS = {
    "epochs": (6000, "Section 4.2: training epochs 6000"),
    "goal": (1e-10, "Section 4.2: performance goal 1e-10"),
    "min_grad": (1e-10, "Section 4.2: minimum gradient 1e-10"),
    "max_fail": (6000, "Section 4.2: maximum validation checks 6000"),
    "sigma": (5e-5, "trainscg default"),
    "lambda": (5e-7, "trainscg default"),
    "divide": ((0.70, 0.15, 0.15), "dividerand default: train/validation/test ratios"),
    "hidden_transfer": ("tansig", "patternnet default (MATLAB's 'hyperbolic tangent sigmoid'); logsig optional"),
}
TRANSFERS = ("tansig", "logsig")
#: active input range of each hidden transfer function (MATLAB's 'active' property), for initnw
ACTIVE_RANGE = {"tansig": (-2.0, 2.0), "logsig": (-4.0, 4.0)}


class SingularCovariance(CaeError):
    """MATLAB classify's refusal: the pooled within-class covariance is not positive definite."""


def mlp_settings(**overrides):
    """MLP_DEFAULTS' values with ``overrides`` (CaeError on an unknown key or transfer function)."""
    values = {key: value for key, (value, _why) in MLP_DEFAULTS.items()}
    for key, value in overrides.items():
        if key not in values:
            raise CaeError("MLP setting %r: unknown (expected one of %s)" % (key, ", ".join(values)))
        values[key] = value
    if values["hidden_transfer"] not in TRANSFERS:
        raise CaeError("--mlp-transfer: expected tansig or logsig, got %r" % (values["hidden_transfer"],))
    if int(values["epochs"]) < 1:
        raise CaeError("--mlp-epochs: expected a positive number of epochs")
    values["epochs"] = int(values["epochs"])
    return values


# ---------------------------------------------------------------- classify()

def matlab_classify(train_x, train_y, test_x):
    """MATLAB ``classify(test_x, train_x, train_y)``, type 'linear', uniform priors."""
    classes, means, resid = _class_residuals(train_x, train_y)
    r = _pooled_factor(resid, len(classes))
    test_x = np.asarray(test_x, dtype=np.float64)
    k, d = means.shape
    # Mahalanobis distances to the class means; the log priors (uniform) and the log
    # determinant are shared by all classes and drop out of the arg max
    a = np.linalg.solve(r.T, (test_x[:, None, :] - means[None]).reshape(-1, d).T).T.reshape(len(test_x), k, d)
    return classes[np.argmin(np.sum(a * a, axis=2), axis=1)]


def check_classify(code, labels):
    """Refuse before any slow work when classify() would refuse the whole code."""
    classes, _, resid = _class_residuals(code, labels)
    _pooled_factor(resid, len(classes))


def _class_residuals(x, y):
    """(classes, class means K x D, samples minus their class mean N x D)."""
    x = np.asarray(x, dtype=np.float64)
    classes, where = np.unique(np.asarray(y), return_inverse=True)
    means = np.stack([x[where == i].mean(axis=0) for i in range(len(classes))])
    return classes, means, x - means[where]


def _pooled_factor(resid, k):
    """R with R'R = the pooled covariance (over N - K), refused as MATLAB refuses it."""
    n, d = resid.shape
    if n <= k:
        raise SingularCovariance("%d training samples for %d classes: the pooled covariance needs more" % (n, k))
    r = np.linalg.qr(resid, mode="r") / np.sqrt(n - k)
    s = np.linalg.svd(r, compute_uv=False)
    if s.size < d or np.any(s <= max(n, d) * np.spacing(s.max())):
        raise SingularCovariance(degenerate_message(resid))
    return r


def degenerate_message(resid):
    """Which code dimensions make the pooled covariance singular, in words."""
    flat = [str(i) for i in np.flatnonzero(np.abs(resid).max(axis=0) == 0)]
    if flat:
        return "pooled within-class covariance is singular: code dimension(s) %s constant within every class" \
               % ", ".join(flat)
    return "pooled within-class covariance is singular: rank %d of %d (linearly dependent code dimensions)" \
           % (np.linalg.matrix_rank(resid), resid.shape[1])


# ---------------------------------------------------------------- patternnet

class PatternnetObjective:
    """Cross-entropy of one D-H-K patternnet on its training rows, evaluated along the
    current search direction (``scg``'s protocol with F = 1; see the module doc for the
    first-layer identity). Folds run in separate objectives, so every array is 2-D and
    small enough for the CPU caches.

    x (N, R) mapped training inputs, y (N,) class indices; xv, yv the validation rows. The
    cached ``u`` = X W1' + b1 and ``xp`` = X P1' + pb1 make the hidden net input along the
    direction one fused pass, u + t xp."""

    def __init__(self, w, shapes, x, y, xv, yv, transfer):
        import torch

        self.torch = torch
        self.s, self.r, self.k = shapes
        self.x, self.xv = x, xv
        self.y, self.yv = y[None, :], yv[None, :]
        self.t_onehot = torch.zeros(self.k, len(y), dtype=x.dtype).scatter_(0, self.y, 1.0)   # K x N
        self.scale = 1.0 / (self.k * len(y))          # crossentropy: mean over K x N elements
        self.scale_v = 1.0 / (self.k * max(len(yv), 1))
        self.transfer = transfer
        self.w = w.clone()                             # (1, n)
        self.u, self.uv = self._net_input(self.x, self.w[0]), self._net_input(self.xv, self.w[0])
        self.p = self.xp = self.xvp = None
        self.cache = None

    def parts(self, v):
        """W1 (S x R), b1 (S), W2 (K x S), b2 (K) views of a flat parameter vector."""
        s, r, k = self.s, self.r, self.k
        return (v[:s * r].view(s, r), v[s * r:s * r + s], v[s * r + s:s * r + s + k * s].view(k, s), v[-k:])

    def _net_input(self, x, v):
        w1, b1, _, _ = self.parts(v)
        return self.torch.addmm(b1, x, w1.t())

    def _forward(self, u, xp=None, t=0.0):
        """Hidden outputs (N x S) and log softmax (K x N: reductions over K run along
        contiguous rows) at w + t p (at w without xp) from the cached net inputs."""
        torch = self.torch
        a = u if xp is None else torch.add(u, xp, alpha=t)
        h = torch.tanh(a) if self.transfer == "tansig" else torch.sigmoid(a)
        _, _, w2, b2 = self.parts(self.w[0])
        if xp is not None:
            _, _, p2, pb2 = self.parts(self.p[0])
            w2, b2 = w2 + t * p2, b2 + t * pb2
        return h, torch.log_softmax(torch.addmm(b2[:, None], w2, h.t()), dim=0), w2

    def _perf(self, logy, y, scale):
        return -logy.gather(0, y).sum() * scale

    def _deltas(self, h, logy, w2):
        """dperf/dz (K x N) and dperf/da (N x S) on the training rows."""
        torch = self.torch
        dz = (logy.exp() - self.t_onehot).mul_(self.scale)
        slope = torch.addcmul(torch.ones((), dtype=h.dtype), h, h, value=-1) if self.transfer == "tansig" \
            else h * (1 - h)
        return dz, torch.mm(dz.t(), w2).mul_(slope)

    def _one(self, value):
        return value.reshape(1)

    def start(self):
        h, logy, w2 = self._forward(self.u)
        return self._one(self._perf(logy, self.y, self.scale)), self._grad(h, logy, w2)

    def _grad(self, h, logy, w2):
        torch = self.torch
        dz, da = self._deltas(h, logy, w2)
        return torch.cat([torch.mm(da.t(), self.x).flatten(), da.sum(0), torch.mm(dz, h).flatten(),
                          dz.sum(1)])[None]

    def set_direction(self, p):
        self.p = p.clone()
        self.xp, self.xvp = self._net_input(self.x, self.p[0]), self._net_input(self.xv, self.p[0])
        self.cache = None

    def probe_slope(self, t):
        """p . grad at w + t p: the first layer's part is xp . dperf/da (no product with X)."""
        torch = self.torch
        t = float(t[0])
        h, logy, w2 = self._forward(self.u, self.xp, t)
        dz, da = self._deltas(h, logy, w2)
        _, _, p2, pb2 = self.parts(self.p[0])
        slope = torch.dot(self.xp.flatten(), da.flatten()) + torch.dot(torch.mm(p2, h.t()).flatten(), dz.flatten()) \
            + torch.dot(pb2, dz.sum(1))
        return self._one(slope)

    def probe_value(self, t):
        t = float(t[0])
        h, logy, w2 = self._forward(self.u, self.xp, t)
        self.cache = (t, h, logy, w2)
        return self._one(self._perf(logy, self.y, self.scale))

    def move(self, t):
        t = float(t[0])
        cached = self.cache if self.cache is not None and self.cache[0] == t else None
        self.w = self.w + t * self.p
        if t != 0.0:
            self.u.add_(self.xp, alpha=t)
            self.uv.add_(self.xvp, alpha=t)
        self.cache = None
        h, logy, w2 = cached[1:] if cached else self._forward(self.u)
        return self._one(self._perf(logy, self.y, self.scale)), self._grad(h, logy, w2)

    def val_perf(self):
        if len(self.yv) == 0:
            return None
        _, logy, _ = self._forward(self.uv)
        return self._one(self._perf(logy, self.yv, self.scale_v))

    def predict(self, v, x):
        torch = self.torch
        w1, b1, w2, b2 = self.parts(v)
        a = torch.addmm(b1, x, w1.t())
        h = torch.tanh(a) if self.transfer == "tansig" else torch.sigmoid(a)
        return torch.addmm(b2, h, w2.t()).argmax(dim=1)


def _prepare_fold(train_x, test_x, rng, hidden, divide, transfer):
    """removeconstantrows + mapminmax (fitted on the fold), dividerand, initnw/rands weights."""
    lo, hi = train_x.min(axis=0), train_x.max(axis=0)
    keep = hi > lo                                                 # removeconstantrows
    scale = np.where(keep, 2.0 / np.where(keep, hi - lo, 1.0), 0.0)

    def mapped(x):
        return np.where(keep, (x - lo) * scale - 1.0, 0.0)        # mapminmax; removed rows read 0

    n = len(train_x)
    order = rng.permutation(n)
    n_val, n_test = int(round(divide[1] / sum(divide) * n)), int(round(divide[2] / sum(divide) * n))
    val, trn = np.sort(order[:n_val]), np.sort(order[n_val + n_test:])
    r_all, r = train_x.shape[1], int(keep.sum())
    lo_a, hi_a = ACTIVE_RANGE[transfer]
    direction = rng.uniform(-1, 1, size=(hidden, r))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    magnitude = 0.7 * hidden ** (1.0 / max(r, 1))
    w1 = np.zeros((hidden, r_all))
    w1[:, keep] = 0.5 * (hi_a - lo_a) * magnitude * direction
    spread = np.linspace(-1, 1, hidden) if hidden > 1 else np.zeros(1)
    b1 = 0.5 * (hi_a - lo_a) * magnitude * spread * np.sign(direction[:, 0]) + 0.5 * (hi_a + lo_a)
    return {"x": mapped(train_x), "test": mapped(test_x), "train": trn, "val": val, "w1": w1, "b1": b1,
            "inputs": r}


def patternnet_folds(folds, hidden, classes, seed=0, settings=None, fold_ids=None, progress=None):
    """Train one patternnet per fold and predict each fold's held-out samples.

    ``folds``: [(train_x, train_y as class indices 0..K-1, test_x)]; ``fold_ids`` (default
    0..) seed each fold's division and initial weights (``numpy`` Generator [seed, id]), so
    a fold gives the same result whichever process computes it. Returns (predicted class
    indices per fold, [per-fold info: epochs, best epoch, stop reason, ...])."""
    s = mlp_settings(**(settings or {}))
    fold_ids = list(range(len(folds))) if fold_ids is None else list(fold_ids)
    preds, info = [], []
    for fold_id, (train_x, train_y, test_x) in zip(fold_ids, folds):
        p, i = patternnet_fold(train_x, train_y, test_x, hidden, int(classes), [seed, fold_id], s, progress)
        preds.append(p)
        info.append(dict(i, fold=fold_id))
    return preds, info


def train_patternnet(train_x, train_y, hidden, classes, seed, settings, test_x=None, progress=None):
    """``train(patternnet(hidden), x, t)`` on one training fold. Returns ({"held_out": class
    indices of ``test_x`` (None without it), "fold": of ``train_x``}, by the weights of the best
    validation epoch; train()'s division {"train", "val", "test"} as indices into ``train_x``; info)."""
    import torch

    t0 = time.time()
    rng = np.random.default_rng(seed)
    train_x = np.asarray(train_x, np.float64)
    prep = _prepare_fold(train_x, train_x[:0] if test_x is None else np.asarray(test_x, np.float64), rng, hidden,
                         settings["divide"], settings["hidden_transfer"])
    y = np.asarray(train_y, dtype=np.int64)
    w2, b2 = rng.uniform(-1, 1, size=(classes, hidden)), rng.uniform(-1, 1, size=classes)
    w = torch.from_numpy(np.concatenate([prep["w1"].ravel(), prep["b1"], w2.ravel(), b2]))[None]
    x = torch.from_numpy(prep["x"])
    obj = PatternnetObjective(w, (hidden, x.shape[1], classes), x[prep["train"]], torch.from_numpy(y[prep["train"]]),
                              x[prep["val"]], torch.from_numpy(y[prep["val"]]), settings["hidden_transfer"])
    n_weights = [prep["inputs"] * hidden + hidden + classes * hidden + classes]
    out = scg(obj, settings["epochs"], goal=settings["goal"], min_grad=settings["min_grad"],
              max_fail=settings["max_fail"], sigma=settings["sigma"], lam=settings["lambda"], n_weights=n_weights,
              progress=progress)
    best = out["best_w"][0]
    preds = {"held_out": None if test_x is None else obj.predict(best, torch.from_numpy(prep["test"])).numpy(),
             "fold": obj.predict(best, x).numpy()}
    division = {"train": prep["train"], "val": prep["val"],
                "test": np.setdiff1d(np.arange(len(train_x)), np.concatenate([prep["train"], prep["val"]]))}
    info = {"epochs": out["epochs"][0], "best_epoch": out["best_epoch"][0], "stop": out["stop"][0],
            "train_perf": out["perf"][0], "best_val_perf": (out["vperf"] or [None])[0],
            "train_samples": len(prep["train"]), "validation_samples": len(prep["val"]),
            "inputs": prep["inputs"], "seconds": round(time.time() - t0, 3)}
    return preds, division, info


def patternnet_fold(train_x, train_y, test_x, hidden, classes, seed, settings, progress=None):
    """``train(patternnet(hidden), x, t)`` on one training fold, then the held-out predictions."""
    preds, _, info = train_patternnet(train_x, train_y, hidden, classes, seed, settings, test_x, progress)
    return preds["held_out"], info
