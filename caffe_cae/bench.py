"""The benchmark: ms per SGD iteration of every net in the engine, and the harness's own costs.

``bench()`` works in a temporary directory under /tmp (visible in the engine) and returns
(and writes to ``out`` as JSON) a dict:

- ``nets``: {net: {"ms": median wall ms per iteration, "ms_all": every repeat's, "cpu_ms":
  median CPU ms per iteration of the worker (all its threads), "dim", "batch"}} for ``solver.step`` (forward, backward and update of one batch of 100;
  the HDF5Data read included) at D = 10, after ``warmup`` iterations, ``repeats`` repeats of
  ``iters`` iterations each; Caffe's own test passes and snapshots are off; ``flops`` (one
  iteration, :mod:`caffe_cae.flops`) and ``gflops``; with the torch backend also
  ``peak_gflops`` (a float32 GEMM in the same process), ``peak_percent``, ``plain_ms`` and
  ``plain_ratio`` (the net in plain PyTorch, Models 1-5 and the deep AE) and ``layers``
  (per-layer forward and backward ms), see :mod:`caffe_cae.backends.torch_bench`;
- ``harness``: {name: seconds}: render the paper's grid (both syntaxes), convert MNIST to
  HDF5 (full set, into the temporary directory), start a 1-iteration training run
  (engine start, solver set-up, a test pass of 1 + 100 batches, one snapshot), extract 10000 test codes from it (whole
  command; ``extract_codes_forward`` is the forward passes alone), and, when
  :mod:`caffe_cae.analysis.benchmark` defines ``benchmark()`` (analysis of a synthetic 10000 x 30
  code), its wall time (its full answer under ``analyze``);
- ``conditions``: engine, Caffe version, mode, host, threads, date, git commit.

Limits: wall-clock times on a machine that may be shared; the medians damp but do not
remove that, so the CPU time is given beside it (with ``OPENBLAS_NUM_THREADS=1`` it is the
single-core cost, robust to other load; with more threads it includes their spinning).
The full data conversion writes about 660 MB to /tmp.
"""
import os
import shutil
import sys
import tempfile
import time

from . import data as data_lib
from . import files, render, specs
from .backends import resolve_backend
from .errors import CaeError
from .flops import iteration_flops
from .rundir import ENGINE_LOG, engine_solver_text, git_info, host_info, now_iso
from .train import RunSpec, train

PEAK_SIZE = 2048  # caffe_cae.backends.torch_bench.PEAK_SIZE (not imported: that module needs torch)

BENCH_DIM = 10


def _timed(fn, *args, **kwargs):
    t = time.time()
    value = fn(*args, **kwargs)
    return time.time() - t, value


def net_solvers(folder, nets, dim, mode):
    """Render each net into ``folder``; returns [{name, solver}] with engine solver files."""
    entries = []
    for net in nets:
        overrides = {"solver.solver_mode": mode.upper(), "solver.max_iter": 1000000}
        paths = render.write_files(net, dim, folder, "modern", overrides, net_dir=folder,
                                   snapshot_prefix=os.path.join(folder, net))
        with open(paths["solver"], encoding="utf-8") as f:
            text = engine_solver_text(f.read(), folder, net, dim)
        solver = os.path.join(folder, "%s_d%d_engine_solver.prototxt" % (net, dim))
        files.write_text(solver, text)
        entries.append({"name": net, "solver": solver, "net": paths["train_test"]})
    return entries


def bench(out=None, nets=specs.NETS, mode="cpu", warmup=2, repeats=5, iters=5, harness=True, backend=None,
          stream=None, keep=None):
    """Run the benchmark; see the module docstring. ``keep``: a directory to work in (kept)."""
    stream = stream if stream is not None else sys.stderr
    for name, value in (("warmup", warmup), ("repeats", repeats), ("iters", iters)):
        if value < (0 if name == "warmup" else 1):
            raise CaeError("--%s: expected a positive number, got %d" % (name, value))
    unknown = [n for n in nets if n not in specs.NETS]
    if unknown:
        raise CaeError("--nets: unknown net %s; expected names from %s" % (", ".join(unknown), ", ".join(specs.NETS)))
    if out:
        files.check_writable(out)  # before the work, not after it
    be = resolve_backend(backend)
    info = be.info(mode)
    load_before = list(os.getloadavg())
    work = keep or tempfile.mkdtemp(prefix="caffe-cae-bench-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    results = {"nets": {}, "harness": {}, "settings": {"warmup": warmup, "repeats": repeats, "iters": iters,
                                                         "dim": BENCH_DIM, "batch": 100}}
    try:
        hdf5 = os.path.join(work, "data", "hdf5")
        if harness:
            seconds, _ = _timed(render.render_paper_grid, out=os.path.join(work, "generated"))
            results["harness"]["render_all"] = seconds
            stream.write("bench: render the paper grid (42 nets x 3 files): %.2f s\n" % seconds)
            seconds, _ = _timed(data_lib.convert, out_dir=hdf5, list_prefix="data/hdf5")
            results["harness"]["data_convert"] = seconds
            stream.write("bench: MNIST -> HDF5 (full set): %.2f s\n" % seconds)
        else:
            data_lib.write_tiny(hdf5, n=1000, list_prefix="data/hdf5")
        folder = os.path.join(work, "nets")
        os.makedirs(folder, exist_ok=True)
        entries = net_solvers(folder, nets, BENCH_DIM, mode)
        job = {"mode": mode, "nets": entries, "warmup": warmup, "dim": BENCH_DIM,
               "repeats": repeats, "iters": iters, "stderr_log": os.path.join(work, ENGINE_LOG)}
        net_files = {e["name"]: e["net"] for e in entries}
        for event in be.bench(job, work).events():
            if event["event"] == "result":
                entry = results["nets"][event["net"]] = _net_result(event, net_files[event["net"]])
                stream.write("bench: %-8s %8.1f ms/iteration (CPU time %.1f ms)%s\n"
                             % (event["net"], event["ms"], event.get("cpu_ms") or 0, _against(entry)))
                stream.flush()
        if harness:
            _harness_run(be, work, mode, results, stream)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["conditions"] = {"backend": info["backend"], "engine": info["engine"],
                             "caffe_version": info["caffe_version"], "mode": mode, "host": host_info(),
                             "date": now_iso(), "git": git_info(), "load_before": load_before,
                             "load_after": list(os.getloadavg())}
    if out:
        files.write_json(out, results, sort_keys=True)
    return results


#: fields of a worker's result event kept in the results (the torch worker's beyond ms and cpu_ms)
_KEPT = ("ms", "ms_all", "cpu_ms", "peak_gflops", "peak_gflops_all", "plain_ms", "plain_ms_all", "plain_cpu_ms",
         "layers", "threads")


def _net_result(event, net_file):
    """A net's entry of the results: the worker's timings, the FLOPs of one iteration
    (:mod:`caffe_cae.flops`), GFLOP/s, the share of the measured peak and the plain-PyTorch ratio."""
    r = {k: event[k] for k in _KEPT if event.get(k) is not None}
    counted = iteration_flops(net_file, batch=100)
    r.update(dim=BENCH_DIM, batch=100, flops=counted["total"], forward_flops=counted["forward"])
    r["gflops"] = counted["total"] / r["ms"] / 1e6
    if r.get("peak_gflops"):
        r["peak_percent"] = 100.0 * r["gflops"] / r["peak_gflops"]
    if r.get("plain_ms"):
        r["plain_ratio"] = r["plain_ms"] / r["ms"]
    for layer in r.get("layers", []):
        for f in counted["layers"]:
            if f["name"] == layer["name"]:
                layer.update(forward_flops=f["forward"], backward_flops=f["backward"])
    return r


def _against(r):
    """`` = G GFLOP/s, P % of the peak, Rx plain PyTorch`` where measured."""
    text = ", %.1f GFLOP/s" % r["gflops"]
    if "peak_percent" in r:
        text += " = %.0f %% of the %.0f GFLOP/s GEMM peak" % (r["peak_percent"], r["peak_gflops"])
    if "plain_ratio" in r:
        text += ", %.2fx plain PyTorch (%.1f ms)" % (r["plain_ratio"], r["plain_ms"])
    return text


def _harness_run(be, work, mode, results, stream):
    from .extract import extract

    run_dir = os.path.join(work, "run_model3_d10")
    quiet = open(os.devnull, "w")
    try:
        # the end-of-run test covers 1 training batch (not 600) and the whole test set,
        # so that extraction below computes the test stage's losses over all 10000 images
        spec = RunSpec(net="model3", dim=BENCH_DIM, mode=mode, iters=1, seed=1, out=run_dir,
                       overrides={"data.train_size": 100}, data_root=work, backend=be)
        seconds, _ = _timed(train, spec, stream=quiet, tty=False, handle_signals=False)
        results["harness"]["train_1_iteration_run"] = seconds
        stream.write("bench: a 1-iteration training run (model3 D=10: engine start, set-up, 101 test batches, "
                     "snapshot): %.2f s\n" % seconds)
        seconds, result = _timed(extract, run_dir, "test", backend=be, stream=quiet)
    finally:
        quiet.close()
    results["harness"]["extract_10000_codes"] = seconds
    results["harness"]["extract_codes_forward"] = result.get("codes_seconds")
    stream.write("bench: extract %d codes (model3 D=10; whole command): %.2f s (forward passes %.2f s)\n"
                 % (result["n"], seconds, result.get("codes_seconds") or 0))
    _analyze_hook(results, stream)


def _analyze_hook(results, stream):
    """``caffe_cae.analysis.benchmark.benchmark()``: the analysis of a synthetic 10000 x 30 code."""
    from .analysis.benchmark import benchmark as hook

    try:
        timings = hook() or {}
    except Exception as exc:  # a failing hook must not lose the measurements made so far
        stream.write("bench: caffe_cae.analysis.benchmark() failed: %s\n" % exc)
        results["harness"]["analyze_error"] = str(exc)
        return
    results["analyze"] = timings
    label = "analyze_%sx%s_code" % (timings.get("n"), timings.get("dim"))
    results["harness"][label] = timings.get("wall_seconds")
    stream.write("bench: analyze a %s x %s code (all stages): %.2f s\n"
                 % (timings.get("n"), timings.get("dim"), timings.get("wall_seconds") or 0))


def table(results):
    """The results as a Markdown table (nets, then harness costs)."""
    cond = results.get("conditions", {})
    lines = ["| Net (D=%d, batch 100) | ms per SGD iteration (wall, median) | CPU ms per iteration (median) "
             "| GFLOP per iteration | GFLOP/s | fp32 GEMM peak GFLOP/s | %% of peak | plain PyTorch ms "
             "| x faster than plain PyTorch |" % results["settings"]["dim"], "|---" * 9 + "|"]
    for net in specs.NETS:
        if net in results["nets"]:
            r = results["nets"][net]
            lines.append("| %s | %.1f | %s | %s | %s | %s | %s | %s | %s |" % (
                net, r["ms"], _num(r.get("cpu_ms")), _num(r.get("flops", 0) / 1e9 or None, "%.2f"),
                _num(r.get("gflops")), _num(r.get("peak_gflops")), _num(r.get("peak_percent")),
                _num(r.get("plain_ms")), _num(r.get("plain_ratio"), "%.2fx")))
    harness = [(k, v) for k, v in results["harness"].items() if isinstance(v, (int, float))]
    if harness:
        lines += ["", "| Harness step | seconds |", "|---|---|"]
        lines += ["| %s | %.2f |" % (name, seconds) for name, seconds in harness]
    if any("peak_gflops" in r for r in results["nets"].values()):
        lines += ["", "FLOPs counted from the parsed net (caffe_cae/flops.py: conv, deconv and fully-connected "
                  "multiply-adds, backward 2x forward, 1x for a layer reading the data); peak = median float32 "
                  "%d x %d GEMM in the same process and threads, taken in turn with the net and plain PyTorch "
                  "(caffe_cae/backends/torch_plain.py), round by round." % (PEAK_SIZE, PEAK_SIZE)]
    load = cond.get("load_before") or [None]
    lines += ["", "Conditions: %s engine, Caffe %s, %s, %s (%s CPUs), load average %s at the start, %s." % (
        cond.get("engine"), cond.get("caffe_version"), str(cond.get("mode", "")).upper(),
        (cond.get("host") or {}).get("cpu"), (cond.get("host") or {}).get("cpus"),
        "%.1f" % load[0] if load[0] is not None else "n/a", cond.get("date"))]
    return "\n".join(lines)


def _num(value, fmt="%.1f"):
    return fmt % value if value is not None else "n/a"


def layer_table(results, net):
    """Per-layer forward and backward ms of one net (the torch backend's results), as Markdown."""
    r = results["nets"][net]
    lines = ["| %s layer | type | forward ms | backward ms | GFLOP fwd + bwd |" % net, "|---|---|---|---|---|"]
    for layer in r.get("layers", []):
        flops = layer.get("forward_flops", 0) + layer.get("backward_flops", 0)
        lines.append("| %s | %s | %.2f | %.2f | %s |" % (layer["name"], layer["type"], layer["forward_ms"],
                                                        layer["backward_ms"], "%.3f" % (flops / 1e9) if flops else ""))
    return "\n".join(lines)


def compare_table(by_backend):
    """One Markdown table of several backends' results ({backend: bench() result}): ms per
    iteration (wall and CPU) per net, and the speed-up of each backend over the first."""
    names = list(by_backend)
    first = names[0]
    head = "| Net (D=%d, batch 100) |" % next(iter(by_backend.values()))["settings"]["dim"]
    head += "".join(" %s ms (wall) | %s CPU ms |" % (b, b) for b in names)
    head += "".join(" %s speed-up (wall, CPU) |" % b for b in names[1:])
    lines = [head, "|---" * (1 + 2 * len(names) + len(names) - 1) + "|"]
    for net in specs.NETS:
        rows = [by_backend[b]["nets"].get(net) for b in names]
        if any(r is None for r in rows):
            continue
        cells = ["%.1f | %s" % (r["ms"], "%.1f" % r["cpu_ms"] if r.get("cpu_ms") is not None else "n/a")
                 for r in rows]
        ups = []
        for r in rows[1:]:
            cpu = ("%.2fx" % (rows[0]["cpu_ms"] / r["cpu_ms"])) if r.get("cpu_ms") and rows[0].get("cpu_ms") else "n/a"
            ups.append("%.2fx, %s" % (rows[0]["ms"] / r["ms"], cpu))
        lines.append("| %s | %s |%s" % (net, " | ".join(cells), "".join(" %s |" % u for u in ups)))
    loads = ", ".join("%s %s" % (b, "%.1f" % ((by_backend[b].get("conditions") or {}).get("load_before") or [0])[0])
                      for b in names)
    lines += ["", "Speed-up = %s time / backend time. Load average at the start: %s." % (first, loads)]
    return "\n".join(lines)

