"""The PyTorch side of training, extraction and benchmark; runs as a host subprocess.

Usage (started by :mod:`caffe_cae.backends.torch_backend`)::

    python -m caffe_cae.backends.torch_worker train|extract|bench JOB_JSON

Same jobs, events and schedule as :mod:`caffe_cae.backends.caffe_worker` (one JSON event
per line on stdout; a ``stop`` line on stdin, end of stdin, SIGINT or SIGTERM ends a training
run with a snapshot), executed by :class:`caffe_cae.backends.torch_solver.TorchSolver`:

- iteration k is the k-th update; ``train`` log records are the mean of each loss top over
  the iterations since the last record; test stages run their batches on the current
  weights; snapshots are Caffe-format ``.caffemodel`` / ``.solverstate`` files, so a run
  may be resumed or extracted by the other backend;
- resume: weights, history, iteration and lr step from the state; each data layer is
  advanced by the batches it consumed before (like the Caffe worker), giving the
  uninterrupted run's data order;
- a non-finite loss is caught before the update; the forward pass is replayed layer by layer
  on the same batch and the first (layer, top) holding a non-finite value is reported.

Threads: ``torch.set_num_threads`` = ``$CAFFE_CAE_TORCH_THREADS``, else ``$OMP_NUM_THREADS``,
else the CPU count;
OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set: spinning threads cost 5-20x
on a shared, loaded machine). Convolutions run on oneDNN; ``CAFFE_CAE_TORCH_ONEDNN=0``
selects PyTorch's im2col + GEMM path instead (Caffe's algorithm, 2-3x slower). Denormal floats
(below 1.2e-38) are flushed to zero on the CPU: Model 5's saturated tanh units make them
common and they cost ~2x there; ``CAFFE_CAE_TORCH_DENORMALS=1`` keeps them.
"""
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

LOSS_KEYS = {"cross_entropy_loss": "cross_entropy", "euclidean_loss": "euclidean",
             "contrastive_loss": "contrastive"}


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def loss_key(top):
    return LOSS_KEYS.get(top, top[:-5] if top.endswith("_loss") else top)


def keyed(values):
    return {loss_key(top): float(v) for top, v in values.items()}


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


class StopFlag:
    """Set by SIGINT, SIGTERM, a ``stop`` line on stdin or the end of stdin."""

    def __init__(self):
        self.reason = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._signal)
        threading.Thread(target=self._stdin, daemon=True).start()

    def _signal(self, signum, _frame):
        self.reason = self.reason or signal.Signals(signum).name

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


def first_nonfinite(net, torch):
    """Replay the last forward pass layer by layer: first (layer, top) with a non-finite value."""
    found = {}

    def check(index, layer, top, value):
        if not found and not bool(torch.isfinite(value).all()):
            found.update(layer=layer.name, layer_type=layer.type, blob=top, step=index)

    with torch.no_grad():
        net.forward(replay=True, trace=check)
    bad = ["%s[%d]" % (name, j) for name, blobs in net.params.items() for j, t in enumerate(blobs)
           if not bool(torch.isfinite(t).all())]
    return found or None, bad


def nonfinite_message(failure):
    """The one-line report of a non-finite loss: iteration, losses, the first non-finite blob
    of the replayed forward pass, non-finite parameters."""
    first = failure["first"]
    where = ("first non-finite blob '%s' (top of layer '%s', %s)" % (first["blob"], first["layer"],
                                                                      first["layer_type"])
             if first else "no non-finite blob when replayed")
    message = "non-finite loss at iteration %d (%s): %s" % (
        failure["iter"], ", ".join("%s=%s" % kv for kv in sorted(failure["loss"].items())), where)
    if failure["params"]:
        message += "; non-finite parameters: " + ", ".join(failure["params"][:6])
    return message


def train(job):
    """Job keys as the Caffe worker's: solver, mode, max_iter, display, test_interval, snapshot,
    snapshot_prefix, test_stages [{name, iter, period}], train_period, resume, stop_after."""
    from ..errors import CaeError
    from .torch_solver import TorchSolver
    try:
        torch, device = _setup(job["mode"])
        solver = TorchSolver(job["solver"], cwd=os.getcwd(), device=device, onednn=onednn())
    except CaeError as exc:
        emit("end", status="failed", iter=0, message=str(exc))
        return 2
    stop = StopFlag()
    max_iter, display = job["max_iter"], job["display"]
    test_interval, snap_every = job["test_interval"], job["snapshot"]
    prefix = job["snapshot_prefix"]
    resume = job.get("resume")
    sums, count, test_passes, skipped = {}, 0, 0, {}
    if resume:
        try:
            solver.restore(resume["solverstate"], resume["caffemodel"])
        except CaeError as exc:
            emit("end", status="failed", iter=0, message=str(exc))
            return 2
        if solver.iter != resume["iter"]:
            emit("end", status="failed", iter=solver.iter,
                 message="%s: holds iteration %d, expected %d" % (resume["solverstate"], solver.iter, resume["iter"]))
            return 1
        sums = dict(resume.get("train_sum") or {})
        count = resume.get("train_count") or 0
        test_passes = resume.get("test_passes") or 0
        skipped["train"] = _skip(solver.net, solver.iter, job["train_period"])
        for k, stage in enumerate(job["test_stages"]):
            skipped[stage["name"]] = _skip(solver.test_nets[k], test_passes * stage["iter"], stage["period"])
    emit("start", iter=solver.iter, max_iter=max_iter, skipped=skipped, pid=os.getpid(),
         torch_version=torch.__version__, device=str(device), threads=torch.get_num_threads())
    failure = {}

    def on_gradients(s, blobs, loss):
        values = keyed(s.losses)
        if not all(math.isfinite(v) for v in values.values()) or not math.isfinite(loss):
            found, bad = first_nonfinite(s.net, torch)
            failure.update(iter=s.iter + 1, loss=values, first=found, params=bad)
            return False
        return True

    def snapshot():
        model, state = solver.snapshot(prefix)
        emit("snapshot", iter=solver.iter, caffemodel=model, solverstate=state, train_sum=sums,
             train_count=count, test_passes=test_passes)
        return solver.iter

    last_snapshot = solver.iter if resume else -1
    last_progress = 0.0
    while solver.iter < max_iter:
        solver.step(1, on_gradients=on_gradients)
        if failure:
            message = nonfinite_message(failure)
            emit("nonfinite", message=message, **failure)
            emit("end", status="failed", iter=failure["iter"], message=message)
            return 3
        it = solver.iter
        values = keyed(solver.losses)
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        now = time.time()
        if now - last_progress >= 0.25 or it == max_iter:
            emit("progress", iter=it, loss=values, time=now)
            last_progress = now
        if it % display == 0 or it == max_iter:
            emit("log", iter=it, phase="train", loss=_mean(sums, count))
            sums, count = {}, 0
        if it % test_interval == 0 or it == max_iter:
            for k, stage in enumerate(job["test_stages"]):
                emit("testing", iter=it, stage=stage["name"], batches=stage["iter"])
                emit("log", iter=it, phase=stage["name"], loss=keyed(solver.test(k, stage["iter"])))
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


def _skip(net, consumed, period):
    if period <= 0:
        return 0
    n = consumed % period
    net.skip_batches(n)
    return n


# ----------------------------------------------------------------------------------------
# Extraction


def _write_h5(path, fill):
    import h5py
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def extract(job):
    """Same job and outputs as the Caffe worker's ``extract`` (codes.h5, blobs_digit5.h5)."""
    import h5py
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
    batch = net.input_shapes()[inp][0]
    with h5py.File(job["data_h5"], "r") as f, torch.no_grad():
        n = f["data"].shape[0]
        labels = np.asarray(f["label"][:], dtype=np.float32)
        code = recon = None
        start_time = time.time()
        last = 0.0
        for start in range(0, n, batch):
            chunk = np.ascontiguousarray(f["data"][start:start + batch], dtype=np.float32)
            blobs, _ = net.forward(inputs={inp: chunk})
            m = chunk.shape[0]
            c = blobs[job["code_blob"]].reshape(m, -1).cpu().numpy()
            if code is None:
                code = np.zeros((n, c.shape[1]), np.float32)
                if job.get("recon_blob"):
                    recon = np.zeros((n, 28, 28), np.float32)
            code[start:start + m] = c
            if recon is not None:
                recon[start:start + m] = blobs[job["recon_blob"]].reshape(m, 28, 28).cpu().numpy()
            now = time.time()
            if now - last > 0.5:
                emit("progress", what="codes", done=start + m, total=n)
                last = now
    codes_seconds = time.time() - start_time
    dim = code.shape[1]
    stage_losses = {}
    if job.get("train_test"):
        tnet = TorchNet(parse_net(job["train_test"]), "test", stages=[str(job["stage"])], cwd=os.getcwd(),
                        device=device, onednn=onednn())
        tnet.set_weights(weights, source=job["weights"])
        sums = {}
        with torch.no_grad():
            for _ in range(job["stage_iter"]):
                blobs, _ = tnet.forward()
                for top in tnet.losses:
                    key = loss_key(top)
                    sums[key] = sums.get(key, 0.0) + float(blobs[top])
        stage_losses = _mean(sums, job["stage_iter"])
        del tnet

    def fill_codes(f):
        f.create_dataset("code", data=code)
        f.create_dataset("label", data=labels)
        if recon is not None:
            f.create_dataset("reconstruction", data=recon)
        for key, value in (job.get("attrs") or {}).items():
            f.attrs[key] = value
        f.attrs["extract_backend"] = "torch"
        for key, value in stage_losses.items():
            f.attrs["loss_" + key] = value
        f.attrs["n"] = n
        f.attrs["dim"] = dim

    _write_h5(job["codes_out"], fill_codes)
    result = {"n": n, "dim": dim, "losses": stage_losses, "codes_seconds": codes_seconds}
    if job.get("blobs_out"):
        result["digit_index"] = write_blobs(net, inp, job, torch)
    emit("result", **result)
    emit("end", status="finished")
    return 0


def write_blobs(net, inp, job, torch):
    """Every (layer, top) of the deploy net for the first test image of ``digit``; params."""
    import h5py
    with h5py.File(job["digit_h5"], "r") as f:
        labels = np.asarray(f["label"][:])
        where = np.flatnonzero(labels == job["digit"])
        if not len(where):
            raise SystemExit("%s: no image with label %d" % (job["digit_h5"], job["digit"]))
        index = int(where[0])
        image = np.asarray(f["data"][index:index + 1], dtype=np.float32)
    steps = []

    def record(i, layer, top, value):
        steps.append(("%02d_%s" % (len(steps), layer.name), layer.name, layer.type, top,
                      value.detach().cpu().numpy().copy()))

    with torch.no_grad():
        net.forward(inputs={inp: image}, trace=record)

    def fill(f):
        group = f.create_group("blobs")
        for name, layer, kind, top, value in steps:
            ds = group.create_dataset(name, data=value.astype(np.float32))
            ds.attrs["blob"] = top
            ds.attrs["layer"] = layer
            ds.attrs["layer_type"] = kind
        params = f.create_group("params")
        for layer, arrays in net.get_weights():
            g = params.create_group(layer)
            for j, a in enumerate(arrays):
                g.create_dataset(str(j), data=a)
        f.create_dataset("input", data=image)
        f.attrs["label"] = int(job["digit"])
        f.attrs["index"] = index
        for key, value in (job.get("attrs") or {}).items():
            f.attrs[key] = value
        f.attrs["extract_backend"] = "torch"

    _write_h5(job["blobs_out"], fill)
    return index


# ----------------------------------------------------------------------------------------
# Benchmark


def bench(job):
    """ms per SGD iteration for each solver, wall clock and CPU time of this process (all
    threads) (job: mode, nets [{name, solver}], warmup, repeats, iters); one ``result`` per net."""
    from ..errors import CaeError
    from .torch_solver import TorchSolver
    try:
        torch, device = _setup(job["mode"])
    except CaeError as exc:
        emit("end", status="failed", message=str(exc))
        return 2
    for entry in job["nets"]:
        solver = TorchSolver(entry["solver"], cwd=os.getcwd(), device=device, test_nets=False, onednn=onednn())
        started = time.time()
        solver.step(job["warmup"])
        times, cpu = [], []
        for _ in range(job["repeats"]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t, c = time.time(), time.process_time()
            solver.step(job["iters"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.time() - t) * 1000.0 / job["iters"])
            cpu.append((time.process_time() - c) * 1000.0 / job["iters"])
        times.sort()
        cpu.sort()
        emit("result", net=entry["name"], ms=times[len(times) // 2], ms_all=times, cpu_ms=cpu[len(cpu) // 2],
             seconds=time.time() - started, threads=torch.get_num_threads())
        del solver
    emit("end", status="finished")
    return 0


def main(argv):
    if len(argv) != 3 or argv[1] not in ("train", "extract", "bench"):
        sys.stderr.write("usage: python -m caffe_cae.backends.torch_worker train|extract|bench JOB_JSON\n")
        return 2
    job = json.loads(argv[2])
    return {"train": train, "extract": extract, "bench": bench}[argv[1]](job)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
