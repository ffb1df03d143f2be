"""The PyTorch side of training, extraction and benchmark; runs as a host subprocess.

Usage (started by :mod:`caffe_cae.backends.torch_backend`)::

    python -m caffe_cae.backends.torch_worker train|extract|bench JOB_JSON

An adapter of :mod:`caffe_cae.backends.protocol` (same jobs, events, schedule and files as
the Caffe worker), executed by :class:`caffe_cae.backends.torch_solver.TorchSolver`;
snapshots are Caffe-format ``.caffemodel`` / ``.solverstate`` files, so a run may be resumed
or extracted by the other backend.

Threads: ``torch.set_num_threads`` = ``$CAFFE_CAE_TORCH_THREADS``, else ``$OMP_NUM_THREADS``,
else the CPU count;
OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set: spinning threads cost 5-20x
on a shared, loaded machine). Convolutions run on oneDNN; ``CAFFE_CAE_TORCH_ONEDNN=0``
selects PyTorch's im2col + GEMM path instead (Caffe's algorithm, 2-3x slower). Denormal floats
(below 1.2e-38) are flushed to zero on the CPU: Model 5's saturated tanh units make them
common and they cost ~2x there; ``CAFFE_CAE_TORCH_DENORMALS=1`` keeps them.
The non-finite check (:func:`deferred`): ``CAFFE_CAE_TORCH_SYNC=eager`` reads one flag per
iteration, ``deferred`` keeps it on the device until the schedule reads anyway; default:
deferred on CUDA, eager elsewhere.
"""
import os
import sys

from .jobs import finish_extract, main
from .protocol import Adapter, emit, run_schedule


def threads():
    """Threads for PyTorch: $CAFFE_CAE_TORCH_THREADS, else $OMP_NUM_THREADS (as ``grid`` sets it
    for parallel runs), else every CPU this process may use."""
    value = os.environ.get("CAFFE_CAE_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if value:
        return max(1, int(value))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _setup(mode):
    from .torch_net import resolve_device, torch
    torch.set_num_threads(threads())
    if os.environ.get("CAFFE_CAE_TORCH_DENORMALS") != "1":
        torch.set_flush_denormal(True)
    return torch, resolve_device(mode)


def onednn():
    """Convolutions on oneDNN unless ``CAFFE_CAE_TORCH_ONEDNN=0`` (see torch_net._CaffeConv)."""
    return os.environ.get("CAFFE_CAE_TORCH_ONEDNN", "1") != "0"


def deferred(device):
    """The non-finite check on the device (see :class:`caffe_cae.backends.torch_solver.Deferred`):
    ``$CAFFE_CAE_TORCH_SYNC`` = eager or deferred, else deferred on CUDA only (a CPU scalar
    costs nothing to read)."""
    from ..errors import CaeError
    value = os.environ.get("CAFFE_CAE_TORCH_SYNC") or ("deferred" if device.type == "cuda" else "eager")
    if value not in ("eager", "deferred"):
        raise CaeError("CAFFE_CAE_TORCH_SYNC=%s: expected eager or deferred" % value)
    return value == "deferred"


def start_fields(torch, device):
    return {"torch_version": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}


def net_nonfinite(net, torch, k=None):
    """Replay the last forward pass layer by layer: (first non-finite (layer, top) or None,
    non-finite parameter names)."""
    found = {}

    def check(index, layer, top, value):
        if not found and not bool(torch.isfinite(value).all()):
            found.update(layer=layer.name, layer_type=layer.type, blob=top, step=index)

    with torch.no_grad():
        net.forward(replay=True, trace=check)
    bad = ["%s[%d]" % (name, j) for name, blobs in net.params.items() for j, t in enumerate(blobs)
           if not bool(torch.isfinite(t).all())]
    return found or None, bad


class TorchAdapter(Adapter):
    """One :class:`~caffe_cae.backends.torch_solver.TorchSolver` (see :func:`protocol.run_schedule`)."""

    def __init__(self, solver, torch, device):
        self.solver, self.torch = solver, torch
        self.runs = getattr(solver, "runs", 1)
        self.start_fields = start_fields(torch, device)
        self.deferred = solver.guard is not None

    @property
    def iter(self):
        return self.solver.iter

    def failed(self):
        return self.solver.guard.read()

    def restore(self, k, solverstate, caffemodel):
        self.solver.restore(solverstate, caffemodel)

    def skip(self, index, batches):
        (self.solver.net if index is None else self.solver.test_nets[index]).skip_batches(batches)

    def step(self, before_update):
        self.solver.step(1, on_gradients=lambda *_: before_update())

    def losses(self):
        return [self.solver.loss_tensors]

    def nonfinite(self):
        values = list(self.solver.loss_tensors.values())
        return [] if not values or bool(self.torch.isfinite(self.torch.stack(values)).all()) else [0]

    def test(self, index, batches):
        return [self.solver.test(index, batches)]

    def snapshot(self, k, prefix):
        return self.solver.snapshot(prefix)

    def first_nonfinite(self, k, at=None):
        if at is not None:
            self.solver.guard.load(at)
        return self.replay(k)

    def replay(self, k):
        return net_nonfinite(self.solver.net, self.torch)


def failed(exc, runs=1):
    """The ``end`` events of a job that cannot start; exit status 2."""
    for k in range(runs):
        emit("end", status="failed", iter=0, message=str(exc), **({"run": k} if runs > 1 else {}))
    if runs > 1:
        emit("batch_end", status="failed")
    return 2


def train(job):
    """See :func:`caffe_cae.backends.protocol.run_schedule`."""
    from ..errors import CaeError
    from .torch_solver import TorchSolver
    try:
        torch, device = _setup(job["mode"])
        solver = TorchSolver(job["solver"], cwd=os.getcwd(), device=device, onednn=onednn(),
                             deferred=deferred(device))
    except CaeError as exc:
        return failed(exc)
    return run_schedule(TorchAdapter(solver, torch, device), job)


# ----------------------------------------------------------------------------------------
# Extraction


def extract(job):
    """Same job and outputs as the Caffe worker's ``extract`` (codes.h5, blobs_digit5.h5)."""
    from .. import caffemodel
    from ..errors import CaeError
    from ..schema import parse_net
    from .torch_net import TorchNet
    try:
        torch, device = _setup(job["mode"])
        weights = caffemodel.read_caffemodel(job["weights"])
        net = TorchNet(parse_net(job["deploy"]), "test", cwd=os.getcwd(), device=device, onednn=onednn())
        net.set_weights(weights, source=job["weights"])
    except CaeError as exc:
        emit("end", status="failed", message=str(exc))
        return 2
    inp = net.input_names()[0]
    job = dict(job, batch=net.input_shapes()[inp][0])

    def forward(chunk):
        with torch.no_grad():
            blobs, _ = net.forward(inputs={inp: chunk})
        return {name: blobs[name].cpu().numpy() for name in (job["code_blob"], job.get("recon_blob")) if name}

    def stage_losses():
        tnet = TorchNet(parse_net(job["train_test"]), "test", stages=[str(job["stage"])], cwd=os.getcwd(),
                        device=device, onednn=onednn())
        tnet.set_weights(weights, source=job["weights"])
        sums = {}
        with torch.no_grad():
            for _ in range(job["stage_iter"]):
                blobs, _ = tnet.forward()
                for top in tnet.reported:
                    sums[top] = sums.get(top, 0.0) + float(blobs[top])
        return {top: v / job["stage_iter"] for top, v in sums.items()}

    def trace(image):
        steps = []

        def record(i, layer, top, value):
            steps.append(("%02d_%s" % (len(steps), layer.name), layer.name, layer.type, top,
                          value.detach().cpu().numpy().copy()))

        with torch.no_grad():
            net.forward(inputs={inp: image}, trace=record)
        return steps

    return finish_extract(job, forward, stage_losses, trace, lambda: list(net.get_weights()))


# ----------------------------------------------------------------------------------------
# Benchmark


def bench(job):
    """ms per SGD iteration for each solver, its plain-PyTorch peer and the GEMM peak
    (:func:`caffe_cae.backends.torch_bench.bench_nets`)."""
    from ..errors import CaeError
    from .torch_solver import TorchSolver
    try:
        torch, device = _setup(job["mode"])
    except CaeError as exc:
        emit("end", status="failed", message=str(exc))
        return 2

    def make(path):
        return TorchSolver(path, cwd=os.getcwd(), device=device, test_nets=False, onednn=onednn())

    from .torch_bench import bench_nets
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return bench_nets(job, make, torch, device, sync, extra={"threads": torch.get_num_threads()})


if __name__ == "__main__":
    sys.exit(main(sys.argv, "caffe_cae.backends.torch_worker", {"train": train, "extract": extract, "bench": bench}))
