"""What every worker shares: the event protocol, the training schedule and the output files.

A worker (:mod:`~caffe_cae.backends.caffe_worker` inside the Caffe engine,
:mod:`~caffe_cae.backends.torch_worker` and :mod:`~caffe_cae.backends.torch_batch_worker`
on the host) is an *adapter* around its solver; this module runs the schedule, emits the
events and writes the files, so both backends behave and write alike:

- events: one JSON object per line on stdout (:func:`emit`), loss tops keyed by
  :data:`LOSS_KEYS`; a ``stop`` line on stdin, end of stdin, SIGINT or SIGTERM set the
  :class:`StopFlag`;
- :func:`run_schedule`: display, test, snapshot, stop and resume (see its docstring);
- :func:`write_codes` and :func:`write_blobs`: ``codes.h5`` and ``blobs_digit5.h5``
  (datasets and attributes documented in :mod:`caffe_cae.extract`); the loops around them
  (and the benchmark's) are in :mod:`caffe_cae.backends.jobs`.

Imports only numpy and the standard library (and h5py where HDF5 is written): it runs inside
the Caffe engine (Python 3.9, numpy 1.19, h5py 2.10).
"""
import json
import math
import os
import signal
import sys
import threading
import time

#: loss top name -> key in log records
LOSS_KEYS = {"cross_entropy_loss": "cross_entropy", "euclidean_loss": "euclidean",
             "contrastive_loss": "contrastive"}
#: seconds between two ``progress`` events
PROGRESS_EVERY = 0.25


def emit(event, **fields):
    """One event as a JSON line on stdout."""
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def loss_key(top):
    return LOSS_KEYS.get(top, top[:-5] if top.endswith("_loss") else top)


def rekeyed(values):
    """{loss top: value} -> {log key: value}."""
    return {loss_key(top): v for top, v in values.items()}


def keyed(values):
    """{loss top: value} -> {log key: float}."""
    return {key: float(v) for key, v in rekeyed(values).items()}


def mean(sums, count):
    return {k: float(v) / count for k, v in sums.items()} if count else {}


def add(sums, values):
    """Add {loss top: value} into {log key: sum}. The values may be host floats or a device's
    float64 scalars (the torch adapter's): the sums then stay on the device, in the same
    float64 additions as host floats, and are read at display and snapshot points only."""
    for key, value in rekeyed(values).items():
        sums[key] = sums.get(key, 0.0) + value


def floats(sums):
    return {k: float(v) for k, v in sums.items()}


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


def skip_count(consumed, period):
    """Batches a data layer must be advanced by after ``consumed`` (its cycle is ``period``)."""
    return consumed % period if period > 0 else 0


# ----------------------------------------------------------------------------------------
# Training


class Adapter:
    """What a worker supplies to :func:`run_schedule` for ``runs`` runs trained at once
    (1 but for the batched torch worker). ``iter`` is the solver's iteration."""

    runs = 1
    iter = 0
    #: extra fields of the ``start`` event (versions, device ...)
    start_fields = {}
    #: the non-finite check: False, :meth:`nonfinite` before every update (a read per
    #: iteration); True, kept on the device and read by :meth:`failed` where the host reads anyway
    deferred = False

    def restore(self, k, solverstate, caffemodel):
        """Run k's weights, history and iteration from a snapshot (CaeError when unreadable)."""
        raise NotImplementedError

    def skip(self, index, batches):
        """Advance the data layers of the train net (``index`` None) or test net ``index``."""
        raise NotImplementedError

    def step(self, before_update):
        """One iteration; ``before_update()`` is called between gradients and update, and
        False from it means: no update."""
        raise NotImplementedError

    def losses(self):
        """Per run, {loss top: value} of the last step's (last) forward pass: floats, or
        float64 scalars of a device (summed there, read with ``float()`` when shown)."""
        raise NotImplementedError

    def nonfinite(self):
        """The runs whose last step has a non-finite loss (eager check: read every iteration)."""
        return [k for k, values in enumerate(self.losses())
                if not all(math.isfinite(v) for v in keyed(values).values())]

    def test(self, index, batches):
        """Per run, {loss top: mean} of test net ``index`` over ``batches`` passes."""
        raise NotImplementedError

    def snapshot(self, k, prefix):
        """Write run k's ``PREFIX_iter_N.caffemodel`` and ``.solverstate``; returns both paths."""
        raise NotImplementedError

    def failed(self):
        """Deferred check: {run: (b, {loss top: value})} for each run whose loss was first
        non-finite at iteration b; its updates from b on were not applied (weights and
        history are those after b - 1)."""
        return {}

    def first_nonfinite(self, k, at=None):
        """Replay run k's forward pass (``at``: iteration ``at``'s batch, after :meth:`failed`,
        else the last step's): (first {layer, layer_type, blob, step} holding a non-finite
        value or None, [names of non-finite parameter blobs])."""
        raise NotImplementedError

    def drop(self, k):
        """Run k failed: leave it out from now on (the batched worker zeroes its block)."""


def run_schedule(adapter, job, stop=None):
    """Train as the job says; returns the worker's exit status (0, 1 a snapshot of the wrong
    iteration, 2 a bad snapshot, 3 a non-finite loss).

    ``job`` is one run's (keys: max_iter, display, test_interval, snapshot, snapshot_prefix,
    test_stages [{name, iter, period}], train_period, resume (None or {solverstate,
    caffemodel, iter, test_passes, train_sum, train_count}), stop_after) or, for a batch,
    ``{"runs": [such jobs]}`` whose schedules agree; a batch's events carry ``run`` (the run's
    index) and end with ``batch_end``.

    Schedule (Caffe 1.0's ``Solver::Step``, one iteration at a time): iteration k is the k-th
    update; every ``display`` iterations and at the end a ``train`` log record carries the
    mean of each loss over the iterations since the last record; every ``test_interval``
    iterations and at the end each test stage runs its batches on the current weights;
    snapshots every ``snapshot`` iterations, at the end and when stopped. Resume: weights,
    history and iteration from the snapshot, each data layer advanced by the batches it
    served before (modulo its cycle), which gives the uninterrupted run's data order. A
    non-finite loss is caught before the update and fails its run, naming the first
    non-finite blob of the replayed forward pass; with ``adapter.deferred`` it is caught where
    the host reads anyway (a display, test, snapshot, progress or stop point, the end), before
    anything of that iteration is sent, and reported as the eager check would have (the
    update was masked from the failing iteration on; its batch is replayed).
    """
    from ..errors import CaeError

    batched = "runs" in job
    jobs = job["runs"] if batched else [job]
    first = jobs[0]
    K = len(jobs)

    def send(event, k=None, **fields):
        if batched and k is not None:
            fields["run"] = k
        emit(event, **fields)

    def end_all(status, code, **fields):
        for k in range(K):
            send("end", k, status=status, **fields)
        if batched:
            send("batch_end", status=status)
        return code

    resume = first.get("resume")
    sums, count, passes = [{} for _ in jobs], [0] * K, [0] * K
    skipped = {}
    for r in jobs:
        if bool(r.get("resume")) != bool(resume):
            return end_all("failed", 2, iter=0,
                           message="%s: resumed and new runs cannot be batched" % r["snapshot_prefix"])
    if resume:
        for k, r in enumerate(jobs):
            try:
                adapter.restore(k, r["resume"]["solverstate"], r["resume"]["caffemodel"])
            except CaeError as exc:
                return end_all("failed", 2, iter=0, message=str(exc))
            if adapter.iter != r["resume"]["iter"]:
                return end_all("failed", 1, iter=adapter.iter, message="%s: holds iteration %d, expected %d"
                               % (r["resume"]["solverstate"], adapter.iter, r["resume"]["iter"]))
            sums[k] = dict(r["resume"].get("train_sum") or {})
            count[k] = r["resume"].get("train_count") or 0
            passes[k] = r["resume"].get("test_passes") or 0
        skipped["train"] = skip_count(adapter.iter, first["train_period"])
        adapter.skip(None, skipped["train"])
        for j, stage in enumerate(first["test_stages"]):
            skipped[stage["name"]] = skip_count(passes[0] * stage["iter"], stage["period"])
            adapter.skip(j, skipped[stage["name"]])
    stop = stop or StopFlag()
    max_iter, display = first["max_iter"], first["display"]
    test_interval, snap_every = first["test_interval"], first["snapshot"]
    extra = dict(adapter.start_fields)
    if batched:
        extra["batched"] = K
    alive = list(range(K))
    for k in alive:
        send("start", k, iter=adapter.iter, max_iter=max_iter, skipped=skipped, pid=os.getpid(), **extra)
    failures = {}

    deferred = adapter.deferred

    def fail(k, it, values, found):
        failures[k] = dict(iter=it, loss=keyed(values), first=found[0], params=found[1])

    def before_update():
        for k in [] if deferred else adapter.nonfinite():
            if k in alive:
                fail(k, adapter.iter + 1, adapter.losses()[k], adapter.first_nonfinite(k))
        return len(failures) < len(alive)

    def check():
        for k, (it, values) in sorted(adapter.failed().items()):
            if k in alive:
                fail(k, it, values, adapter.first_nonfinite(k, it))

    def snapshot(k):
        model, state = adapter.snapshot(k, jobs[k]["snapshot_prefix"])
        send("snapshot", k, iter=adapter.iter, caffemodel=model, solverstate=state, train_sum=floats(sums[k]),
             train_count=count[k], test_passes=passes[k])

    last_snapshot = adapter.iter if resume else -1
    last_progress = 0.0
    while adapter.iter < max_iter and alive:
        adapter.step(before_update)
        it = adapter.iter
        now = time.time()
        show = now - last_progress >= PROGRESS_EVERY or it == max_iter
        log, test = it % display == 0 or it == max_iter, it % test_interval == 0 or it == max_iter
        snap = it % snap_every == 0 or it == max_iter
        stopping = it < max_iter and (stop.reason or it == first.get("stop_after"))
        if deferred and (show or log or test or snap or stopping):
            check()
        for k, failure in sorted(failures.items()):
            message = nonfinite_message(failure)
            send("nonfinite", k, message=message, **failure)
            send("end", k, status="failed", iter=failure["iter"], message=message)
            alive.remove(k)
            adapter.drop(k)
        failures.clear()
        if not alive:
            break
        values = adapter.losses()
        for k in alive:
            add(sums[k], values[k])
            count[k] += 1
            if show:
                send("progress", k, iter=it, loss=keyed(values[k]), time=now)
            if log:
                send("log", k, iter=it, phase="train", loss=mean(sums[k], count[k]))
                sums[k], count[k] = {}, 0
        if show:
            last_progress = now
        if test:
            for j, stage in enumerate(first["test_stages"]):
                for k in alive:
                    send("testing", k, iter=it, stage=stage["name"], batches=stage["iter"])
                results = adapter.test(j, stage["iter"])
                for k in alive:
                    send("log", k, iter=it, phase=stage["name"], loss=keyed(results[k]))
            for k in alive:
                passes[k] += 1
        if snap:
            for k in alive:
                snapshot(k)
            last_snapshot = it
        if stopping:
            for k in alive:
                if last_snapshot != it:
                    snapshot(k)
                send("end", k, status="interrupted", iter=it, reason=stop.reason or "stop_after")
            if batched:
                send("batch_end", status="interrupted")
            return 0
    for k in alive:
        send("end", k, status="finished", iter=adapter.iter)
    if batched:
        send("batch_end", status="finished" if len(alive) == K else "failed")
    return 0 if len(alive) == K else 3


# ----------------------------------------------------------------------------------------
# The extraction's files


def write_codes(path, code, labels, recon, attrs, stage_losses):
    """``codes.h5``: datasets code, label (and reconstruction); attrs = ``attrs``, then
    ``loss_<key>`` per stage loss, ``n`` and ``dim``."""
    from ..files import write_h5

    def fill(f):
        f.create_dataset("code", data=code)
        f.create_dataset("label", data=labels)
        if recon is not None:
            f.create_dataset("reconstruction", data=recon)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for key, value in stage_losses.items():
            f.attrs["loss_" + key] = value
        f.attrs["n"] = code.shape[0]
        f.attrs["dim"] = code.shape[1]

    write_h5(path, fill)


def write_blobs(path, steps, params, image, digit, index, attrs):
    """``blobs_digit5.h5``: group ``blobs`` (``steps``: [(name, layer, layer type, top, array)]),
    group ``params/<layer>/<j>`` (``params``: [(layer, [arrays])]), dataset ``input``; attrs
    ``label``, ``index`` and ``attrs`` but for ``split`` and ``stage`` (one test image)."""
    import numpy as np

    from ..files import write_h5

    def fill(f):
        group = f.create_group("blobs")
        for name, layer, kind, top, value in steps:
            ds = group.create_dataset(name, data=np.asarray(value, dtype=np.float32))
            ds.attrs["blob"] = top
            ds.attrs["layer"] = layer
            ds.attrs["layer_type"] = kind
        group = f.create_group("params")
        for layer, arrays in params:
            g = group.create_group(layer)
            for j, a in enumerate(arrays):
                g.create_dataset(str(j), data=np.asarray(a, dtype=np.float32))
        f.create_dataset("input", data=image)
        f.attrs["label"] = int(digit)
        f.attrs["index"] = index
        for key, value in (attrs or {}).items():
            if key not in ("split", "stage"):
                f.attrs[key] = value

    write_h5(path, fill)
