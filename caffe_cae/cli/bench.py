"""``caffe-cae bench``: ms per SGD iteration of every net in the engine, and the harness's costs."""
import click

from ..backends import BACKENDS
from .options import fail, mode_option, run_guarded


@click.command("bench")
@click.option("--out", type=click.Path(), default="bench/results.json", show_default=True,
              help="Where to write the results as JSON.")
@mode_option(default="cpu", help="CPU or GPU.")
@click.option("--nets", default="all", show_default=True, help="'all' or a comma list of nets.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Iterations before timing.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Timed repeats (median).")
@click.option("--iters", type=click.IntRange(min=1), default=5, show_default=True, help="Iterations per repeat.")
@click.option("--backend", default=None,
              help="caffe (the engine), torch, or a comma list (e.g. caffe,torch: each in turn, one "
                   "comparison table; OUT gets every backend's results) [default: caffe].")
@click.option("--no-harness", is_flag=True, help="Only the nets (no render/data/train/extract timings).")
def cli(out, mode, nets, warmup, repeats, iters, no_harness, backend):
    """Time forward+backward+update (batch 100, D=10) per net, render, data, extraction; print a table."""
    from .. import bench as bench_lib
    from .. import specs

    chosen = specs.NETS if nets.strip() == "all" else tuple(n.strip() for n in nets.split(",") if n.strip())
    names = [b.strip() for b in (backend or "caffe").split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        fail("--backend %s: expected %s, or a comma list of them" % (backend, " or ".join(BACKENDS)))
    if len(names) > 1:
        return _compare(names, out, mode, chosen, warmup, repeats, iters, no_harness)
    try:
        results = run_guarded(bench_lib.bench, out=out, nets=chosen, mode=mode, warmup=warmup, repeats=repeats,
                              iters=iters, harness=not no_harness, backend=backend)
    except KeyboardInterrupt:
        fail("bench interrupted; %s not written" % out, code=130)
    click.echo(bench_lib.table(results))
    click.echo("written: %s" % out)


def _compare(names, out, mode, chosen, warmup, repeats, iters, no_harness):
    """Each backend in turn, then one table side by side; OUT holds {backend: results}."""
    from .. import bench as bench_lib
    from .. import files

    run_guarded(files.check_writable, out)
    by_backend = {}
    try:
        for name in names:
            by_backend[name] = run_guarded(bench_lib.bench, out=None, nets=chosen, mode=mode, warmup=warmup,
                                           repeats=repeats, iters=iters, harness=not no_harness, backend=name)
            click.echo(bench_lib.table(by_backend[name]))
            click.echo("")
    except KeyboardInterrupt:
        fail("bench interrupted; %s not written" % out, code=130)
    click.echo(bench_lib.compare_table(by_backend))
    run_guarded(files.write_json, out, by_backend, sort_keys=True)
    click.echo("written: %s" % out)

