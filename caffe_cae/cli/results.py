"""``caffe-cae results``: the full-length runs of Table 4, published in results/ (see caffe_cae.results)."""
import os
import sys

import click

from ..results import VARIANTS
from .options import fail, run_guarded


@click.command("results")
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False), default=None,
              help="Where the runs train (snapshots and all; keep it outside the work tree); needed to train "
                   "or --publish.")
@click.option("--out", "results_dir", type=click.Path(file_okay=False), default="results", show_default=True,
              help="The published results (small files only).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Runs at once.")
@click.option("--backend", type=click.Choice(["caffe", "torch"]), default="torch", show_default=True,
              help="Which backend trains and extracts.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Only the first LIMIT runs of the publication order [default: all 63].")
@click.option("--readme", type=click.Path(dir_okay=False, exists=True), default="README.md", show_default=True,
              help="README whose generated Table 4 section is remade.")
@click.option("--refresh-only", is_flag=True, help="Train nothing: remake the report and the README section.")
@click.option("--publish", "publish_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Publish this finished, analysed run directory (RUNS/{net}_d{D}/run{seed}) and refresh.")
@click.option("--reference", "transfers", multiple=True, type=click.Choice(["tansig", "logsig"]),
              help="Compute the raw-pixel MLP row with this hidden transfer function (about an hour each; "
                   "cached, resumable per fold) into OUT/reference.json, then refresh.")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default=None,
              help="Train and publish this controlled variant's runs instead (one setting changed from the default; "
                   "caffe_cae/results.py VARIANTS) into RUNS/variants/NAME and OUT/variants/NAME.")
@click.option("--mnist-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="MNIST idx .gz files for --reference [default: $MNIST_DIR or data/mnist].")
def cli(runs_dir, results_dir, jobs, backend, limit, readme, refresh_only, publish_dirs, transfers, variant, mnist_dir):
    """Train, extract and analyse what is missing in the publication order; publish each run; refresh."""
    from .. import results as lib

    if transfers:
        run_guarded(lib.reference, results_dir, transfers, mnist_dir=mnist_dir, jobs=jobs, log=click.echo)
        run_guarded(lib.refresh, results_dir, readme, click.echo)
        return

    if runs_dir is None and not refresh_only:
        fail("--runs: expected the folder the runs train in (outside the work tree), e.g. --runs ~/caffe-cae-runs")
    if publish_dirs:
        for run_dir in publish_dirs:
            rel = os.path.relpath(os.path.abspath(run_dir), os.path.abspath(runs_dir))
            if rel.startswith(".."):
                fail("--publish %s: not inside --runs %s" % (run_dir, runs_dir))
            run_guarded(lib.publish, run_dir, os.path.join(results_dir, rel))
            click.echo("[results] published %s" % rel)
    if refresh_only or publish_dirs:
        run_guarded(lib.refresh, results_dir, readme, click.echo)
        return
    from ..grid import make_display

    counts = run_guarded(lib.run, runs_dir, results_dir, jobs=jobs, backend=backend, limit=limit, readme=readme,
                         display=make_display(sys.stdout), variant=variant)
    if counts.get("interrupted"):
        raise SystemExit(130)
    if counts.get("failed"):
        raise SystemExit(1)
