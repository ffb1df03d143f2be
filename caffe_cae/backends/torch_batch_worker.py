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
from then on and never snapshotted again, and the other runs go on. With the deferred check
(:func:`~caffe_cae.backends.torch_worker.deferred`) each run has its own flag on the device.
Exit status 0 when no run failed, 3 when one did, 2 for a bad job.
"""
import os
import sys

from .jobs import main
from .protocol import run_schedule
from .torch_worker import TorchAdapter, _setup, deferred, failed, onednn


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


class BatchAdapter(TorchAdapter):
    """A :class:`~caffe_cae.backends.torch_batch.BatchSolver` of K runs (see :func:`protocol.run_schedule`)."""

    def restore(self, k, solverstate, caffemodel):
        self.solver.restore(k, solverstate, caffemodel)

    def skip(self, index, batches):
        (self.solver.net if index is None else self.solver.test_nets[index]).template.skip_batches(batches)

    def losses(self):
        return self.solver.losses

    def nonfinite(self):
        ok = self.torch.isfinite(self.solver.loss_matrix).all(0).tolist()
        return [k for k, good in enumerate(ok) if not good]

    def test(self, index, batches):
        return self.solver.test(index, batches)

    def snapshot(self, k, prefix):
        return self.solver.snapshot(k, prefix)

    def replay(self, k):
        return self.solver.net.first_nonfinite(k)

    def drop(self, k):
        self.solver.dead.add(k)


def train(job):
    """``job``: {"mode", "runs": [train jobs]}; see :func:`caffe_cae.backends.protocol.run_schedule`."""
    from ..errors import CaeError
    from .torch_batch import BatchSolver
    runs = job["runs"]
    try:
        torch, device = _setup(job["mode"])
        seeds = _check_same(runs)
        solver = BatchSolver(runs[0]["solver"], seeds, cwd=os.getcwd(), device=device, onednn=onednn(),
                             deferred=deferred(device))
    except CaeError as exc:
        return failed(exc, len(runs))
    return run_schedule(BatchAdapter(solver, torch, device), {"runs": runs})


if __name__ == "__main__":
    sys.exit(main(sys.argv, "caffe_cae.backends.torch_batch_worker", {"train": train}))
