"""Throughput of ``grid --batch-runs K``: ms per SGD iteration per run, K runs in one wide net.

    .venv/bin/python bench/batch_runs.py [--nets model4,model2] [--dim 10] [--ks 1,2,4] [--out bench/batch_runs.json]

Run from the directory holding ``data/hdf5`` (``caffe-cae data``). For each net (batch 100):
the single-run TorchSolver ("single") and BatchSolver with K = 1, 2, 4 seeds, each timed for
5 iterations after 2 warm-up ones, 5 repeats taken round-robin over the variants (so a change
in the machine's load hits them alike); medians of wall and CPU (this process) time per
iteration, divided by K. Threads and kernels as the torch worker's (``CAFFE_CAE_TORCH_*``).
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_cae.backends.torch_batch import BatchSolver  # noqa: E402
from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.backends.torch_worker import _setup, onednn  # noqa: E402
from caffe_cae.bench import net_solvers  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="model4,model2")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--ks", default="1,2,4")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default="bench/batch_runs.json")
    args = ap.parse_args()
    torch, device = _setup("cpu")
    ks = [int(k) for k in args.ks.split(",")]
    results = {"threads": torch.get_num_threads(), "onednn": onednn(), "load_before": os.getloadavg(), "nets": {}}
    with tempfile.TemporaryDirectory() as folder:
        for entry in net_solvers(folder, args.nets.split(","), args.dim, "cpu"):
            variants = {"single": TorchSolver(entry["solver"], cwd=os.getcwd(), device=device, seed=1,
                                              test_nets=False, onednn=onednn())}
            for k in ks:
                variants["K=%d" % k] = BatchSolver(entry["solver"], list(range(1, k + 1)), cwd=os.getcwd(),
                                                   device=device, test_nets=False, onednn=onednn())
            times = {name: ([], []) for name in variants}
            for solver in variants.values():
                solver.step(args.warmup)
            for _ in range(args.repeats):
                for name, solver in variants.items():
                    t, c = time.time(), time.process_time()
                    solver.step(args.iters)
                    times[name][0].append((time.time() - t) * 1000.0 / args.iters)
                    times[name][1].append((time.process_time() - c) * 1000.0 / args.iters)
            rows = {}
            for name, (wall, cpu) in times.items():
                k = 1 if name == "single" else int(name[2:])
                wall, cpu = sorted(wall), sorted(cpu)
                rows[name] = {"runs": k, "wall_ms_per_iter": wall[len(wall) // 2], "cpu_ms_per_iter": cpu[len(cpu) // 2],
                              "wall_ms_per_iter_per_run": wall[len(wall) // 2] / k,
                              "cpu_ms_per_iter_per_run": cpu[len(cpu) // 2] / k, "wall_all": wall}
                print("%-8s %-7s wall %7.1f ms/it (%6.1f per run)  cpu %7.1f ms/it (%6.1f per run)"
                      % (entry["name"], name, rows[name]["wall_ms_per_iter"], rows[name]["wall_ms_per_iter_per_run"],
                         rows[name]["cpu_ms_per_iter"], rows[name]["cpu_ms_per_iter_per_run"]), flush=True)
            results["nets"][entry["name"]] = rows
            del variants
    results["load_after"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
