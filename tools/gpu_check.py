"""One short, prepared check of the torch backend on a lent GPU machine (issues 14 and 16).

    .venv/bin/python tools/gpu_check.py prepare [--nets all] [--iters 100] [--out .gpucheck]   # here
    tools/gpu_check.sh [--budget 420] [--steps ...]       # there, from the repository root (docs/torch-backend.md)
    tools/gpu_check.sh --device cpu --tiny --out DIR       # the same on this CPU, small (tests/test_gpu_check.py)

``prepare`` (needs the Caffe engine): the real Caffe computes the references of the torch
equality tests (tests/torch_equality_support.py: tiny data, initial weights, first-batch
forward blobs and parameter gradients, the SGD loss curves and weights) and they are kept
compactly in OUT/refs (arrays over 8192 values sampled, see ``sample`` there); the protobuf
wheel of this environment goes to OUT/wheels (tools/gpu_check.sh installs it where the
machine's protobuf is older than the package needs).

``check`` runs these steps, each timed and each allowed to fail without stopping the others,
and rewrites OUT/gpu_check.json after each:

- ``facts``: nvidia-smi, torch, CUDA, cuDNN, the device, its TF32 settings;
- ``data``: ``caffe-cae data`` (MNIST -> HDF5) from the repository's data/mnist into WORK;
- ``equality``: the torch backend on the device against Caffe's references, the tests'
  measures and tolerances (1e-5 forward and gradients; the 100-iteration bounds); on CUDA
  also with TF32 off (PyTorch lets cuDNN use TF32 by default);
- ``bench``: ``caffe-cae bench --backend torch --no-harness`` (D = 10) into OUT/bench.json;
- ``throughput``: Model 4 D = 10 trained by ``caffe-cae train`` with K runs batched
  (``--batch``, what ``grid --batch-runs K`` runs) in J processes at once: runs x iterations
  per second (from the times the log lines arrive: the start-up and the end-of-run test pass
  measured apart) and the projected time of the 63 x 50000 grid;
- ``long``: one Model 4 D = 10 run of 50000 iterations, or as many as the budget leaves,
  its losses beside the paper's (OUT/long_log.jsonl, OUT/long_manifest.json).
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from caffe_cae import files, paper  # noqa: E402
from caffe_cae.errors import CaeError  # noqa: E402
from caffe_cae.rundir import git_info, now_iso  # noqa: E402

import torch_equality_support as eq  # noqa: E402

#: the grid of Table 4: 7 nets x 3 code sizes x 3 seeds, 50000 iterations, a test pass every 5000
GRID_RUNS, GRID_ITERS, TEST_EVERY = 63, 50000, 5000
#: sizes of the steps: on the GPU, and --tiny (a CPU test)
#: (configs: (K runs batched per process, J processes at once); J = 7 runs the grid's 21 (net, D) in 3 waves)
SIZES = {"full": {"bench": ["--nets", "all"], "configs": [(1, 1), (3, 1), (3, 7)], "tp_iters": 1000,
                  "tp_seconds": 90, "display": 100, "long": GRID_ITERS, "sets": []},
         "tiny": {"bench": ["--nets", "model4", "--warmup", "1", "--repeats", "1", "--iters", "1",
                            "--layer-table", "none"],
                  "configs": [(2, 2)], "tp_iters": 6, "tp_seconds": 300, "display": 2, "long": 8,
                  "sets": ["data.train_size=200", "data.test_size=200"]}}
STEPS = ("facts", "data", "equality", "bench", "throughput", "long")
LINE = re.compile(r" iter (\d+)/\d+ (train|test-on-train|test-on-test) (.*)$")


def say(text):
    print("gpu_check %s %s" % (time.strftime("%H:%M:%S"), text), flush=True)


# ----------------------------------------------------------------------------- prepare (here)

def prepare(args):
    from caffe_cae.engine import get_engine
    eng = get_engine(build=False)
    keys = eq.KEYS if args.nets == "all" else [k.strip() for k in args.nets.split(",") if k.strip()]
    bad = [k for k in keys if k not in eq.KEYS]
    if bad:
        raise CaeError("--nets %s: expected all or a comma list of %s" % (",".join(bad), ", ".join(eq.KEYS)))
    refs = os.path.join(args.out, "refs")
    shutil.rmtree(refs, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir="/tmp") as work:  # /tmp: seen by the engine
        cases = eq.make_cases(work, keys, args.iters)
        say("Caffe computes the references of %s (%d SGD iterations)" % (", ".join(keys), args.iters))
        report = eq.run_caffe(eng, work, eq.caffe_tasks(cases), "caffe")
        size = eq.compact(work, cases, refs)
    files.write_json(os.path.join(refs, "manifest.json"),
                     {"keys": keys, "iters": args.iters, "sample": eq.SAMPLE, "created": now_iso(), "git": git_info(),
                      "engine": {"kind": eng.kind, "location": eng.location}, "caffe_seconds": report["seconds"]},
                     sort_keys=True)
    if args.wheel:
        from importlib.metadata import version
        wheels = os.path.join(args.out, "wheels")
        shutil.rmtree(wheels, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "-d", wheels,
                        "protobuf==%s" % version("protobuf")], check=True)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.out) for f in fs)
    say("references %.1f MiB; %s in all %.1f MiB (carry it: .gpucheck)" % (size / 2 ** 20, args.out, total / 2 ** 20))


# ----------------------------------------------------------------------------- the steps (there)

def facts(ctx):
    import h5py
    import numpy
    import torch
    smi = shutil.which("nvidia-smi")
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
           "cpus": os.cpu_count(), "git": git_info(), "refs": ctx["refs_manifest"],
           "cuda_available": torch.cuda.is_available()}
    if smi:
        out["nvidia_smi"] = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                            "power.limit", "--format=csv"], stdout=subprocess.PIPE,
                                           universal_newlines=True, timeout=30).stdout.strip().splitlines()
    if ctx["device"] == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, capability="%d.%d" % (p.major, p.minor), multiprocessors=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2 ** 30, 1), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   float32_matmul_precision=torch.get_float32_matmul_precision())
    return out


def cae(ctx, *argv, timeout=None):
    """``caffe-cae ARGV`` in WORK; its output into the log; CaeError on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "caffe_cae"] + list(argv), cwd=ctx["work"], env=ctx["env"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    sys.stdout.write(proc.stdout)
    if proc.returncode:
        raise CaeError("caffe-cae %s exited %d: %s" % (argv[0], proc.returncode, proc.stdout.strip()[-500:]))
    return proc.stdout


def data(ctx):
    mnist = os.path.join(REPO, "data", "mnist")
    cae(ctx, "data", "--mnist-dir", mnist, "--out", "data/hdf5", timeout=300)
    return {"mnist_gz_mib": round(sum(os.path.getsize(os.path.join(mnist, f)) for f in os.listdir(mnist)) / 2 ** 20, 1)}


def equality(ctx):
    import torch
    manifest = ctx["refs_manifest"]
    variants = [("default", True)] + ([("tf32_off", False)] if ctx["device"] == "cuda" else [])
    out = {"passed": None, "iters": manifest["iters"]}
    for name, tf32 in variants:
        if tf32 is False and ctx["left"]() < 300:
            out[name] = {"skipped": "budget"}
            continue
        if tf32 is False:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        work = os.path.join(ctx["work"], "equality_" + name)
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ctx["refs"], work)
        cases = eq.make_cases(work, manifest["keys"], manifest["iters"])
        res = out[name] = {}
        for key, case in cases.items():
            checks = [("forward", eq.forward_check)] if key != "variant" else []
            checks += [("sgd", eq.sgd_check)] + ([("model5_first", eq.model5_first_check)] if key == "model5" else [])
            for check, fn in checks:
                t = time.time()
                try:
                    r = fn(case, work, device=ctx["device"])
                except Exception as exc:  # a failing check is a result, the others still run
                    r = {"failed": ["error: %s" % exc], "traceback": traceback.format_exc()[-2000:]}
                r["seconds"] = round(time.time() - t, 2)
                res.setdefault(key, {})[check] = r
                say("equality %s %s %s: %s" % (name, key, check, "ok" if not r["failed"] else r["failed"]))
                ctx["save"]()
        res["passed"] = not any(r["failed"] for checks in res.values() for r in checks.values())
        out["passed"] = res["passed"] if name == "default" else out["passed"]
    return out


def bench(ctx):
    path = os.path.join(ctx["out"], "bench.json")
    cae(ctx, "bench", "--backend", "torch", "--mode", ctx["mode"], "--no-harness", "--out", path,
        *ctx["sizes"]["bench"], timeout=max(30, min(240, ctx["left"]() - 60)))
    with open(path) as f:
        nets = json.load(f)["nets"]
    keep = ("ms", "gflops", "peak_gflops", "peak_percent", "plain_ms", "plain_ratio")
    return {net: {k: round(v[k], 3) for k in keep if k in v} for net, v in nets.items()}


def train_argv(ctx, runs, iters):
    """``caffe-cae train`` of Model 4 D = 10 for [(seed, dir)]: one run, or K batched."""
    argv = ["train", "--net", "model4", "--dim", "10", "--backend", "torch", "--mode", ctx["mode"], "--iters",
            str(iters), "--set", "solver.display=%d" % ctx["sizes"]["display"]]
    for s in ctx["sizes"]["sets"]:
        argv += ["--set", s]
    if len(runs) == 1:
        return argv + ["--seed", str(runs[0][0]), "--out", runs[0][1]]
    return argv + [a for seed, d in runs for a in ("--batch", "%d:%s" % (seed, d))]


def start_timed(ctx, argv, tag, threads=None):
    """Start ``caffe-cae ARGV``; a thread keeps (seconds since start, iteration, phase) of each log line."""
    env = dict(ctx["env"], OMP_NUM_THREADS=str(threads)) if threads else ctx["env"]
    proc = subprocess.Popen([sys.executable, "-m", "caffe_cae"] + argv, cwd=ctx["work"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    proc.t0, proc.marks = time.time(), []

    def read():
        for line in proc.stdout:
            sys.stdout.write("[%s] %s" % (tag, line))
            m = LINE.search(line.rstrip())
            if m:
                proc.marks.append((time.time() - proc.t0, int(m.group(1)), m.group(2)))
    proc.reader = threading.Thread(target=read, daemon=True)
    proc.reader.start()
    return proc


def finish(proc, timeout):
    """Wait (SIGTERM at ``timeout``: train snapshots and stops); the timings of the process."""
    try:
        proc.wait(timeout=max(1, timeout))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    proc.reader.join(10)
    wall = time.time() - proc.t0
    train = [(t, it) for t, it, phase in proc.marks if phase == "train"]
    r = {"exit": proc.returncode, "wall_s": round(wall, 2)}
    if len(train) >= 2 and train[-1][1] > train[0][1] and train[-1][0] > train[0][0]:
        rate = (train[-1][1] - train[0][1]) / (train[-1][0] - train[0][0])
        tests = [t for t, _, phase in proc.marks if phase != "train" and t > train[-1][0]]
        r.update(it_per_s=round(rate, 2), startup_s=round(max(0.0, train[0][0] - train[0][1] / rate), 2),
                 test_pass_s=round(max(tests) - train[-1][0], 2) if tests else None, iterations=train[-1][1],
                 span=[proc.t0 + train[0][0], proc.t0 + train[-1][0], train[-1][1] - train[0][1]])
    return r


def throughput(ctx):
    sizes, out = ctx["sizes"], {}
    for k, jobs in sizes["configs"]:
        name = "K%d_J%d" % (k, jobs)
        if ctx["left"]() < 120 and not ctx["tiny"]:
            out[name] = {"skipped": "budget"}
            continue
        base = os.path.join("runs", "tp_" + name)
        shutil.rmtree(os.path.join(ctx["work"], base), ignore_errors=True)
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None  # as grid --jobs J
        procs = [start_timed(ctx, train_argv(ctx, [(1 + s, os.path.join(base, "p%d_run%d" % (j, 1 + s)))
                                                   for s in range(k)], sizes["tp_iters"]), "%s p%d" % (name, j),
                             threads) for j in range(jobs)]
        limit = min(ctx["left"]() - 60, sizes["tp_seconds"])  # then SIGTERM: the rate is still measured
        each = [finish(p, limit - (time.time() - p.t0)) for p in procs]
        rates = [e.get("it_per_s") for e in each]
        r = out[name] = {"runs_per_process": k, "processes": jobs, "iters": sizes["tp_iters"], "each": each}
        if all(rates):
            # runs x iterations per second, all processes together: the sum of their rates, or (less where
            # they did not run side by side all along) the iterations over the span of all their displays
            spans = [e.pop("span") for e in each]
            together = sum(s[2] for s in spans) / (max(s[1] for s in spans) - min(s[0] for s in spans))
            per_run_it_s = k * min(sum(rates), together)
            processes = math.ceil(GRID_RUNS / 3) * math.ceil(3 / k)  # 21 (net, D) of 3 seeds, K at a time
            train_s = GRID_RUNS * GRID_ITERS / per_run_it_s
            # each wave of J processes adds its start and its test passes (every 5000 iterations)
            extra = max(e["startup_s"] for e in each) + GRID_ITERS // TEST_EVERY * max(e["test_pass_s"] or 0
                                                                                        for e in each)
            r.update(run_iters_per_s=round(per_run_it_s, 1), grid_train_only_h=round(train_s / 3600, 2),
                     grid_with_starts_and_tests_h=round((train_s + math.ceil(processes / jobs) * extra) / 3600, 2))
        say("throughput %s: %s" % (name, {k2: v for k2, v in r.items() if k2 != "each"}))
        ctx["save"]()
    return out


def long_run(ctx):
    one = ctx["results"]["steps"].get("throughput", {}).get("result", {}).get("K1_J1", {}).get("each", [{}])[0]
    left = ctx["left"]() - 30
    iters = ctx["sizes"]["long"]
    if one.get("it_per_s") and not ctx["tiny"]:  # what fits: start-up, iterations, a test pass every 5000
        per_iter = 1.0 / one["it_per_s"] + (one.get("test_pass_s") or 0) / TEST_EVERY
        fit = 0.9 * (left - one["startup_s"] - (one.get("test_pass_s") or 0)) / per_iter  # 10 % to spare
        iters = min(iters, int(fit) // 100 * 100)
    if iters < ctx["sizes"]["display"] * 2:
        return {"skipped": "%d s left" % left}
    run = os.path.join("runs", "long_model4_d10")
    shutil.rmtree(os.path.join(ctx["work"], run), ignore_errors=True)
    say("long: Model 4 D=10, %d iterations, %d s left" % (iters, left))
    r = finish(start_timed(ctx, train_argv(ctx, [(1, run)], iters), "long"), left)
    r.pop("span", None)
    run = os.path.join(ctx["work"], run)
    for name, target in (("log.jsonl", "long_log.jsonl"), ("manifest.json", "long_manifest.json")):
        if os.path.exists(os.path.join(run, name)):
            shutil.copy(os.path.join(run, name), os.path.join(ctx["out"], target))
    with open(os.path.join(run, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(run, "manifest.json")) as f:
        manifest = json.load(f)
    row = paper.table4_row("model4", 10)
    last = {rec["phase"]: rec for rec in records}
    r.update(iters_asked=iters, status=manifest.get("status"), iterations=manifest.get("iterations"),
             wall_seconds=manifest.get("wall_seconds"),
             losses={phase: last[phase]["loss"] for phase in last},
             paper={"train": dict(zip(("cross_entropy", "euclidean"), row["train_mean"])),
                    "test": dict(zip(("cross_entropy", "euclidean"), row["test_mean"]))})
    return r


# ----------------------------------------------------------------------------- check

def check(args):
    import torch
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise CaeError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu)")
    with open(os.path.join(args.refs, "manifest.json")) as f:
        refs_manifest = json.load(f)
    files.ensure_dir(args.out)
    work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    os.makedirs(work, exist_ok=True)
    start = time.time()
    results = {"device": device, "tiny": args.tiny, "budget_s": args.budget, "started": now_iso(), "steps": {}}
    path = os.path.join(args.out, "gpu_check.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    ctx = {"device": device, "mode": "gpu" if device == "cuda" else "cpu", "tiny": args.tiny, "out": args.out,
           "work": work, "refs": args.refs, "refs_manifest": refs_manifest, "env": env, "results": results,
           "sizes": SIZES["tiny" if args.tiny else "full"], "left": lambda: args.budget - (time.time() - start),
           "save": lambda: files.write_json(path, results, sort_keys=True)}
    steps = {"facts": facts, "data": data, "equality": equality, "bench": bench, "throughput": throughput,
             "long": long_run}
    for name in [s.strip() for s in args.steps.split(",")]:
        say("step %s (%.0f s of %d left)" % (name, ctx["left"](), args.budget))
        t = time.time()
        entry = results["steps"][name] = {"status": "running"}
        try:
            entry["result"] = steps[name](ctx)
            entry["status"] = "ok"
        except Exception as exc:  # the next steps still run
            traceback.print_exc()
            entry.update(status="failed", error="%s: %s" % (type(exc).__name__, exc))
        entry["seconds"] = round(time.time() - t, 2)
        say("step %s: %s in %.1f s" % (name, entry["status"], entry["seconds"]))
        ctx["save"]()
    results["seconds"] = round(time.time() - start, 2)
    ctx["save"]()
    say("written: %s" % path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: Caffe's references (needs the engine) and the protobuf wheel")
    p.add_argument("--nets", default="all", help="all, or a comma list of %s" % ", ".join(eq.KEYS))
    p.add_argument("--iters", type=int, default=eq.ITERS, help="SGD iterations compared")
    p.add_argument("--out", default=os.path.join(REPO, ".gpucheck"))
    p.add_argument("--no-wheel", dest="wheel", action="store_false", help="do not download the protobuf wheel")
    c = sub.add_parser("check", help="there: the steps, results into OUT")
    c.add_argument("--out", required=True)
    c.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    c.add_argument("--refs", default=os.path.join(REPO, ".gpucheck", "refs"))
    c.add_argument("--work", default=None, help="where data and runs go [default: a new folder in /tmp]")
    c.add_argument("--budget", type=float, default=420, help="seconds for all steps; the long run takes what is left")
    c.add_argument("--steps", default=",".join(STEPS), help="comma list of %s" % ", ".join(STEPS))
    c.add_argument("--tiny", action="store_true", help="small sizes (a CPU test)")
    args = ap.parse_args(argv)
    if args.command == "check":
        bad = [s for s in args.steps.split(",") if s.strip() not in STEPS]
        if bad:
            ap.exit(2, "gpu_check: --steps %s: expected a comma list of %s\n" % (",".join(bad), ", ".join(STEPS)))
        if not os.path.isfile(os.path.join(args.refs, "manifest.json")):
            ap.exit(2, "gpu_check: --refs %s: no manifest.json; run `tools/gpu_check.py prepare` here first\n"
                    % args.refs)
    try:
        (prepare if args.command == "prepare" else check)(args)
    except CaeError as exc:
        ap.exit(2, "gpu_check: error: %s\n" % exc)


if __name__ == "__main__":
    main()
