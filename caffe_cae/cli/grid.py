"""``caffe-cae grid``: the paper's grid of runs (train -> extract -> analyze), then the report."""
import click

from .options import fail, run_guarded


@click.command("grid")
@click.option("--nets", default="all", show_default=True,
              help="'all' or a comma list, e.g. model1,model4.")
@click.option("--dims", default="paper", show_default=True,
              help="'paper' (each net's code sizes in Table 4) or a comma list, e.g. 2,10.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Runs per (net, D), with seeds 1..runs.")
@click.option("--iters", type=click.IntRange(min=1), default=50000, show_default=True,
              help="Training iterations of every run.")
@click.option("--mode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--backend", type=click.Choice(["caffe", "torch"]), default="caffe", show_default=True,
              help="caffe (the engine) or torch (PyTorch with Caffe's semantics) for train and extract.")
@click.option("--batch-runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train up to K runs (seeds) of the same net and D at once as one batched computation "
                   "(--backend torch only).")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs at once (local: workers, each with cores/jobs BLAS threads; slurm: array cap).")
@click.option("--out", default="runs", show_default=True, type=click.Path(),
              help="Grid directory: OUT/{net}_d{D}/run{seed}, OUT/grid.json, OUT/report/.")
@click.option("--dry-run", is_flag=True, help="Print the plan (local) or the Slurm scripts, run nothing.")
@click.option("--retry-failed", is_flag=True, help="Try again the runs recorded as failed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Setting override passed to every `caffe-cae train --set` (repeatable).")
@click.option("--analyze-arg", "analyze_args", multiple=True, metavar="ARG",
              help="Extra argument for every `caffe-cae analyze`, e.g. --analyze-arg=--folds=3 (repeatable).")
@click.option("--data-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Passed to `caffe-cae train --data-root` [default: the current directory].")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=1, show_default=True,
              help="Slurm: CPUs (and BLAS threads) per array task.")
@click.option("--partition", default=None, help="Slurm partition.")
@click.option("--time", "time_limit", default=None, help="Slurm time limit per task, e.g. 12:00:00.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="Extra #SBATCH line for both jobs, e.g. --sbatch-arg=--account=abc (repeatable).")
def cli(nets, dims, runs, iters, mode, backend, batch_runs, executor, jobs, out, dry_run, retry_failed, sets, analyze_args, data_root,
        cpus_per_task, partition, time_limit, sbatch_args):
    """Run train -> extract -> analyze for every (net, D, seed), skipping finished runs, then the report.

    Re-running finishes only what is missing; a run failing twice is recorded as failed in
    OUT/grid.json and in the report.
    """
    import os
    import sys

    from .. import grid

    if batch_runs > 1 and backend != "torch":
        fail(f"--batch-runs {batch_runs}: batched training needs --backend torch (the Caffe engine trains one run "
             "at a time)")
    plan = run_guarded(lambda: grid.expand(grid.parse_nets(nets), grid.parse_dims(dims), runs))
    config = {"iters": iters, "mode": mode, "sets": list(sets), "analyze_args": list(analyze_args), "backend": backend,
              "data_root": os.path.abspath(data_root) if data_root else None, "batch_runs": batch_runs}
    if executor == "slurm":
        run_guarded(grid.submit_slurm, out, plan, config, jobs, dry_run=dry_run,
                    retry_failed=retry_failed, cpus_per_task=cpus_per_task, partition=partition,
                    time_limit=time_limit, extra=sbatch_args, log=click.echo)
        return
    if dry_run:
        for line in grid.dry_run_lines(out, plan, dict(config, threads=max(1, grid.usable_cores() // jobs))):
            click.echo(line)
        return
    counts = run_guarded(grid.run_local, out, plan, config, jobs, retry_failed=retry_failed,
                         display=grid.make_display(sys.stderr))
    if counts.get("interrupted"):
        click.echo(f"grid: interrupted ({counts.get('done', 0)} of {len(plan)} runs done); "
                   "the same command continues it", err=True)
        raise SystemExit(130)
    report = grid.read_state(out).get("report", {})
    click.echo(f"grid: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed of {len(plan)} runs; "
               f"state {os.path.join(out, grid.STATE_FILE)}")
    if report.get("status") == "done":
        click.echo(f"report: {os.path.abspath(os.path.join(out, report['path']))}")
    else:
        fail(f"report over {out} failed, see {os.path.join(out, 'report.log')}", code=1)
    if counts.get("failed"):
        raise SystemExit(1)
