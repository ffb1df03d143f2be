"""The Caffe side of training, extraction and benchmark; runs INSIDE the engine.

Usage (started by :mod:`caffe_cae.backends.caffe_engine`)::

    python3 -m caffe_cae.backends.caffe_worker train|extract|bench JOB_JSON

JOB_JSON is the job as a JSON text. Every event goes to stdout as one JSON object per line
(``{"event": ...}``); anything else Caffe prints goes to stderr. A line ``stop`` on stdin,
end of stdin, SIGINT or SIGTERM asks a training run to snapshot and end.

Imports only caffe, numpy, h5py and the standard library (the engine is Debian bullseye:
Python 3.9, numpy 1.19, h5py 2.10, protobuf 3.12).

Training semantics (Caffe 1.0's ``Solver::Step`` one iteration at a time; the solver file
given has ``snapshot`` and ``display`` at 0 and ``test_interval`` at 2^31-1 so that the schedule below
is the only one):

- iteration ``k`` is the k-th update; after it, every ``display`` iterations and at the
  end a ``train`` record carries the mean of each loss top over the iterations since the
  last record; every ``test_interval`` iterations and at the end each test stage runs its
  ``iter`` batches on the current weights and reports the mean of each loss top;
- snapshots every ``snapshot`` iterations, at the end and when stopped;
- resume: ``solver.restore`` brings weights, history and iteration back; Caffe 1.0 does not
  restore the HDF5Data read position, so each data layer is advanced by the batches it
  consumed before (modulo its cycle: rows / gcd(rows, batch) batches), which gives the
  uninterrupted run's data order;
- a non-finite loss is caught in the ``on_gradients_ready`` callback, before the update
  is applied: the forward pass is replayed layer by layer on the same batch and weights and
  the first (layer, top) holding a non-finite value is reported.
"""
import json
import math
import os
import signal
import sys
import threading
import time

from ..files import write_h5

#: loss top name -> key in log records
LOSS_KEYS = {"cross_entropy_loss": "cross_entropy", "euclidean_loss": "euclidean",
             "contrastive_loss": "contrastive"}
DATA_TYPES = ("HDF5Data", "Input", "Data", "MemoryData", "DummyData", "ImageData")


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def _caffe(mode):
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    if mode == "gpu":
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    return caffe


def loss_key(top):
    return LOSS_KEYS.get(top, top[:-5] if top.endswith("_loss") else top)


def losses(net):
    """{key: float} of the net's output blobs (the loss tops)."""
    return {loss_key(top): float(net.blobs[top].data.reshape(-1)[0]) for top in net.outputs}


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


def first_nonfinite(net, np):
    """Replay the forward pass; the first (layer, top) with a non-finite value, and the names of
    non-finite parameters (``layer[index]``)."""
    found = None
    for i, layer, kind, top in forward_steps(net):
        if not np.isfinite(net.blobs[top].data).all():
            found = {"layer": layer, "layer_type": kind, "blob": top, "step": i}
            break
    bad = ["%s[%d]" % (name, j) for name, blobs in net.params.items() for j, b in enumerate(blobs)
           if not np.isfinite(b.data).all()]
    return found, bad


def _rows(list_file, top):
    """Total rows of ``top`` over the h5 files named in an HDF5Data list file."""
    import h5py
    total = 0
    with open(list_file) as f:
        for line in f:
            path = line.strip()
            if path:
                with h5py.File(path, "r") as h:
                    total += h[top].shape[0]
    return total


def skip_batches(net, consumed, period):
    """Advance every data layer of ``net`` as if it had served ``consumed`` batches."""
    if period <= 0:
        return 0
    n = consumed % period
    names = list(net._layer_names)
    for i in range(len(names)):
        if net.layers[i].type in DATA_TYPES:
            for _ in range(n):
                net._forward(i, i)
    return n


class StopFlag:
    """Set by SIGINT, SIGTERM, a ``stop`` line on stdin or the end of stdin."""

    def __init__(self):
        self.reason = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._signal)
        thread = threading.Thread(target=self._stdin, daemon=True)
        thread.start()

    def _signal(self, signum, _frame):
        self.reason = self.reason or ("SIGINT" if signum == signal.SIGINT else "SIGTERM")

    def _stdin(self):
        try:
            for line in sys.stdin:
                if line.strip() == "stop":
                    self.reason = self.reason or "stop requested"
                    return
        except (OSError, ValueError):
            pass
        self.reason = self.reason or "stdin closed"


def _mean(sums, count):
    return {k: v / count for k, v in sums.items()} if count else {}


def run_tests(solver, job, np):
    """Each test stage over its batches; returns [(stage name, {key: mean})]."""
    out = []
    for net_index, stage in enumerate(job["test_stages"]):
        emit("testing", iter=solver.iter, stage=stage["name"], batches=stage["iter"])
        tnet = solver.test_nets[net_index]
        solver.share_weights(tnet)
        sums = {}
        for _ in range(stage["iter"]):
            tnet.forward()
            for key, value in losses(tnet).items():
                sums[key] = sums.get(key, 0.0) + value
        out.append((stage["name"], _mean(sums, stage["iter"])))
    return out


def train(job):
    """See the module docstring. Job keys: solver, mode, max_iter, display, test_interval,
    snapshot, snapshot_prefix, test_stages [{name, iter, period}], train_period, resume
    (None or {solverstate, caffemodel, iter, test_passes, train_sum, train_count}), stop_after."""
    import numpy as np
    caffe = _caffe(job["mode"])
    stop = StopFlag()
    solver = caffe.get_solver(str(job["solver"]))
    net = solver.net
    max_iter = job["max_iter"]
    display = job["display"]
    test_interval = job["test_interval"]
    snap_every = job["snapshot"]
    prefix = job["snapshot_prefix"]
    resume = job.get("resume")
    sums, count, test_passes = {}, 0, 0
    skipped = {}
    if resume:
        state = _relink_state(resume["solverstate"], resume["caffemodel"])
        solver.restore(state)
        if state != resume["solverstate"]:
            os.unlink(state)
        if solver.iter != resume["iter"]:
            emit("end", status="failed", iter=solver.iter,
                 message="%s: holds iteration %d, expected %d" % (resume["solverstate"], solver.iter, resume["iter"]))
            return 1
        sums = dict(resume.get("train_sum") or {})
        count = resume.get("train_count") or 0
        test_passes = resume.get("test_passes") or 0
        skipped["train"] = skip_batches(net, solver.iter, job["train_period"])
        for net_index, stage in enumerate(job["test_stages"]):
            skipped[stage["name"]] = skip_batches(solver.test_nets[net_index], test_passes * stage["iter"],
                                                  stage["period"])

    failure = {}

    def on_start():
        pass

    def on_gradients_ready():
        values = losses(net)
        if not all(math.isfinite(v) for v in values.values()):
            found, bad = first_nonfinite(net, np)
            failure.update(iter=solver.iter + 1, loss=values, first=found, params=bad)

    solver.add_callback(on_start, on_gradients_ready)
    emit("start", iter=solver.iter, max_iter=max_iter, skipped=skipped, pid=os.getpid())

    def snapshot():
        solver.snapshot()
        it = solver.iter
        emit("snapshot", iter=it, caffemodel="%s_iter_%d.caffemodel" % (prefix, it),
             solverstate="%s_iter_%d.solverstate" % (prefix, it), train_sum=sums, train_count=count,
             test_passes=test_passes)
        return it

    last_snapshot = solver.iter if resume else -1
    last_progress = 0.0
    while solver.iter < max_iter:
        solver.step(1)
        it = solver.iter
        if failure:
            first = failure["first"]
            where = ("first non-finite blob '%s' (top of layer '%s', %s)" % (first["blob"], first["layer"],
                                                                              first["layer_type"])
                     if first else "no non-finite blob when replayed")
            message = "non-finite loss at iteration %d (%s): %s" % (
                failure["iter"], ", ".join("%s=%s" % kv for kv in sorted(failure["loss"].items())), where)
            if failure["params"]:
                message += "; non-finite parameters: " + ", ".join(failure["params"][:6])
            emit("nonfinite", message=message, **failure)
            emit("end", status="failed", iter=failure["iter"], message=message)
            return 3
        for key, value in losses(net).items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        now = time.time()
        if now - last_progress >= 0.25 or it == max_iter:
            emit("progress", iter=it, loss=losses(net), time=now)
            last_progress = now
        if it % display == 0 or it == max_iter:
            emit("log", iter=it, phase="train", loss=_mean(sums, count))
            sums, count = {}, 0
        if it % test_interval == 0 or it == max_iter:
            for name, values in run_tests(solver, job, np):
                emit("log", iter=it, phase=name, loss=values)
            test_passes += 1
        if it % snap_every == 0 or it == max_iter:
            last_snapshot = snapshot()
        if it < max_iter and (stop.reason or it == job.get("stop_after")):
            if last_snapshot != it:
                last_snapshot = snapshot()
            emit("end", status="interrupted", iter=it, reason=stop.reason or "stop_after")
            return 0
    emit("end", status="finished", iter=solver.iter)
    return 0


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
    """Codes, labels, reconstructions and stage losses over a split; the Fig. 11 blobs.

    Job keys: mode, deploy, weights, data_h5 (images of the split), code_blob, recon_blob
    (or None), codes_out, train_test, stage, stage_iter, blobs_out (or None), digit_h5,
    digit, attrs (dict copied into codes.h5)."""
    import h5py
    import numpy as np
    caffe = _caffe(job["mode"])
    net = caffe.Net(str(job["deploy"]), caffe.TEST, weights=str(job["weights"]))
    inp = net.inputs[0]
    batch = net.blobs[inp].data.shape[0]
    with h5py.File(job["data_h5"], "r") as f:
        n = f["data"].shape[0]
        labels = np.asarray(f["label"][:], dtype=np.float32)
        dim = int(np.prod(net.blobs[job["code_blob"]].data.shape[1:]))
        code = np.zeros((n, dim), np.float32)
        recon = np.zeros((n, 28, 28), np.float32) if job.get("recon_blob") else None
        start_time = time.time()
        last = 0.0
        for start in range(0, n, batch):
            chunk = np.ascontiguousarray(f["data"][start:start + batch], dtype=np.float32)
            if chunk.shape[0] != net.blobs[inp].data.shape[0]:
                net.blobs[inp].reshape(*chunk.shape)
                net.reshape()
            net.blobs[inp].data[...] = chunk
            net.forward()
            m = chunk.shape[0]
            code[start:start + m] = net.blobs[job["code_blob"]].data.reshape(m, -1)
            if recon is not None:
                recon[start:start + m] = net.blobs[job["recon_blob"]].data.reshape(m, 28, 28)
            now = time.time()
            if now - last > 0.5:
                emit("progress", what="codes", done=start + m, total=n)
                last = now
    codes_seconds = time.time() - start_time
    stage_losses = {}
    if job.get("train_test"):
        tnet = caffe.Net(str(job["train_test"]), caffe.TEST, stages=[str(job["stage"])], weights=str(job["weights"]))
        sums = {}
        for _ in range(job["stage_iter"]):
            tnet.forward()
            for key, value in losses(tnet).items():
                sums[key] = sums.get(key, 0.0) + value
        stage_losses = _mean(sums, job["stage_iter"])
        del tnet

    def fill_codes(f):
        f.create_dataset("code", data=code)
        f.create_dataset("label", data=labels)
        if recon is not None:
            f.create_dataset("reconstruction", data=recon)
        for key, value in (job.get("attrs") or {}).items():
            f.attrs[key] = value
        for key, value in stage_losses.items():
            f.attrs["loss_" + key] = value
        f.attrs["n"] = n
        f.attrs["dim"] = dim

    write_h5(job["codes_out"], fill_codes)
    result = {"n": n, "dim": dim, "losses": stage_losses, "codes_seconds": codes_seconds}
    if job.get("blobs_out"):
        result["digit_index"] = write_blobs(net, job, np)
    emit("result", **result)
    emit("end", status="finished")
    return 0


def write_blobs(net, job, np):
    """Every (layer, top) of the deploy net for the first test image of ``digit``; params."""
    import h5py
    with h5py.File(job["digit_h5"], "r") as f:
        labels = np.asarray(f["label"][:])
        where = np.flatnonzero(labels == job["digit"])
        if not len(where):
            raise SystemExit("%s: no image with label %d" % (job["digit_h5"], job["digit"]))
        index = int(where[0])
        image = np.asarray(f["data"][index:index + 1], dtype=np.float32)
    inp = net.inputs[0]
    net.blobs[inp].reshape(*image.shape)
    net.reshape()
    net.blobs[inp].data[...] = image
    steps = []
    for step, (i, layer, kind, top) in enumerate(forward_steps(net)):
        steps.append(("%02d_%s" % (step, layer), layer, kind, top, net.blobs[top].data.copy()))

    def fill(f):
        group = f.create_group("blobs")
        for name, layer, kind, top, value in steps:
            ds = group.create_dataset(name, data=value.astype(np.float32))
            ds.attrs["blob"] = top
            ds.attrs["layer"] = layer
            ds.attrs["layer_type"] = kind
        params = f.create_group("params")
        for layer, blobs in net.params.items():
            g = params.create_group(layer)
            for j, blob in enumerate(blobs):
                g.create_dataset(str(j), data=blob.data.astype(np.float32))
        f.create_dataset("input", data=image)
        f.attrs["label"] = int(job["digit"])
        f.attrs["index"] = index
        for key, value in (job.get("attrs") or {}).items():
            if key not in ("split", "stage"):
                f.attrs[key] = value

    write_h5(job["blobs_out"], fill)
    return index


# ----------------------------------------------------------------------------------------
# Benchmark


def bench(job):
    """ms per SGD iteration for each solver (wall clock, and CPU time of this process, all its
    threads). Job keys: mode, nets [{name, solver}], warmup, repeats, iters (per repeat).
    Emits one ``result`` per net."""
    caffe = _caffe(job["mode"])
    for entry in job["nets"]:
        solver = caffe.get_solver(str(entry["solver"]))
        started = time.time()
        solver.step(job["warmup"])
        times, cpu = [], []
        for _ in range(job["repeats"]):
            t, c = time.time(), time.process_time()
            solver.step(job["iters"])
            times.append((time.time() - t) * 1000.0 / job["iters"])
            cpu.append((time.process_time() - c) * 1000.0 / job["iters"])
        times.sort()
        cpu.sort()
        emit("result", net=entry["name"], ms=times[len(times) // 2], ms_all=times, cpu_ms=cpu[len(cpu) // 2],
             seconds=time.time() - started)
        del solver
    emit("end", status="finished")
    return 0


def main(argv):
    if len(argv) != 3 or argv[1] not in ("train", "extract", "bench"):
        sys.stderr.write("usage: python3 -m caffe_cae.backends.caffe_worker train|extract|bench JOB_JSON\n")
        return 2
    job = json.loads(argv[2])
    return {"train": train, "extract": extract, "bench": bench}[argv[1]](job)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
