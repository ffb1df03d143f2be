"""Caffe's SGDSolver in PyTorch: the train net, its test nets, the update, snapshots.

``TorchSolver(solver_param, cwd)`` builds the train net (NetState from ``train_state``,
phase TRAIN) with parameters filled from ``random_seed`` (fresh random when -1), and one
test net per ``test_state`` (phase TEST) sharing the train net's parameter blobs. One
``step()`` is Caffe's ``Solver::Step`` for one iteration:

- clear the diffs; ``iter_size`` forward/backward passes accumulate them; ``loss`` is the
  mean of the passes' weighted losses (Caffe's step loss), ``losses`` the loss tops of the
  last pass (what Caffe's ``net.blobs`` show after the step), both read from the device on
  access (``loss_tensors``: the tops as device scalars, no synchronisation);
- ``ApplyUpdate``: learning rate from ``lr_policy`` (fixed, step, exp, inv, multistep,
  poly, sigmoid, computed as Caffe does, in float32), gradient clipping
  (``clip_gradients``), then per learnable blob: scale the diff by 1/iter_size, add
  ``weight_decay * decay_mult`` times the weight (L2) or its sign (L1), history =
  ``momentum * history + lr * lr_mult * diff``, weight -= history.

The non-finite check (:class:`Deferred`, ``deferred=True``): each step computes on the device
whether its loss tops are finite and keeps a sticky "still good" flag per run, the first bad
iteration and its loss tops; the update (weights and history) is applied only while the flag
is good, so nothing is read per iteration. ``deferred=False``: the caller checks each step
(``on_gradients``) and the update is unmasked, as before.

``snapshot(prefix)`` writes ``PREFIX_iter_N.caffemodel`` and ``.solverstate`` in Caffe's
binary formats (readable by Caffe, see :mod:`caffe_cae.caffemodel`); ``restore(path)`` reads
either backend's. Only ``type: "SGD"`` is supported (CaeError otherwise).
Limits: no ``test_compute_loss``, no ``snapshot_diff``, HDF5 snapshots not supported.
"""
import math
import os
import random

import numpy as np

from .. import caffemodel
from ..errors import CaeError
from ..proto import caffe_cae_pb2 as pb
from ..schema import parse_net
from .torch_net import TorchNet, torch

f32 = np.float32


def learning_rate(sp, iteration, current_step):
    """(rate as float32, new current_step) for Caffe's lr policies."""
    policy = sp.lr_policy
    base = f32(sp.base_lr)
    gamma, power = f32(sp.gamma), f32(sp.power)
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        if sp.stepsize <= 0:
            raise CaeError("solver: lr_policy step needs stepsize > 0")
        current_step = iteration // sp.stepsize
        return f32(float(base) * math.pow(float(gamma), current_step)), current_step
    if policy == "exp":
        return f32(float(base) * math.pow(float(gamma), iteration)), current_step
    if policy == "inv":
        return f32(float(base) * math.pow(float(f32(1) + gamma * f32(iteration)), -float(power))), current_step
    if policy == "multistep":
        if current_step < len(sp.stepvalue) and iteration >= sp.stepvalue[current_step]:
            current_step += 1
        return f32(float(base) * math.pow(float(gamma), current_step)), current_step
    if policy == "poly":
        frac = f32(1) - f32(iteration) / f32(sp.max_iter)
        return f32(float(base) * math.pow(float(frac), float(power))), current_step
    if policy == "sigmoid":
        if sp.stepsize <= 0:
            raise CaeError("solver: lr_policy sigmoid needs stepsize > 0")
        z = -gamma * (f32(iteration) - f32(sp.stepsize))
        return f32(float(base) * float(f32(1) / (f32(1) + f32(math.exp(float(z)))))), current_step
    raise CaeError("solver: unknown lr_policy %r (fixed, step, exp, inv, multistep, poly, sigmoid)" % policy)


def net_param_of(sp, cwd):
    """The solver's net as a NetParameter (``net_param``, ``net``, ``train_net_param``, ``train_net``)."""
    if sp.HasField("net_param"):
        return sp.net_param
    if sp.HasField("train_net_param"):
        return sp.train_net_param
    path = sp.net or sp.train_net
    if not path:
        raise CaeError("solver: no net (expected net: or net_param)")
    return parse_net(os.path.join(cwd, path))


class Deferred:
    """The deferred non-finite check of a solver's ``runs`` runs, on the device (see the module
    docstring). ``step(values)`` per iteration, with the (loss tops, runs) float64 matrix of its
    last pass, returns the update mask; ``read()`` at the points where the host reads anyway;
    ``load(b)`` then puts iteration b's batch into the train net's data layers for the replay."""

    def __init__(self, solver, runs):
        self.solver, self.tops = solver, list(solver.net.reported)
        self.good = torch.ones(runs, dtype=torch.bool, device=solver.device)
        self.first = torch.zeros(runs, dtype=torch.int64, device=solver.device)
        self.values = torch.zeros(len(self.tops), runs, dtype=torch.float64, device=solver.device)
        self.mark = self.since = None  # (iteration, data position) of the last read, the one before

    def _position(self):
        return self.solver.iter, {name: s.state() for name, s in self.solver.net.data_sources().items()}

    def start(self):
        """Before a step's forward passes: the first one marks where the replays skip from."""
        if self.mark is None:
            self.mark = self._position()

    def step(self, values):
        """Fold in iteration ``solver.iter + 1``'s loss tops; returns the mask of the runs to update."""
        ok = torch.isfinite(values).all(0)
        new = self.good & ~ok
        self.first.masked_fill_(new, self.solver.iter + 1)
        self.values = torch.where(new, values, self.values)
        self.good &= ok
        return self.good

    def read(self):
        """{run: (first bad iteration b, {loss top: value at b})} (one read of the device); its
        weights and history are those after b - 1."""
        good = self.good.tolist()
        self.since, self.mark = self.mark, self._position()
        if all(good):
            return {}
        first, values = self.first.tolist(), self.values.cpu().tolist()
        return {k: (first[k], {top: values[t][k] for t, top in enumerate(self.tops)})
                for k, g in enumerate(good) if not g}

    def load(self, b):
        """Iteration b's (last) batch into the train net's data layers (a ``replay`` gives it),
        by skipping from the position of the read before; the data position is kept."""
        it, before = self.since
        size = max(1, int(self.solver.sp.iter_size))
        now = self._position()[1]
        sources = self.solver.net.data_sources()
        for name, source in sources.items():
            source.set_state(before[name])
            source.skip((b - 1 - it) * size + size - 1)
        with torch.no_grad():
            self.solver.net.forward()
        for name, source in sources.items():
            source.set_state(now[name])


def masked(mask, new, old):
    """``old`` becomes ``new`` where its run's ``mask`` is set (runs along dim 0 when several)."""
    torch.where(mask.view((-1,) + (1,) * (new.dim() - 1)), new, old, out=old)


class TorchSolver:
    """See the module docstring. ``solver``: SolverParameter or path; ``cwd``: directory the
    solver's relative paths are resolved against; ``device``: torch device; ``seed``
    overrides ``random_seed``; ``test_nets``: build the test nets; ``onednn``: see TorchNet;
    ``deferred``: the non-finite check on the device (:class:`Deferred`, ``self.guard``)."""

    def __init__(self, solver, cwd=".", device="cpu", seed=None, test_nets=True, onednn=True, deferred=False):
        sp = solver if isinstance(solver, pb.SolverParameter) else _parse_solver(solver)
        if sp.type != "SGD" or sp.solver_type != pb.SolverParameter.SGD:
            raise CaeError("solver: type %r: only SGD is supported by the torch backend" % sp.type)
        if sp.regularization_type not in ("L1", "L2"):
            raise CaeError("solver: regularization_type %r, expected L1 or L2" % sp.regularization_type)
        self.sp, self.cwd, self.device = sp, cwd, torch.device(device)
        seed = sp.random_seed if seed is None else seed
        if seed is None or seed < 0:
            seed = random.SystemRandom().randrange(2 ** 31)
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.net_param = net_param_of(sp, cwd)
        ts = sp.train_state
        cache = {}
        self.net = TorchNet(self.net_param, "train", stages=list(ts.stage), level=ts.level, cwd=cwd,
                            device=self.device, generator=self.gen, h5_cache=cache, onednn=onednn)
        self.test_nets = []
        if test_nets:
            for state in sp.test_state:
                self.test_nets.append(TorchNet(self.net_param, "test", stages=list(state.stage),
                                               level=state.level, cwd=cwd, device=self.device,
                                               generator=self.gen, share_with=self.net,
                                               h5_cache=cache, onednn=onednn))
        self.iter = 0
        self.current_step = 0
        self.history = [torch.zeros_like(t, requires_grad=False) for t in self.net.learnable]
        self.loss_tensors = {}
        self._loss = None
        self.guard = Deferred(self, 1) if deferred else None

    @property
    def losses(self):
        """{loss top: float} of the last pass (read from the device: a synchronisation)."""
        return {top: float(v) for top, v in self.loss_tensors.items()}

    @property
    def loss(self):
        """The last step's loss as a float (read from the device), None before the first step."""
        return None if self._loss is None else float(self._loss) / max(1, int(self.sp.iter_size))

    # one iteration ------------------------------------------------------------
    def step(self, n=1, on_gradients=None):
        """Run ``n`` iterations. ``on_gradients(solver, blobs)`` is called after the backward
        passes and before the update; returning False skips the update and stops. Nothing is
        read back from the device here: ``loss_tensors`` holds the loss tops of the last pass
        as float64 scalars on the device (``losses`` and ``loss`` read them); with ``guard``
        the update is masked by its flag."""
        net, sp = self.net, self.sp
        size = max(1, int(sp.iter_size))
        for _ in range(n):
            if self.guard:
                self.guard.start()
            net.zero_grad()
            total = 0.0
            for _ in range(size):
                blobs, loss = net.forward_backward()
                total = total + loss.double()
            self._loss = total
            self.loss_tensors = {top: blobs[top].detach().double() for top in net.reported}
            if on_gradients is not None and on_gradients(self, blobs) is False:
                return False
            self.apply_update(self.guard and self.guard.step(torch.stack(list(self.loss_tensors.values()))[:, None]))
        return True

    def apply_update(self, mask=None):
        """Caffe's ApplyUpdate; ``mask`` (bool per run on the device): only those runs' weights
        and history change."""
        sp, net = self.sp, self.net
        rate, self.current_step = learning_rate(sp, self.iter, self.current_step)
        with torch.no_grad():
            grads = []
            for t in net.learnable:
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
                grads.append(t.grad)
            if sp.clip_gradients >= 0:
                sumsq = sum(float((g.double() ** 2).sum()) for g in grads)
                norm = math.sqrt(sumsq)
                if norm > sp.clip_gradients:
                    scale = float(f32(sp.clip_gradients) / f32(norm))
                    for g in grads:
                        g.mul_(scale)
            momentum = float(f32(sp.momentum))
            decay = f32(sp.weight_decay)
            size = int(sp.iter_size)
            for k, (w, g, h) in enumerate(zip(net.learnable, grads, self.history)):
                if size != 1:
                    g.mul_(float(f32(1) / f32(size)))
                local_decay = float(decay * f32(net.decay_mult[k]))
                if local_decay:
                    if sp.regularization_type == "L2":
                        g.add_(w, alpha=local_decay)
                    else:
                        g.add_(torch.sign(w), alpha=local_decay)
                local_rate = float(rate * f32(net.lr_mult[k]))
                if mask is not None:
                    new = h.mul(momentum).add_(g, alpha=local_rate) if momentum else g.mul(local_rate)
                    masked(mask, new, h)
                    masked(mask, w - h, w)
                    continue
                if momentum:
                    h.mul_(momentum).add_(g, alpha=local_rate)
                else:
                    torch.mul(g, local_rate, out=h)
                w.sub_(h)
        self.iter += 1

    # tests --------------------------------------------------------------------
    def test(self, index, batches):
        """Mean of each loss top of test net ``index`` over ``batches`` forward passes (summed
        on the device in float64, as host floats would be, and read once at the end)."""
        tnet = self.test_nets[index]
        sums = {}
        with torch.no_grad():
            for _ in range(batches):
                blobs, _ = tnet.forward()
                for top in tnet.reported:
                    sums[top] = sums.get(top, 0.0) + blobs[top].double()
        return {k: float(v) / batches for k, v in sums.items()}

    # snapshots ----------------------------------------------------------------
    def save_weights(self, path):
        """The train net's weights as a Caffe .caffemodel (layer records as Caffe writes them)."""
        weights = dict(self.net.get_weights())
        layers = [(lp, weights.get(lp.name, [])) for lp in self.net.layer_params]
        return caffemodel.write_caffemodel(path, self.net.name, layers)

    def snapshot(self, prefix=None):
        """Write PREFIX_iter_N.caffemodel and .solverstate; returns both paths."""
        prefix = prefix or self.sp.snapshot_prefix
        model = "%s_iter_%d.caffemodel" % (prefix, self.iter)
        state = "%s_iter_%d.solverstate" % (prefix, self.iter)
        self.save_weights(os.path.join(self.cwd, model))
        caffemodel.write_solverstate(os.path.join(self.cwd, state), self.iter, model,
                                     [h.detach().cpu().numpy() for h in self.history], self.current_step)
        return model, state

    def load_weights(self, path):
        self.net.set_weights(caffemodel.read_caffemodel(path), source=path)

    def restore(self, path, caffemodel_path=None):
        """Resume from a .solverstate (either backend's); weights from ``caffemodel_path``,
        else the state's ``learned_net``."""
        st = caffemodel.read_solverstate(path)
        model = caffemodel_path or st["learned_net"]
        if model:
            self.load_weights(model if os.path.isabs(model) else os.path.join(self.cwd, model))
        if len(st["history"]) != len(self.history):
            raise CaeError("%s: %d history blobs, the net has %d learnable blobs"
                           % (path, len(st["history"]), len(self.history)))
        with torch.no_grad():
            for k, (h, a) in enumerate(zip(self.history, st["history"])):
                if a.size != h.numel():
                    raise CaeError("%s: history blob %d has %d values, expected %d" % (path, k, a.size, h.numel()))
                h.copy_(torch.from_numpy(a.reshape(tuple(h.shape))).to(self.device))
        self.iter = st["iter"]
        self.current_step = st["current_step"]


def _parse_solver(path):
    from ..schema import parse_solver
    return parse_solver(path)
