"""``caffe-cae grid-slurm task|report``: the jobs that ``caffe-cae grid --executor slurm``
submits (hidden: not for typing by hand)."""
import click

from .options import run_guarded


@click.group("grid-slurm", hidden=True)
def cli():
    """The Slurm jobs of `caffe-cae grid --executor slurm`."""


@cli.command("task")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.argument("tasks", type=click.Path(dir_okay=False))
@click.argument("index", type=click.IntRange(min=0))
def task(out, tasks, index):
    """One array task: the INDEX-th run of the task list TASKS of the grid in OUT."""
    from ..grid import slurm

    status = run_guarded(slurm.task, out, tasks, index)
    raise SystemExit(0 if status == "done" else 1)


@cli.command("report")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
def report(out):
    """The report over the grid in OUT, after every array task has ended."""
    from ..grid import slurm

    raise SystemExit(run_guarded(slurm.report, out))
