"""Cost of the non-finite check per SGD iteration: eager (one read per iteration) against
deferred (flags and masked update on the device), and no check at all.

    .venv/bin/python bench/sync_modes.py [--nets model4] [--dim 10] [--mode cpu|gpu] [--out FILE]

Run from the directory holding ``data/hdf5`` (``caffe-cae data``). For each net (batch 100),
three single-run TorchSolvers of seed 1 are stepped one iteration at a time, as the training
loop steps them: "none" (no check), "eager" (the worker's check before each update:
``TorchAdapter.nonfinite``) and "deferred" (``TorchSolver(deferred=True)``); each timed for
``iters`` iterations after ``warmup``, ``repeats`` rounds taken in turn, each variant first
in turn (a change in the machine's load hits all three alike); medians of wall and CPU (this process) ms per
iteration. On a CUDA device the clock stops after a synchronisation at the end of each
timed block. Threads and kernels as the torch worker's (``CAFFE_CAE_TORCH_*``).
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.backends.torch_worker import TorchAdapter, _setup, onednn  # noqa: E402
from caffe_cae.bench import net_solvers  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="model4")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--mode", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch, device = _setup(args.mode)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {"threads": torch.get_num_threads(), "device": str(device), "load_before": os.getloadavg(), "nets": {}}
    with tempfile.TemporaryDirectory() as folder:
        for entry in net_solvers(folder, args.nets.split(","), args.dim, args.mode):
            def make(deferred):
                return TorchSolver(entry["solver"], cwd=os.getcwd(), device=device, seed=1, test_nets=False,
                                   onednn=onednn(), deferred=deferred)

            eager = TorchAdapter(make(False), torch, device)
            variants = {
                "none": (make(False), None),
                "eager": (eager.solver, lambda *_: not eager.nonfinite()),
                "deferred": (make(True), None),
            }
            times = {name: ([], []) for name in variants}
            for solver, check in variants.values():
                for _ in range(args.warmup):
                    solver.step(1, on_gradients=check)
            names = list(variants)
            for r in range(args.repeats):
                for name in names[r % 3:] + names[:r % 3]:  # each first in turn
                    solver, check = variants[name]
                    sync()
                    t, c = time.perf_counter(), time.process_time()
                    for _ in range(args.iters):
                        solver.step(1, on_gradients=check)
                    sync()
                    times[name][0].append((time.perf_counter() - t) * 1000.0 / args.iters)
                    times[name][1].append((time.process_time() - c) * 1000.0 / args.iters)
            rows = {}
            for name, (wall, cpu) in times.items():
                wall, cpu = sorted(wall), sorted(cpu)
                rows[name] = {"wall_ms_per_iter": wall[len(wall) // 2], "cpu_ms_per_iter": cpu[len(cpu) // 2],
                              "wall_all": wall}
                print("%-8s %-9s wall %7.2f ms/it  cpu %7.2f ms/it"
                      % (entry["name"], name, rows[name]["wall_ms_per_iter"], rows[name]["cpu_ms_per_iter"]), flush=True)
            results["nets"][entry["name"]] = rows
    results["load_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
