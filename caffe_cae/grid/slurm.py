"""Running the grid on a Slurm cluster (shared file system assumed).

:func:`submit` writes ``OUT/slurm/tasks-STAMP.json`` (the unfinished runs and the config),
an array script (one task per unfinished run, at most ``jobs`` at once) and a report script
that depends on it (``afterany``), and submits both with ``sbatch``. Each task runs the
hidden command ``caffe-cae grid-slurm task OUT TASKS INDEX`` (:func:`task`: the run's missing
stages, tried twice, as the local executor does); the report job runs ``caffe-cae grid-slurm
report OUT`` (:func:`report`).
"""
import os
import shlex
import shutil
import subprocess
import sys
import time

from ..errors import CaeError
from ..files import write_json, write_text
from . import progress
from .local import make_report, run_stages, thread_env
from .plan import count_unfinished, read_json, run_complete
from .state import STATE_FILE, check_output_dir, locked_state, now, prepare, summary, update_run


def slurm_dir(out):
    return os.path.join(os.path.abspath(out), "slurm")


def tasks_file(out, stamp):
    """The task list of the submission made at ``stamp`` (``time.strftime("%Y%m%d-%H%M%S")``)."""
    return os.path.join(slurm_dir(out), f"tasks-{stamp}.json")


def scripts(out, todo_file, n_tasks, jobs, cpus_per_task=1, partition=None, time_limit=None, extra=()):
    """(array script, report script) texts for ``n_tasks`` runs listed in ``todo_file``."""
    out = os.path.abspath(out)
    logs = os.path.join(out, "slurm", "logs")
    cae = f"{shlex.quote(sys.executable)} -m caffe_cae grid-slurm"
    common = [f"#SBATCH --chdir={os.getcwd()}"]
    if partition:
        common.append(f"#SBATCH --partition={partition}")
    common += [f"#SBATCH {x}" for x in extra]
    array = ["#!/bin/bash", "#SBATCH --job-name=cae-grid",
             f"#SBATCH --array=0-{n_tasks - 1}%{max(1, jobs)}",
             f"#SBATCH --cpus-per-task={cpus_per_task}",
             f"#SBATCH --output={logs}/%A_%a.out"] + common
    if time_limit:
        array.append(f"#SBATCH --time={time_limit}")
    array += ["# One task per unfinished run of the grid: train -> extract -> analyze (tried twice).",
              "set -u",
              f"export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{cpus_per_task}}}",
              "export OPENBLAS_NUM_THREADS=$OMP_NUM_THREADS MKL_NUM_THREADS=$OMP_NUM_THREADS",
              f"exec {cae} task {shlex.quote(out)} {shlex.quote(todo_file)} \"$SLURM_ARRAY_TASK_ID\""]
    report_job = ["#!/bin/bash", "#SBATCH --job-name=cae-report", "#SBATCH --cpus-per-task=1",
                  f"#SBATCH --output={logs}/report_%j.out"] + common + [
                  "# After every task of the array has ended (afterany): the report over the grid.",
                  "set -u",
                  f"exec {cae} report {shlex.quote(out)}"]
    return "\n".join(array) + "\n", "\n".join(report_job) + "\n"


def submit(out, plan, config, jobs, dry_run=False, retry_failed=False, cpus_per_task=1,
           partition=None, time_limit=None, extra=(), log=print, env=None):
    """Write the scripts and submit the array and the report job; returns (array_id, report_id).
    ``dry_run``: print the scripts (naming the task list a submission now would write), submit
    nothing. ``--batch-runs`` > 1 is refused (one array task is one run)."""
    if config.get("batch_runs", 1) > 1:
        raise CaeError("--batch-runs with --executor slurm: not supported (one array task trains one run); "
                       "use --executor local or --batch-runs 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    options = dict(cpus_per_task=cpus_per_task, partition=partition, time_limit=time_limit, extra=extra)
    if dry_run:
        todo = [r for r in plan if not run_complete(os.path.join(out, r["dir"]))]
        array, report_job = scripts(out, tasks_file(out, stamp), max(1, len(todo)), jobs, **options)
        log(f"# {len(todo)} array tasks\n# --- grid_array.sh\n{array}# --- grid_report.sh "
            f"(sbatch --dependency=afterany:<array job>)\n{report_job}")
        return None, None
    if shutil.which("sbatch", path=(env or os.environ).get("PATH")) is None:
        raise CaeError("--executor slurm: sbatch not found on PATH (is this a Slurm login node?); "
                       "use --executor local")
    check_output_dir(out, count_unfinished(out, plan))
    todo = prepare(out, plan, config, retry_failed)
    sdir = slurm_dir(out)
    os.makedirs(os.path.join(sdir, "logs"), exist_ok=True)
    write_json(os.path.join(sdir, f"plan-{stamp}.json"), {"plan": plan, "config": config}, sort_keys=True)
    todo_file = tasks_file(out, stamp)
    write_json(todo_file, {"tasks": todo, "config": config, "plan": plan}, sort_keys=True)
    array, report_job = scripts(out, todo_file, len(todo), jobs, **options)
    paths = {}
    for name, text in (("grid_array.sh", array), ("grid_report.sh", report_job)):
        paths[name] = os.path.join(sdir, name)
        write_text(paths[name], text)
    array_id = None
    if todo:
        array_id = _sbatch([paths["grid_array.sh"]], env)
        log(f"[grid] submitted {len(todo)} runs as job array {array_id} (at most {jobs} at once); "
            f"logs in {os.path.join(sdir, 'logs')}")
    dep = [f"--dependency=afterany:{array_id}"] if array_id else []
    report_id = _sbatch(dep + [paths["grid_report.sh"]], env)
    log(f"[grid] report job {report_id}: {os.path.join(os.path.abspath(out), 'report', 'index.html')}")
    with locked_state(out) as state:
        state["slurm"] = {"array_job": array_id, "report_job": report_id, "tasks_file": todo_file,
                          "submitted": now()}
    return array_id, report_id


def _sbatch(args, env):
    res = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise CaeError(f"sbatch {args[-1]}: {res.stderr.strip() or 'failed'} (exit status {res.returncode})")
    return res.stdout.strip().split(";")[0]


def _say(message):
    print(message, flush=True)


def task(out, todo_file, index):
    """One array task: bring the ``index``-th run of ``todo_file`` to completion; its status."""
    spec = read_json(todo_file)
    if spec is None or not isinstance(spec.get("tasks"), list):
        raise CaeError(f"{todo_file}: missing or not a grid task list")
    if not 0 <= index < len(spec["tasks"]):
        raise CaeError(f"{todo_file}: no task {index} (it lists {len(spec['tasks'])})")
    run = spec["tasks"][index]
    if run_complete(os.path.join(out, run["dir"])):
        update_run(out, run, status="done")
        return "done"
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    return run_stages(out, run, dict(spec["config"], threads=threads), thread_env(threads),
                      display=progress.Lines(_say))


def report(out):
    """The report job: mark runs that never ran, then make the report; its exit status."""
    if read_json(os.path.join(out, STATE_FILE)) is None:
        raise CaeError(f"{os.path.join(out, STATE_FILE)}: missing or unreadable (is {out} a grid directory?)")
    plan = []
    with locked_state(out) as state:
        for rid in state.get("plan", []):
            entry = state["runs"].get(rid, {})
            run = {"id": rid, **{k: entry.get(k) for k in ("net", "dim", "seed", "dir")}}
            plan.append(run)
            if run_complete(os.path.join(out, run["dir"])):
                entry["status"] = "done"
            elif entry.get("status") in ("pending", "running"):
                # The task ended without recording an outcome (cancelled, time limit, node lost):
                # not a failure of the run; submitting the grid again continues it.
                entry["status"] = "interrupted"
                entry["error"] = {"stage": "unknown", "message": "the Slurm task ended without "
                                  "finishing the run (cancelled, time limit or node failure?)"}
    rc = make_report(out, plan, log=_say)
    _say(f"[grid] {summary(out, plan)}")
    return rc
