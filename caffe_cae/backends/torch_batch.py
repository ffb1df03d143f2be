"""K runs (seeds) of one Caffe net trained at once, as one wide net (``grid --batch-runs K``).

The runs of one (net, D) differ only by the solver's ``random_seed`` (the weight fillers);
their data order is the same (HDF5Data without shuffle). So K runs share every data batch
and are computed as ONE net whose parameter-dependent blobs are *stacked*: axis 1 holds
the K runs side by side (run k's channels / features are the k-th contiguous block), while
blobs made only by data layers (data, label, flatdata, sim, Slices of data) stay shared.

``WideNet`` runs the layers of an ordinary :class:`TorchNet` (its template: filtering,
shapes, data sources, layer code) with stacked parameters of shape ``(K, *caffe_shape)``:

- Convolution / Deconvolution on a stacked bottom: by default one convolution per run on its
  block (torch_net's ``_CaffeConv``, the single net's kernels and shapes), concatenated;
  with ``grouped`` (or ``CAFFE_CAE_BATCH_GROUPED=1``) ONE grouped (transposed) convolution,
  weights concatenated along dim 0 and ``group`` K*g. Measured on this 2-core CPU, the
  grouped kernels were 1.3-3.5x slower per run than the single ones (oneDNN runs large
  grouped deconvolutions on a slow path) and round differently, so per-run is the default;
  Convolution on a shared bottom: one convolution with concatenated weights (group 1 only);
- InnerProduct (``axis: 1``): shared bottom, one matmul with weights (K*F_out, F_in);
  stacked bottom, a batched matmul over the K runs;
- Pooling, Unpooling (with a stacked mask), Sigmoid, TanH, ReLU, Split: channel-wise, run
  by the template's own layers; Flatten from axis >= 1 (gives K-major features); Reshape
  only when it copies axes 0 and 1 (``dim: 0 dim: 0 ...``);
- loss layers: each run's loss by the template's own layer on run k's block (the same
  normalisations and Functions as a single TorchNet), giving a (K,) vector per loss top;
  backward uses the sum over runs of the weighted losses (the runs are independent, so
  each run's parameters get its own gradient);
- shared parameters (``param { name }``, the Siamese net) stay shared within each run.

``BatchSolver(solver_param, seeds, cwd)``: run k starts with the weights of a TorchSolver
with ``random_seed`` = seeds[k] (K ordinary train nets are built, their weights stacked);
the SGD update (:meth:`TorchSolver.apply_update`) is elementwise, so it runs once on the
stacked tensors (with ``deferred``, masked per run by :class:`Deferred`'s flags); test nets
are wide too (per-run test losses); ``snapshot(k)`` writes run k's own Caffe
``.caffemodel`` / ``.solverstate`` and ``restore(k, ...)`` reads one.

Limits (CaeError naming the layer or field): ``clip_gradients`` (the norm is over all of a
run's gradients, not elementwise), Deconvolution or a grouped Convolution on a shared
bottom, InnerProduct with ``axis`` != 1, Slice / Flatten from axis 0 / other Reshapes of a
stacked blob, any other layer type on a stacked blob, test-only layers with parameters,
``share_mode: PERMISSIVE`` sharing with a different shape. Batched sums are not bitwise a
single net's (bmm, grouped kernels): equal within float32 rounding (tests: 1e-5).
"""
import os


from .. import caffemodel
from ..errors import CaeError
from ..proto import caffe_cae_pb2 as pb
from .torch_net import _CaffeConv, _canon, TorchNet, copy_weights, torch
from .torch_solver import Deferred, TorchSolver, _parse_solver, net_param_of

F = torch.nn.functional
CHANNELWISE = ("Pooling", "Unpooling", "Sigmoid", "TanH", "ReLU", "Split")


def run_view(x, k, runs):
    """Run ``k``'s block of a stacked blob, in the shape a single net's blob has."""
    s = tuple(x.shape)
    return x.reshape((s[0], runs, s[1] // runs) + s[2:])[:, k]


class WideNet:
    """K runs of one net as one computation. See the module docstring.

    ``nets``: K TorchNets of the same NetParameter and state (their learnables are stacked;
    ``nets[0]`` is the template whose layers and data sources run); or ``template`` with
    ``share_with`` (a WideNet whose stacked parameters it uses, as a solver's test nets).
    ``grouped``: stacked convolutions as one grouped convolution instead of one per run
    (default: ``CAFFE_CAE_BATCH_GROUPED=1``, else per run; test nets follow ``share_with``).
    """

    def __init__(self, nets=None, template=None, share_with=None, grouped=None):
        if nets:
            self.template = nets[0]
            self.runs = len(nets)
            with torch.no_grad():
                self.learnable = [torch.stack([n.learnable[i].detach() for n in nets]).requires_grad_(True)
                                  for i in range(len(nets[0].learnable))]
            self.index = {id(t): i for i, t in enumerate(self.template.learnable)}
            self.lr_mult, self.decay_mult = self.template.lr_mult, self.template.decay_mult
        else:
            self.template, self.runs = template, share_with.runs
            self.learnable, self.index = share_with.learnable, share_with.index
            self.lr_mult, self.decay_mult = share_with.lr_mult, share_with.decay_mult
        self.name = self.template.name
        self.layers = self.template.layers
        self.losses, self.reported = self.template.losses, self.template.reported
        self.params = {}
        for name, blobs in self.template.params.items():
            try:
                self.params[name] = [self.learnable[self.index[id(t)]] for t in blobs]
            except KeyError:
                raise CaeError("layer %s: its parameters are neither the train net's nor its own "
                               "(test-only layers with parameters, or PERMISSIVE sharing with another "
                               "shape, cannot be batched)" % name) from None
        self.onednn = self.template.onednn
        if grouped is None:
            grouped = share_with.grouped if share_with is not None else os.environ.get("CAFFE_CAE_BATCH_GROUPED") == "1"
        self.grouped = bool(grouped)

    # running ------------------------------------------------------------------
    def _wide(self, layer, bottoms, wide, params):
        """Tops of ``layer`` when a bottom is stacked or it has parameters (all stacked)."""
        kind, runs = layer.type, self.runs
        if kind in ("Convolution", "Deconvolution"):
            w = params[0]
            weight = w.reshape((runs * w.shape[1],) + tuple(w.shape[2:]))
            if wide[0] and not self.grouped:
                outs = [_CaffeConv.apply(run_view(bottoms[0], k, runs).contiguous(), w[k],
                                         params[1][k] if layer.bias_term else None, layer.stride, layer.pad,
                                         layer.dilation, layer.group, layer.deconv, self.onednn)
                        for k in range(runs)]
                return [torch.cat(outs, 1)]
            if wide[0]:
                groups = runs * layer.group
            elif layer.deconv or layer.group != 1:
                raise CaeError("layer %s: a %s%s on a blob shared by the runs cannot be batched"
                               % (layer.name, "grouped " if layer.group != 1 else "", kind))
            else:
                groups = 1
            bias = params[1].reshape(-1) if layer.bias_term else None
            return [_CaffeConv.apply(bottoms[0], weight, bias, layer.stride, layer.pad, layer.dilation,
                                     groups, layer.deconv, self.onednn)]
        if kind == "InnerProduct":
            if layer.axis != 1:
                raise CaeError("layer %s: InnerProduct axis %d cannot be batched (only 1)" % (layer.name, layer.axis))
            w = params[0].transpose(1, 2) if layer.ip.transpose else params[0]  # (K, F_out, F_in)
            bias = params[1] if layer.ip.bias_term else None
            x = bottoms[0]
            n = x.shape[0]
            if not wide[0]:
                y = F.linear(x.reshape(n, -1), w.reshape(-1, w.shape[2]),
                             bias.reshape(-1) if bias is not None else None)
                return [y]
            xs = x.reshape(n, runs, -1).transpose(0, 1)  # (K, N, F_in)
            y = torch.bmm(xs, w.transpose(1, 2))
            if bias is not None:
                y = y + bias[:, None, :]
            return [y.transpose(0, 1).reshape(n, -1)]
        if kind.endswith("Loss"):
            per_run = [layer.forward([run_view(b, k, runs) if s else b for b, s in zip(bottoms, wide)])
                       for k in range(runs)]
            return [torch.stack([r[j] for r in per_run]) for j in range(len(layer.tops))]
        if kind == "Unpooling" and len(bottoms) == 2 and not all(wide):
            raise CaeError("layer %s: Unpooling of a stacked blob with a shared mask (or the reverse) "
                           "cannot be batched" % layer.name)
        if kind in CHANNELWISE:
            return layer.forward(bottoms)
        if kind == "Flatten" and _canon(layer.lp.flatten_param.axis, bottoms[0].dim(), layer.name) >= 1:
            return layer.forward(bottoms)
        if kind == "Reshape":
            rp = layer.lp.reshape_param
            dims = list(rp.shape.dim)
            start = rp.axis if rp.axis >= 0 else bottoms[0].dim() + rp.axis + 1
            kept = start >= 2 or (start == 1 and dims[:1] == [0]) or (start == 0 and dims[:2] == [0, 0])
            if kept:
                return layer.forward(bottoms)
            raise CaeError("layer %s: a Reshape of a stacked blob must keep axes 0 and 1 "
                           "(dim: 0 dim: 0 ...) to be batched" % layer.name)
        raise CaeError("layer %s (%s): not supported on a blob computed from parameters by --batch-runs"
                       % (layer.name, kind))

    def forward(self, replay=False, trace=None):
        """Run the wide net (next batch of the data layers, or the last one with ``replay``).
        ``trace(index, layer, top, tensor, how)`` with how = "shared", "stacked" or "runs"
        ((K,) per-run values). Returns (blobs, {reported loss top: (K,) per-run values, unweighted},
        the weighted total)."""
        blobs, how = {}, {}
        net = self.template
        net.replaying = replay
        try:
            for index, layer in enumerate(self.layers):
                bottoms = [blobs[b] for b in layer.bottoms]
                wide = [how[b] != "shared" for b in layer.bottoms]
                params = self.params.get(layer.name)
                if params is not None or any(wide):
                    tops = self._wide(layer, bottoms, wide, params)
                    kind = "runs" if layer.type.endswith("Loss") else "stacked"
                else:
                    tops = layer.forward(bottoms)
                    kind = "shared"
                for name, t in zip(layer.tops, tops):
                    blobs[name], how[name] = t, kind
                    if trace is not None:
                        trace(index, layer, name, t, kind)
        finally:
            net.replaying = False
        losses = {}  # per run, each reported top's value (unweighted)
        for top in self.reported:
            if top not in blobs:
                continue
            t = blobs[top]
            if how[top] == "runs":
                losses[top] = t
            elif how[top] == "stacked":
                losses[top] = t.reshape(t.shape[0], self.runs, -1).sum(dim=(0, 2))
            else:
                losses[top] = t.sum().expand(self.runs)
        weighted = [losses[top] * w for top, w in self.losses.items() if top in losses]
        total = sum(v.sum() for v in weighted) if weighted else None
        self.blobs, self.how = blobs, how
        return blobs, losses, total

    def zero_grad(self):
        for t in self.learnable:
            t.grad = None

    def data_sources(self):
        return self.template.data_sources()

    def first_nonfinite(self, k):
        """Replay the last batch: run k's first (layer, top) with a non-finite value, and its
        non-finite parameter blobs (as torch_worker.first_nonfinite)."""
        found = {}

        def check(index, layer, top, value, kind):
            if found:
                return
            v = run_view(value, k, self.runs) if kind == "stacked" else value[k] if kind == "runs" else value
            if not bool(torch.isfinite(v).all()):
                found.update(layer=layer.name, layer_type=layer.type, blob=top, step=index)

        with torch.no_grad():
            self.forward(replay=True, trace=check)
        bad = ["%s[%d]" % (name, j) for name, blobs in self.params.items() for j, t in enumerate(blobs)
               if not bool(torch.isfinite(t[k]).all())]
        return found or None, bad

    # weights ------------------------------------------------------------------
    def get_weights(self, k):
        """Run k's [(layer name, [float32 arrays])], as TorchNet.get_weights."""
        return [(name, [t[k].detach().cpu().numpy().copy() for t in blobs]) for name, blobs in self.params.items()]

    def set_weights(self, k, layers, source="weights"):
        """Copy (layer name, [arrays]) into run k's parameters (unknown layers are ignored)."""
        copy_weights({name: [t[k] for t in blobs] for name, blobs in self.params.items()}, layers, source)


class BatchSolver:
    """Caffe's SGD for K runs at once. See the module docstring. ``seeds``: one random_seed
    per run (>= 0); ``onednn``, ``device``, ``test_nets``, ``deferred`` as TorchSolver; ``grouped``:
    see WideNet."""

    apply_update = TorchSolver.apply_update  # elementwise: the same code on stacked tensors

    def __init__(self, solver, seeds, cwd=".", device="cpu", test_nets=True, onednn=True, grouped=None,
                 deferred=False):
        sp = solver if isinstance(solver, pb.SolverParameter) else _parse_solver(solver)
        if sp.type != "SGD" or sp.solver_type != pb.SolverParameter.SGD:
            raise CaeError("solver: type %r: only SGD is supported by the torch backend" % sp.type)
        if sp.regularization_type not in ("L1", "L2"):
            raise CaeError("solver: regularization_type %r, expected L1 or L2" % sp.regularization_type)
        if sp.clip_gradients >= 0:
            raise CaeError("solver: clip_gradients %g cannot be batched (it scales by the norm of all of a "
                           "run's gradients); use --batch-runs 1" % sp.clip_gradients)
        seeds = [int(s) for s in seeds]
        if not seeds or min(seeds) < 0:
            raise CaeError("--batch-runs: every run needs a seed >= 0, got %s" % seeds)
        self.sp, self.cwd, self.device, self.seeds = sp, cwd, torch.device(device), seeds
        self.runs = len(seeds)
        net_param = net_param_of(sp, cwd)
        ts, cache = sp.train_state, {}
        nets = [TorchNet(net_param, "train", stages=list(ts.stage), level=ts.level, cwd=cwd, device=self.device,
                         generator=torch.Generator().manual_seed(s), h5_cache=cache, onednn=onednn)
                for s in seeds]
        self.net = WideNet(nets, grouped=grouped)
        del nets
        self.test_nets = []
        if test_nets:
            for state in sp.test_state:
                template = TorchNet(net_param, "test", stages=list(state.stage), level=state.level, cwd=cwd,
                                    device=self.device, share_with=self.net.template, h5_cache=cache,
                                    onednn=onednn)
                self.test_nets.append(WideNet(template=template, share_with=self.net))
        self.iter = 0
        self.current_step = 0
        self.history = [torch.zeros_like(t, requires_grad=False) for t in self.net.learnable]
        self.dead = set()
        self.loss_matrix = None
        self._total = None
        self.guard = Deferred(self, self.runs) if deferred else None

    @property
    def losses(self):
        """Per run, {loss top: float64 scalar on the device} of the last pass (no read)."""
        m = self.loss_matrix
        if m is None:
            return [{} for _ in range(self.runs)]
        return [{top: m[t, k] for t, top in enumerate(self.net.reported)} for k in range(self.runs)]

    @property
    def loss(self):
        """Per run, the last step's loss as a float (read from the device), None before the first step."""
        size = max(1, int(self.sp.iter_size))
        return None if self._total is None else [float(v) / size for v in self._total.cpu()]

    def step(self, n=1, on_gradients=None):
        """``n`` iterations. ``loss_matrix`` holds the loss tops (rows) of the last pass per run
        (columns), float64 on the device (``losses`` and ``loss`` are views and reads);
        ``on_gradients(solver)`` before the update; False stops (no update); with ``guard`` the
        update is masked by its flags. Runs in ``dead`` (failed) have their weights and history
        zeroed after every update."""
        size = max(1, int(self.sp.iter_size))
        for _ in range(n):
            if self.guard:
                self.guard.start()
            self.net.zero_grad()
            total = 0.0
            for _ in range(size):
                blobs, losses, t = self.net.forward()
                if t is None:
                    raise CaeError("net %s: no loss top to train on" % self.net.name)
                t.backward()
                total = total + sum((losses[top] * w).detach().double() for top, w in self.net.losses.items()
                                    if top in losses)
            self._total = total
            self.loss_matrix = torch.stack([losses[top].detach().double() for top in self.net.reported])
            if on_gradients is not None and on_gradients(self) is False:
                return False
            self.apply_update(self.guard and self.guard.step(self.loss_matrix))
            if self.dead:
                with torch.no_grad():
                    for k in self.dead:
                        for w, h in zip(self.net.learnable, self.history):
                            w[k].zero_()
                            h[k].zero_()
        return True

    def test(self, index, batches):
        """Per run: the mean of each loss top of test net ``index`` over ``batches`` passes."""
        tnet = self.test_nets[index]
        sums = [{} for _ in range(self.runs)]
        with torch.no_grad():
            for _ in range(batches):
                blobs, losses, _ = tnet.forward()
                for top in tnet.reported:
                    for k in range(self.runs):
                        sums[k][top] = sums[k].get(top, 0.0) + float(losses[top][k])
        return [{key: v / batches for key, v in s.items()} for s in sums]

    # snapshots ----------------------------------------------------------------
    def snapshot(self, k, prefix):
        """Run k's PREFIX_iter_N.caffemodel and .solverstate, as TorchSolver.snapshot writes them."""
        model = "%s_iter_%d.caffemodel" % (prefix, self.iter)
        state = "%s_iter_%d.solverstate" % (prefix, self.iter)
        weights = dict(self.net.get_weights(k))
        layers = [(lp, weights.get(lp.name, [])) for lp in self.net.template.layer_params]
        caffemodel.write_caffemodel(os.path.join(self.cwd, model), self.net.name, layers)
        caffemodel.write_solverstate(os.path.join(self.cwd, state), self.iter, model,
                                     [h[k].detach().cpu().numpy() for h in self.history], self.current_step)
        return model, state

    def restore(self, k, path, caffemodel_path=None):
        """Run k from a .solverstate (either backend's) and its .caffemodel; every run must be
        restored to the same iteration (CaeError otherwise)."""
        st = caffemodel.read_solverstate(path)
        model = caffemodel_path or st["learned_net"]
        if model:
            model = model if os.path.isabs(model) else os.path.join(self.cwd, model)
            self.net.set_weights(k, caffemodel.read_caffemodel(model), source=model)
        if len(st["history"]) != len(self.history):
            raise CaeError("%s: %d history blobs, the net has %d learnable blobs"
                           % (path, len(st["history"]), len(self.history)))
        with torch.no_grad():
            for j, (h, a) in enumerate(zip(self.history, st["history"])):
                if a.size != h[k].numel():
                    raise CaeError("%s: history blob %d has %d values, expected %d" % (path, j, a.size, h[k].numel()))
                h[k].copy_(torch.from_numpy(a.reshape(tuple(h.shape[1:]))).to(h.device))
        if k and (st["iter"], st["current_step"]) != (self.iter, self.current_step):
            raise CaeError("%s: iteration %d, the batch's other runs are at %d (runs can only be batched "
                           "from the same iteration)" % (path, st["iter"], self.iter))
        self.iter, self.current_step = st["iter"], st["current_step"]
