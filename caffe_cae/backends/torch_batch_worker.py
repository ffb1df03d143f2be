"""The PyTorch worker for K runs trained at once (``grid --batch-runs K``); a host subprocess.

Usage (started by :meth:`caffe_cae.backends.torch_backend.TorchBackend.train_batch`)::

    python -m caffe_cae.backends.torch_batch_worker train JOB_JSON

The job is ``{"mode", "runs": [one torch_worker train job per run]}``: the runs' solvers must
be the same but for ``random_seed`` and their paths, their nets the same, their schedules
(max_iter, display, test_interval, snapshot, test stages) the same and, when resumed, all
at the same iteration. Every event of :mod:`caffe_cae.backends.torch_worker` is emitted
with ``run`` = the run's index, in the same order and with the same content a single run
gives, so the host writes each run directory exactly as a single run's; one ``end`` event
per run, then ``batch_end``. Stop (SIGINT, SIGTERM, ``stop`` on stdin, end of stdin):
every running run snapshots and ends ``interrupted``.

A non-finite loss fails only its run (``nonfinite`` and ``end`` failed for it, naming the
first non-finite blob of that run when replayed); its block of the wide net is zeroed
from then on and never snapshotted again, and the other runs go on. Exit status 0 when no
run failed, 3 when one did, 2 for a bad job.
"""
import json
import math
import os
import sys
import time

from .torch_worker import StopFlag, _mean, _setup, _skip, emit, keyed, nonfinite_message, onednn


def _check_same(runs):
    """Seeds of the runs; CaeError unless their solvers, nets and schedules agree."""
    from ..errors import CaeError
    from ..schema import parse_solver
    from .torch_solver import net_param_of

    keys = ("max_iter", "display", "test_interval", "snapshot", "test_stages", "train_period", "mode")
    seeds, solvers = [], []
    for job in runs:
        sp = parse_solver(job["solver"])
        seeds.append(int(sp.random_seed))
        net = net_param_of(sp, os.getcwd()).SerializeToString()
        for field in ("random_seed", "net", "snapshot_prefix"):
            sp.ClearField(field)
        solvers.append((sp.SerializeToString(), net, [job.get(k) for k in keys]))
    for job, other in zip(runs[1:], solvers[1:]):
        if other != solvers[0]:
            raise CaeError("%s: its solver, net or schedule differs from %s's; only runs that differ by the "
                           "seed can be batched" % (job["solver"], runs[0]["solver"]))
    return seeds


def train(job):
    from ..errors import CaeError
    from .torch_batch import BatchSolver
    runs = job["runs"]
    first = runs[0]
    try:
        torch, device = _setup(job["mode"])
        seeds = _check_same(runs)
        solver = BatchSolver(first["solver"], seeds, cwd=os.getcwd(), device=device, onednn=onednn())
        for k, r in enumerate(runs):
            if bool(r.get("resume")) != bool(first.get("resume")):
                raise CaeError("%s: resumed and new runs cannot be batched" % r["snapshot_prefix"])
            if r.get("resume"):
                solver.restore(k, r["resume"]["solverstate"], r["resume"]["caffemodel"])
                if solver.iter != r["resume"]["iter"]:
                    raise CaeError("%s: holds iteration %d, expected %d"
                                   % (r["resume"]["solverstate"], solver.iter, r["resume"]["iter"]))
    except CaeError as exc:
        for k in range(len(runs)):
            emit("end", run=k, status="failed", iter=0, message=str(exc))
        emit("batch_end", status="failed")
        return 2
    stop = StopFlag()
    max_iter, display = first["max_iter"], first["display"]
    test_interval, snap_every = first["test_interval"], first["snapshot"]
    K = len(runs)
    sums, count, passes = [{} for _ in runs], [0] * K, [0] * K
    skipped = {}
    if first.get("resume"):
        for k, r in enumerate(runs):
            sums[k] = dict(r["resume"].get("train_sum") or {})
            count[k] = r["resume"].get("train_count") or 0
            passes[k] = r["resume"].get("test_passes") or 0
        skipped["train"] = _skip(solver.net.template, solver.iter, first["train_period"])
        for j, stage in enumerate(first["test_stages"]):
            skipped[stage["name"]] = _skip(solver.test_nets[j].template, passes[0] * stage["iter"], stage["period"])
    alive = list(range(K))
    for k in alive:
        emit("start", run=k, iter=solver.iter, max_iter=max_iter, skipped=skipped, pid=os.getpid(),
             torch_version=torch.__version__, device=str(device), threads=torch.get_num_threads(),
             batched=K)
    failures = {}

    def on_gradients(s):
        for k in alive:
            values = keyed(s.losses[k])
            if not all(math.isfinite(v) for v in values.values()) or not math.isfinite(s.loss[k]):
                found, bad = s.net.first_nonfinite(k)
                failures[k] = dict(iter=s.iter + 1, loss=values, first=found, params=bad)
        return True

    def snapshot(k):
        model, state = solver.snapshot(k, runs[k]["snapshot_prefix"])
        emit("snapshot", run=k, iter=solver.iter, caffemodel=model, solverstate=state, train_sum=sums[k],
             train_count=count[k], test_passes=passes[k])
        return solver.iter

    last_snapshot = solver.iter if first.get("resume") else -1
    last_progress = 0.0
    while solver.iter < max_iter and alive:
        solver.step(1, on_gradients=on_gradients)
        for k, failure in sorted(failures.items()):
            message = nonfinite_message(failure)
            emit("nonfinite", run=k, message=message, **failure)
            emit("end", run=k, status="failed", iter=failure["iter"], message=message)
            alive.remove(k)
            solver.dead.add(k)
        failures.clear()
        it = solver.iter
        now = time.time()
        show = now - last_progress >= 0.25 or it == max_iter
        tests = {}
        if it % test_interval == 0 or it == max_iter:
            for j, stage in enumerate(first["test_stages"]):
                for k in alive:
                    emit("testing", run=k, iter=it, stage=stage["name"], batches=stage["iter"])
                tests[stage["name"]] = solver.test(j, stage["iter"])
        for k in alive:
            values = keyed(solver.losses[k])
            for key, value in values.items():
                sums[k][key] = sums[k].get(key, 0.0) + value
            count[k] += 1
            if show:
                emit("progress", run=k, iter=it, loss=values, time=now)
            if it % display == 0 or it == max_iter:
                emit("log", run=k, iter=it, phase="train", loss=_mean(sums[k], count[k]))
                sums[k], count[k] = {}, 0
            if tests:
                for stage in first["test_stages"]:
                    emit("log", run=k, iter=it, phase=stage["name"], loss=keyed(tests[stage["name"]][k]))
                passes[k] += 1
        if show:
            last_progress = now
        if it % snap_every == 0 or it == max_iter:
            for k in alive:
                snapshot(k)
            last_snapshot = it
        if it < max_iter and (stop.reason or it == first.get("stop_after")):
            for k in alive:
                if last_snapshot != it:
                    snapshot(k)
                emit("end", run=k, status="interrupted", iter=it, reason=stop.reason or "stop_after")
            emit("batch_end", status="interrupted")
            return 0
    for k in alive:
        emit("end", run=k, status="finished", iter=solver.iter)
    emit("batch_end", status="finished" if len(alive) == K else "failed")
    return 0 if len(alive) == K else 3


def main(argv):
    if len(argv) != 3 or argv[1] != "train":
        sys.stderr.write("usage: python -m caffe_cae.backends.torch_batch_worker train JOB_JSON\n")
        return 2
    return train(json.loads(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
