"""The Caffe side of training, extraction and benchmark; runs INSIDE the engine.

Usage (started by :mod:`caffe_cae.backends.caffe_backend`)::

    python3 -m caffe_cae.backends.caffe_worker train|extract|bench JOB_JSON

An adapter of :mod:`caffe_cae.backends.protocol`, which holds the events, the schedule and the
output files. Imports only caffe, numpy, h5py and the standard library (the engine is Debian
bullseye: Python 3.9, numpy 1.19, h5py 2.10, protobuf 3.12).

Caffe specifics: the solver file given has ``snapshot`` and ``display`` at 0 and
``test_interval`` at 2^31-1, so that the protocol's schedule is the only one; ``solver.restore``
brings weights, history and iteration back, but Caffe 1.0 does not restore the HDF5Data read
position, hence ``skip``; a non-finite loss is caught in the ``on_gradients_ready`` callback,
before the update, and the forward pass is replayed layer by layer on the same batch.
"""
import os
import sys

from .jobs import finish_extract, main, run_bench
from .protocol import Adapter, run_schedule

DATA_TYPES = ("HDF5Data", "Input", "Data", "MemoryData", "DummyData", "ImageData")


def _caffe(mode):
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    if mode == "gpu":
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    return caffe


def outputs(net):
    """{loss top: float} of the net's output blobs."""
    return {top: float(net.blobs[top].data.reshape(-1)[0]) for top in net.outputs}


def forward_steps(net, start=0, skip_data=True):
    """Run ``net`` layer by layer from ``start``; yield (index, layer, type, top) after each
    layer ran, once per top. Data layers are not re-run when ``skip_data`` (their tops keep
    the current batch)."""
    names = list(net._layer_names)
    tops = net.top_names
    for i in range(start, len(names)):
        kind = net.layers[i].type
        if not (skip_data and kind in DATA_TYPES):
            net._forward(i, i)
        for top in tops[names[i]]:
            yield i, names[i], kind, top


def skip_batches(net, n):
    """Advance every data layer of ``net`` by ``n`` batches."""
    names = list(net._layer_names)
    for i in range(len(names)):
        if net.layers[i].type in DATA_TYPES:
            for _ in range(n):
                net._forward(i, i)


class CaffeAdapter(Adapter):
    """pycaffe's SGDSolver, one iteration at a time (see :func:`protocol.run_schedule`)."""

    def __init__(self, caffe, solver_path):
        import numpy as np
        self.np = np
        self.solver = caffe.get_solver(str(solver_path))
        self.net = self.solver.net
        self._before = None
        self.solver.add_callback(lambda: None, self._gradients_ready)

    @property
    def iter(self):
        return self.solver.iter

    def _gradients_ready(self):
        if self._before is not None:
            self._before()  # Caffe applies the update anyway; a failed run ends right after

    def restore(self, k, solverstate, caffemodel):
        state = _relink_state(solverstate, caffemodel)
        self.solver.restore(state)
        if state != solverstate:
            os.unlink(state)

    def skip(self, index, batches):
        skip_batches(self.net if index is None else self.solver.test_nets[index], batches)

    def step(self, before_update):
        self._before = before_update
        self.solver.step(1)

    def losses(self):
        return [outputs(self.net)]

    def test(self, index, batches):
        tnet = self.solver.test_nets[index]
        self.solver.share_weights(tnet)
        return [_stage_means(tnet, batches)]

    def snapshot(self, k, prefix):
        self.solver.snapshot()
        it = self.solver.iter
        return "%s_iter_%d.caffemodel" % (prefix, it), "%s_iter_%d.solverstate" % (prefix, it)

    def first_nonfinite(self, k):
        np, net = self.np, self.net
        found = None
        for i, layer, kind, top in forward_steps(net):
            if not np.isfinite(net.blobs[top].data).all():
                found = {"layer": layer, "layer_type": kind, "blob": top, "step": i}
                break
        bad = ["%s[%d]" % (name, j) for name, blobs in net.params.items() for j, b in enumerate(blobs)
               if not np.isfinite(b.data).all()]
        return found, bad


def _stage_means(tnet, batches):
    sums = {}
    for _ in range(batches):
        tnet.forward()
        for top, value in outputs(tnet).items():
            sums[top] = sums.get(top, 0.0) + value
    return {top: v / batches for top, v in sums.items()}


def train(job):
    """See :func:`caffe_cae.backends.protocol.run_schedule`; ``job["solver"]`` is the engine solver."""
    caffe = _caffe(job["mode"])
    return run_schedule(CaffeAdapter(caffe, job["solver"]), job)


def _relink_state(solverstate, caffemodel):
    """A solver state whose ``learned_net`` names ``caffemodel`` (the run may have moved)."""
    from caffe.proto import caffe_pb2
    state = caffe_pb2.SolverState()
    with open(solverstate, "rb") as f:
        state.ParseFromString(f.read())
    if state.learned_net == caffemodel:
        return solverstate
    state.learned_net = caffemodel
    tmp = "%s.relinked-%d" % (solverstate, os.getpid())
    with open(tmp, "wb") as f:
        f.write(state.SerializeToString())
    return tmp


# ----------------------------------------------------------------------------------------
# Extraction


def extract(job):
    """Codes, labels, reconstructions and stage losses over a split; the Fig. 11 blobs
    (job keys: see :mod:`caffe_cae.extract`)."""
    import numpy as np
    caffe = _caffe(job["mode"])
    net = caffe.Net(str(job["deploy"]), caffe.TEST, weights=str(job["weights"]))
    inp = net.inputs[0]
    job = dict(job, batch=net.blobs[inp].data.shape[0])

    def feed(array):
        if array.shape != net.blobs[inp].data.shape:
            net.blobs[inp].reshape(*array.shape)
            net.reshape()
        net.blobs[inp].data[...] = array

    def forward(chunk):
        feed(chunk)
        net.forward()
        return {name: net.blobs[name].data for name in (job["code_blob"], job.get("recon_blob")) if name}

    def stage_losses():
        tnet = caffe.Net(str(job["train_test"]), caffe.TEST, stages=[str(job["stage"])], weights=str(job["weights"]))
        return _stage_means(tnet, job["stage_iter"])

    def trace(image):
        feed(image)
        return [("%02d_%s" % (step, layer), layer, kind, top, net.blobs[top].data.copy())
                for step, (i, layer, kind, top) in enumerate(forward_steps(net))]

    def params():
        return [(layer, [b.data.astype(np.float32) for b in blobs]) for layer, blobs in net.params.items()]

    return finish_extract(job, forward, stage_losses, trace, params)


# ----------------------------------------------------------------------------------------
# Benchmark


def bench(job):
    """ms per SGD iteration for each solver (see :func:`caffe_cae.backends.protocol.run_bench`)."""
    caffe = _caffe(job["mode"])
    return run_bench(job, lambda path: caffe.get_solver(str(path)))


if __name__ == "__main__":
    sys.exit(main(sys.argv, "caffe_cae.backends.caffe_worker", {"train": train, "extract": extract, "bench": bench}))
