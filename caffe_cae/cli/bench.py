"""``caffe-cae bench``: ms per SGD iteration of every net in the engine, and the harness's costs."""
import click

from ..backends import BACKENDS
from .options import fail, run_guarded


@click.command("bench")
@click.option("--out", type=click.Path(dir_okay=False), default="bench/results.json", show_default=True,
              help="Where to write the results as JSON.")
@click.option("--mode", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--nets", default="all", show_default=True, help="'all' or a comma list of nets.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Iterations before timing.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed repeats (median).")
@click.option("--iters", type=click.IntRange(min=1), default=5, show_default=True, help="Iterations per repeat.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="caffe (the engine) or torch [default: caffe].")
@click.option("--no-harness", is_flag=True, help="Only the nets (no render/data/train/extract timings).")
def cli(out, mode, nets, warmup, repeats, iters, no_harness, backend):
    """Time forward+backward+update (batch 100, D=10) per net, render, data, extraction; print a table."""
    from .. import bench as bench_lib
    from .. import specs

    chosen = specs.NETS if nets.strip() == "all" else tuple(n.strip() for n in nets.split(",") if n.strip())
    try:
        results = run_guarded(bench_lib.bench, out=out, nets=chosen, mode=mode, warmup=warmup, repeats=repeats,
                              iters=iters, harness=not no_harness, backend=backend)
    except KeyboardInterrupt:
        fail("bench interrupted; %s not written" % out, code=130)
    click.echo(bench_lib.table(results))
    click.echo("written: %s" % out)
