"""``caffe-cae bench``: ms per SGD iteration of every net, and the harness's costs; with the torch
backend also GFLOP/s, the share of the measured fp32 peak and the ratio to plain PyTorch."""
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
@click.option("--layer-table", default="model4", show_default=True,
              help="Comma list of nets whose per-layer forward/backward ms are printed (torch backend; "
                   "OUT has every net's).")
def cli(out, mode, nets, warmup, repeats, iters, no_harness, backend, layer_table):
    """Time forward+backward+update (batch 100, D=10) per net, render, data, extraction; print a table."""
    from .. import bench as bench_lib
    from .. import specs

    chosen = specs.NETS if nets.strip() == "all" else tuple(n.strip() for n in nets.split(",") if n.strip())
    names = [b.strip() for b in (backend or "caffe").split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        fail("--backend %s: expected %s, or a comma list of them" % (backend, " or ".join(BACKENDS)))
    if len(names) > 1:
        return _compare(names, out, mode, chosen, warmup, repeats, iters, no_harness, layer_table)
    try:
        results = run_guarded(bench_lib.bench, out=out, nets=chosen, mode=mode, warmup=warmup, repeats=repeats,
                              iters=iters, harness=not no_harness, backend=backend)
    except KeyboardInterrupt:
        fail("bench interrupted; %s not written" % out, code=130)
    click.echo(bench_lib.table(results))
    _layer_tables(results, layer_table)
    click.echo("written: %s" % out)


def _layer_tables(results, chosen):
    from .. import bench as bench_lib

    for net in (n.strip() for n in chosen.split(",")):
        if results["nets"].get(net, {}).get("layers"):
            click.echo("")
            click.echo(bench_lib.layer_table(results, net))


def _compare(names, out, mode, chosen, warmup, repeats, iters, no_harness, layer_table):
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
            _layer_tables(by_backend[name], layer_table)
            click.echo("")
    except KeyboardInterrupt:
        fail("bench interrupted; %s not written" % out, code=130)
    click.echo(bench_lib.compare_table(by_backend))
    run_guarded(files.write_json, out, by_backend, sort_keys=True)
    click.echo("written: %s" % out)

