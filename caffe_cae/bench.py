"""The benchmark: ms per SGD iteration of every net in the engine, and the harness's own costs.

``bench()`` works in a temporary directory under /tmp (visible in the engine) and returns
(and writes to ``out`` as JSON) a dict:

- ``nets``: {net: {"ms": median wall ms per iteration, "ms_all": every repeat's, "cpu_ms":
  median CPU ms per iteration of the worker (all its threads), "dim", "batch"}} for ``solver.step`` (forward, backward and update of one batch of 100;
  the HDF5Data read included) at D = 10, after ``warmup`` iterations, ``repeats`` repeats of
  ``iters`` iterations each; Caffe's own test passes and snapshots are off;
- ``harness``: {name: seconds}: render the paper's grid (both syntaxes), convert MNIST to
  HDF5 (full set, into the temporary directory), start a 1-iteration training run
  (engine start, solver set-up, a test pass of 1 + 100 batches, one snapshot), extract 10000 test codes from it (whole
  command; ``extract_codes_forward`` is the forward passes alone), and, when
  :mod:`caffe_cae.analyze` defines ``benchmark()`` (analysis of a synthetic 10000 x 30
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
from .errors import CaeError
from .train import engine_solver_text, git_info, host_info, now_iso, resolve_backend, write_json

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
        entries.append({"name": net, "solver": solver})
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
        job = {"mode": mode, "nets": net_solvers(folder, nets, BENCH_DIM, mode), "warmup": warmup,
               "repeats": repeats, "iters": iters, "stderr_log": os.path.join(work, "engine.log")}
        for event in be.bench(job, work).events():
            if event["event"] == "result":
                results["nets"][event["net"]] = {"ms": event["ms"], "ms_all": event["ms_all"],
                                                 "cpu_ms": event.get("cpu_ms"), "dim": BENCH_DIM, "batch": 100}
                stream.write("bench: %-8s %8.1f ms/iteration (CPU time %.1f ms)\n"
                             % (event["net"], event["ms"], event.get("cpu_ms") or 0))
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
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        write_json(out, results)
    return results


def _harness_run(be, work, mode, results, stream):
    from .extract import extract
    from .train import train

    run_dir = os.path.join(work, "run_model3_d10")
    quiet = open(os.devnull, "w")
    try:
        # the end-of-run test covers 1 training batch (not 600) and the whole test set,
        # so that extraction below computes the test stage's losses over all 10000 images
        seconds, _ = _timed(train, net="model3", dim=BENCH_DIM, mode=mode, iters=1, seed=1, out=run_dir,
                            overrides={"data.train_size": 100}, data_root=work, backend=be, stream=quiet,
                            tty=False, handle_signals=False)
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
    """``caffe_cae.analyze.benchmark()`` (10000 x 30 synthetic code) when it exists."""
    try:
        from .analysis import benchmark as analyze
    except ImportError:
        return
    hook = getattr(analyze, "benchmark", None)
    if not callable(hook):
        return
    try:
        timings = hook() or {}
    except Exception as exc:  # a failing hook must not lose the measurements made so far
        stream.write("bench: caffe_cae.analyze.benchmark() failed: %s\n" % exc)
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
             "| wall ms of each repeat |" % results["settings"]["dim"], "|---|---|---|---|"]
    for net in specs.NETS:
        if net in results["nets"]:
            r = results["nets"][net]
            cpu = "%.1f" % r["cpu_ms"] if r.get("cpu_ms") is not None else "n/a"
            lines.append("| %s | %.1f | %s | %s |" % (net, r["ms"], cpu, ", ".join("%.1f" % x for x in r["ms_all"])))
    harness = [(k, v) for k, v in results["harness"].items() if isinstance(v, (int, float))]
    if harness:
        lines += ["", "| Harness step | seconds |", "|---|---|"]
        lines += ["| %s | %.2f |" % (name, seconds) for name, seconds in harness]
    load = cond.get("load_before") or [None]
    lines += ["", "Conditions: %s engine, Caffe %s, %s, %s (%s CPUs), load average %s at the start, %s." % (
        cond.get("engine"), cond.get("caffe_version"), str(cond.get("mode", "")).upper(),
        (cond.get("host") or {}).get("cpu"), (cond.get("host") or {}).get("cpus"),
        "%.1f" % load[0] if load[0] is not None else "n/a", cond.get("date"))]
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

