"""Two speed levers of the torch backend measured side by side: ``torch.compile`` and batched
formulations of the single-map layers.

    .venv/bin/python bench/levers.py [--nets model4] [--dim 10] [--out FILE]

Run from the directory holding ``data/hdf5`` (``caffe-cae data``), on the CPU, with the
worker's threads (``CAFFE_CAE_TORCH_THREADS`` / ``OMP_NUM_THREADS``). For each net (batch 100):

- ``compile``: four SGD solvers stepped in turn, round by round, each first in turn (a change
  in the machine's load hits all four alike): the torch backend as it is; the same with each
  layer's forward pass (all but the data and loss layers) under ``torch.compile`` (the
  Caffe-exact autograd kernels stay opaque to it; the loss layers recompile on every Python
  float they return); the plain-PyTorch peer (:mod:`caffe_cae.backends.torch_plain`); and
  the peer's whole module under ``torch.compile`` (inductor). Medians of wall and CPU
  (this process) ms per iteration, and the largest weight difference between the compiled
  and the eager backend after the same iterations (the numerics).
- ``kernels`` (nets with a 1 -> 26 map ``conv1`` and a 26 -> 1 map ``deconv1neur``, Models
  2-5): the forward pass of each as the backend computes it, against oneDNN and a batched
  GEMM over all images (one strided im2col view for ``conv1``; one GEMM and ``F.fold`` for
  ``deconv1neur``), on random inputs: CPU ms (median of 5 blocks of 20) and whether the
  result is bitwise the backend's.
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_cae.backends.torch_kernels import _CaffeConv  # noqa: E402
from caffe_cae.backends.torch_layers import HDF5DataLayer  # noqa: E402
from caffe_cae.backends.torch_plain import PlainTrainer  # noqa: E402
from caffe_cae.backends.torch_solver import TorchSolver  # noqa: E402
from caffe_cae.backends.torch_worker import _setup, onednn  # noqa: E402
from caffe_cae.bench import net_solvers  # noqa: E402


def _median(values):
    return sorted(values)[len(values) // 2]


def compile_rows(torch, entry, dim, warmup, repeats, iters):
    """{variant: {wall_ms, cpu_ms}} and the compiled backend's largest weight difference."""
    def solver():
        return TorchSolver(entry["solver"], cwd=os.getcwd(), device=torch.device("cpu"), seed=1,
                           test_nets=False, onednn=onednn())

    eager, compiled = solver(), solver()
    for layer in compiled.net.layers:
        if not isinstance(layer, HDF5DataLayer) and "Loss" not in layer.type:
            layer.forward = torch.compile(layer.forward, dynamic=False)
    started = time.perf_counter()
    eager.step(warmup)
    compiled.step(warmup)
    x = eager.net.blobs["data"].detach().clone()  # the peer's batch (its speed does not depend on it)
    plain, plain_compiled = PlainTrainer(entry["name"], dim, x), PlainTrainer(entry["name"], dim, x)
    plain_compiled.model = torch.compile(plain_compiled.model)
    plain.step(warmup)
    plain_compiled.step(warmup)
    variants = {"backend": eager.step, "backend, per-layer torch.compile": compiled.step,
                "plain PyTorch": plain.step, "plain PyTorch, torch.compile": plain_compiled.step}
    print("%-8s warm-up and compilation: %.0f s" % (entry["name"], time.perf_counter() - started), flush=True)
    times = {name: ([], []) for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, c = time.perf_counter(), time.process_time()
            variants[name](iters)
            times[name][0].append((time.perf_counter() - t) * 1000.0 / iters)
            times[name][1].append((time.process_time() - c) * 1000.0 / iters)
    rows = {name: {"wall_ms": _median(w), "cpu_ms": _median(c), "cpu_all": sorted(c)} for name, (w, c) in times.items()}
    diff = max(float(abs(a - b).max()) for (_, blobs_a), (_, blobs_b)
               in zip(eager.net.get_weights(), compiled.net.get_weights()) for a, b in zip(blobs_a, blobs_b))
    return rows, diff


def kernel_rows(torch, blocks=5, per=20):
    """{layer: {formulation: {cpu_ms, bitwise}}} for conv1 (1 -> 26) and deconv1neur (26 -> 1)."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(100, 1, 28, 28, generator=gen), torch.rand(100, 26, 24, 24, generator=gen)
    w1, w2 = torch.randn(26, 1, 5, 5, generator=gen) * 0.2, torch.randn(26, 1, 5, 5, generator=gen) * 0.2
    b1, b2 = torch.randn(26, generator=gen), torch.randn(1, generator=gen)
    one = (1, 1), (0, 0), (1, 1), 1

    def conv1_batched():
        cols = x1.view(100, 28, 28).as_strided((100, 5, 5, 24, 24), (784, 28, 1, 28, 1)).reshape(100, 25, 576)
        return torch.baddbmm(b1.view(1, 26, 1).expand(100, 26, 576), w1.view(1, 26, 25).expand(100, 26, 25),
                             cols).view(100, 26, 24, 24)

    def deconv1neur_batched():
        cols = torch.matmul(w2.view(26, 25).t(), x2.view(100, 26, 576))
        return F.fold(cols, (28, 28), 5) + b2.view(1, 1, 1, 1)

    layers = {
        "conv1 forward (1 -> 26 maps)": {
            "backend": lambda: _CaffeConv.apply(x1, w1, b1, *one, False, onednn()),
            "oneDNN": lambda: F.conv2d(x1, w1, b1),
            "batched GEMM": conv1_batched},
        "deconv1neur forward (26 -> 1 map)": {
            "backend": lambda: _CaffeConv.apply(x2, w2, b2, *one, True, onednn()),
            "oneDNN (adjoint convolution)": lambda: F.conv2d(x2, w2.flip(2, 3).transpose(0, 1), b2, 1, 4),
            "batched GEMM + fold": deconv1neur_batched},
    }
    rows = {}
    with torch.no_grad():
        for layer, forms in layers.items():
            reference = forms["backend"]()
            rows[layer] = {}
            for name, fn in forms.items():
                fn()
                spent = []
                for _ in range(blocks):
                    c = time.process_time()
                    for _ in range(per):
                        fn()
                    spent.append((time.process_time() - c) * 1000.0 / per)
                rows[layer][name] = {"cpu_ms": _median(spent), "bitwise": bool(torch.equal(fn(), reference))}
                print("%-36s %-30s cpu %6.2f ms  bitwise the backend's: %s"
                      % (layer, name, rows[layer][name]["cpu_ms"], rows[layer][name]["bitwise"]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="model4")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch, _ = _setup("cpu")
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "load_before": os.getloadavg(),
               "nets": {}}
    with tempfile.TemporaryDirectory() as folder:
        for entry in net_solvers(folder, args.nets.split(","), args.dim, "cpu"):
            rows, diff = compile_rows(torch, entry, args.dim, args.warmup, args.repeats, args.iters)
            for name, row in rows.items():
                print("%-8s %-36s wall %7.2f  cpu %7.2f ms/it" % (entry["name"], name, row["wall_ms"], row["cpu_ms"]),
                      flush=True)
            print("%-8s compiled backend's largest weight difference after the same iterations: %.3g"
                  % (entry["name"], diff), flush=True)
            results["nets"][entry["name"]] = {"compile": rows, "compiled_weight_diff": diff}
    results["kernels"] = kernel_rows(torch)
    results["load_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
