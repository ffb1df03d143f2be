"""caffe-cae report: Tables 4 and 5 and the figures of runs, beside the paper's numbers."""
import os

import click

from .. import report as report_lib
from ..errors import CaeError
from .options import run_guarded


def _report(run_dirs, out):
    missing = [d for d in run_dirs if not os.path.isdir(d)]
    if missing:
        raise CaeError(f"{missing[0]}: not a run directory")
    paths = report_lib.build(list(run_dirs), out)
    click.echo(f"report: {os.path.abspath(paths['html'])}")


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory for index.html and report.md.")
def cli(run_dirs, out):
    """Write a report (HTML and Markdown) over RUN_DIRS."""
    run_guarded(_report, run_dirs, out)
