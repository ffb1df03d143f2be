"""What the grid has to do: the runs, what each run still needs, and the command lines.

A run is a dict ``{"id", "net", "dim", "seed", "dir"}``; its directory is
``OUT/{net}_d{D}/run{seed}``. A stage is done when its output says so:

* train: ``manifest.json`` with a finished ``status`` (a run left unfinished is continued
  with ``train --resume``);
* extract: ``codes.h5`` and ``blobs_digit5.h5``;
* analyze: ``analysis.json``.

A run's completion is judged from its files, so a run directory edited by hand is trusted.
"""
import json
import os
import shlex
import sys

from ..errors import CaeError
from ..rundir import ANALYSIS, BLOBS, MANIFEST, codes_name
from ..specs import NETS, PAPER_DIMS

STAGES = ("train", "extract", "analyze")
#: manifest.json "status" values of a finished training run.
TRAIN_DONE = ("complete", "completed", "done", "finished")


def parse_nets(text):
    """``all`` or a comma list of net names -> tuple of nets (CaeError on unknown names)."""
    if text.strip() == "all":
        return NETS
    nets = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in nets if n not in NETS]
    if bad or not nets:
        raise CaeError(f"--nets: expected 'all' or a comma list of {', '.join(NETS)}; got {text!r}")
    return nets


def parse_dims(text):
    """``paper`` (None: each net's paper dims) or a comma list of positive integers."""
    if text.strip() == "paper":
        return None
    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise CaeError(f"--dims: expected 'paper' or a comma list of positive integers; got {text!r}")
    return dims


def expand(nets, dims, runs):
    """The grid's runs in a fixed order: nets, then dims (paper's if None), then seeds 1..runs."""
    if runs < 1:
        raise CaeError(f"--runs: expected a positive integer, got {runs}")
    plan = []
    for net in nets:
        for dim in (PAPER_DIMS[net] if dims is None else dims):
            for seed in range(1, runs + 1):
                plan.append({"id": f"{net}_d{dim}_run{seed}", "net": net, "dim": dim,
                             "seed": seed, "dir": f"{net}_d{dim}/run{seed}"})
    return plan


# -- what a run directory says ----------------------------------------------------------

def read_json(path):
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def manifest_iters(manifest):
    """The iteration count a manifest asked for, or None if it does not say."""
    for key in ("iters", "max_iter"):
        if isinstance(manifest.get(key), int):
            return manifest[key]
    solver = manifest.get("solver")
    if isinstance(solver, dict) and isinstance(solver.get("max_iter"), int):
        return solver["max_iter"]
    return None


def stage_done(run_dir, stage):
    """Whether ``stage`` of the run in ``run_dir`` has finished (judged from its files)."""
    if stage == "train":
        manifest = read_json(os.path.join(run_dir, MANIFEST))
        return bool(manifest) and str(manifest.get("status", "")).lower() in TRAIN_DONE
    if stage == "extract":
        return all(os.path.isfile(os.path.join(run_dir, n)) for n in (codes_name("test"), BLOBS))
    if stage == "analyze":
        return os.path.isfile(os.path.join(run_dir, ANALYSIS))
    raise ValueError(stage)


def run_complete(run_dir):
    return all(stage_done(run_dir, s) for s in STAGES)


def count_unfinished(out, plan):
    return sum(not run_complete(os.path.join(out, run["dir"])) for run in plan)


def train_started(run_dir):
    """A training run was begun in ``run_dir`` (so it is continued with --resume)."""
    return os.path.isfile(os.path.join(run_dir, MANIFEST))


def resume_point(run_dir):
    """The iteration a started run continues from (its last snapshot; 0 when none or new)."""
    manifest = read_json(os.path.join(run_dir, MANIFEST)) or {}
    iters = [s.get("iter", 0) for s in manifest.get("snapshots") or []
             if os.path.isfile(os.path.join(run_dir, s.get("caffemodel", "")))
             and os.path.isfile(os.path.join(run_dir, s.get("solverstate", "")))]
    return max(iters) if iters else 0


# -- command lines ----------------------------------------------------------------------

def _cae(*args):
    return [sys.executable, "-m", "caffe_cae", *args]


def _train_common(net, dim, config):
    return _cae("train", "--net", net, "--dim", str(dim), "--mode", config["mode"], "--iters", str(config["iters"]))


def _train_settings(config):
    argv = []
    for pair in config.get("sets", ()):
        argv += ["--set", pair]
    if config.get("data_root"):
        argv += ["--data-root", config["data_root"]]
    return argv


def stage_argv(stage, run, run_dir, config):
    """The command line of one stage of one run."""
    backend = config.get("backend", "caffe")
    if stage == "train":
        argv = (_train_common(run["net"], run["dim"], config) + ["--seed", str(run["seed"]), "--out", run_dir]
                + _train_settings(config))
        if backend != "caffe":
            argv += ["--backend", backend]
        if train_started(run_dir):
            argv.append("--resume")
        return argv
    if stage == "extract" and backend != "caffe":
        return _cae(stage, "--backend", backend, run_dir)
    if stage == "analyze":
        return _cae("analyze", "--jobs", str(config.get("threads", 1)), *config.get("analyze_args", ()), run_dir)
    return _cae(stage, run_dir)


def make_batches(out, runs, size):
    """Units of work, order kept: runs whose training is still to do grouped by (net, D, resume
    point) into batches of up to ``size`` (trained at once by ``train --batch``); each other run
    alone. ``size`` 1: every run alone."""
    units, open_batches = [], {}
    for run in runs:
        run_dir = os.path.join(out, run["dir"])
        if size <= 1 or stage_done(run_dir, "train"):
            units.append([run])
            continue
        key = (run["net"], run["dim"], resume_point(run_dir))
        unit = open_batches.get(key)
        if unit is None or len(unit) >= size:
            unit = open_batches[key] = []
            units.append(unit)
        unit.append(run)
    return units


def batch_train_argv(runs, out, config):
    """``caffe-cae train --batch SEED:DIR ...`` for runs of one (net, D) trained at once."""
    first = runs[0]
    argv = (_train_common(first["net"], first["dim"], config) + ["--backend", config.get("backend", "torch")]
            + _train_settings(config))
    for run in runs:
        argv += ["--batch", "%d:%s" % (run["seed"], os.path.join(out, run["dir"]))]
    if any(train_started(os.path.join(out, run["dir"])) for run in runs):
        argv.append("--resume")
    return argv


def batch_name(runs):
    return "%s_d%d_batch%s" % (runs[0]["net"], runs[0]["dim"], "-".join(str(r["seed"]) for r in runs))


def report_dirs(out, plan):
    """The grid's run directories that exist, done and failed alike (a run that failed before
    training began shows as failed from its ``failed.json``)."""
    return [os.path.join(out, run["dir"]) for run in plan if os.path.isdir(os.path.join(out, run["dir"]))]


def report_argv(out, plan):
    """``caffe-cae report`` over the grid's run directories (:func:`report_dirs`)."""
    return _cae("report", *report_dirs(out, plan), "--out", os.path.join(out, "report"))


def dry_run_lines(out, plan, config):
    """What the local executor would run, as lines: a comment per run (or batch), then each
    command line, then the report's."""
    def cmd(argv):
        return " ".join(map(shlex.quote, argv))

    lines = []
    for unit in make_batches(out, plan, config.get("batch_runs", 1)):
        if len(unit) > 1:
            lines += [f"# batch of {len(unit)} runs, trained at once: " + " ".join(r["id"] for r in unit),
                      cmd(batch_train_argv(unit, out, config))]
        for run in unit:
            run_dir = os.path.join(out, run["dir"])
            todo = [s for s in STAGES if not stage_done(run_dir, s)]
            if len(unit) > 1:
                todo = [s for s in todo if s != "train"]
                lines.append(f"# {run['id']}: train in the batch above, then: " + " ".join(todo))
            else:
                lines.append(f"# {run['id']}: " + ("finished" if not todo else "to do: " + " ".join(todo)))
            lines += [cmd(stage_argv(stage, run, run_dir, config)) for stage in todo]
    return lines + [cmd(report_argv(out, plan))]
