"""``caffe-cae train``: render a net and its solver into a run directory and train it."""
import dataclasses

import click

from .options import backend_option, dim_option, fail, mode_option, net_option, run_guarded, set_option

EXIT_BY_REASON = {"SIGINT": 130, "SIGTERM": 143}


@click.command("train")
@net_option(help="Which net of the paper (not needed with --resume).")
@dim_option(help="Code size D (not needed with --resume).")
@mode_option()
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Training iterations [default: 50000].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Solver random seed [default: 1].")
@click.option("--out", "out", type=click.Path(), default=None,
              help="Run directory [default: runs/{net}_d{dim}_run{seed}].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last snapshot.")
@click.option("--force", is_flag=True, help="Start again even if --out holds a finished run (it is deleted).")
@set_option
@click.option("--data-root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory Caffe runs in; data.dir (data/hdf5) is relative to it [default: current directory].")
@backend_option(help="caffe (the engine) or torch [default: caffe; with --resume: the run's].")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="End this session after that iteration as if interrupted (snapshot; continue with --resume).")
@click.option("--batch", "batch", multiple=True, metavar="SEED:DIR",
              help="Train these runs of --net/--dim at once as one batched computation (torch backend; "
                   "repeatable; what `grid --batch-runs` uses). --resume continues those with a manifest.")
def cli(net, dim, mode, iters, seed, out, resume, force, overrides, data_root, stop_after, backend, batch):
    """Train one net (Caffe engine or PyTorch): progress bar, log.jsonl, snapshots, manifest.json.

    Ctrl-C (or SIGTERM) snapshots and exits (status 130/143); --resume continues with the
    same data order. A non-finite loss stops the run (exit 1) naming the iteration and the
    first non-finite blob.
    """
    from .. import train as train_lib

    spec = train_lib.RunSpec(net=net, dim=dim, mode=mode, iters=iters, seed=seed, out=out, resume=resume,
                             force=force, overrides=overrides, data_root=data_root, stop_after=stop_after,
                             backend=backend)
    try:
        if batch:
            manifests = run_guarded(train_lib.train_batch, _batch_runs(batch, seed, out),
                                    dataclasses.replace(spec, backend=backend or "torch"))
        else:
            manifests = [run_guarded(train_lib.train, spec)]
    except train_lib.RunFailed as exc:
        fail(exc, code=1)
    except KeyboardInterrupt:  # before or after the training session itself
        fail("interrupted", code=130)
    stopped = [m for m in manifests if m.get("status") == "interrupted"]
    if stopped:
        raise SystemExit(EXIT_BY_REASON.get(stopped[0].get("interrupted_by"), 0))


def _batch_runs(batch, seed, out):
    """``--batch SEED:DIR`` items -> [(seed, dir)]."""
    if seed is not None or out is not None:
        fail("--batch gives each run's seed and directory (SEED:DIR); drop --seed and --out")
    runs = []
    for item in batch:
        text, _, folder = item.partition(":")
        if not text.isdigit() or not folder:
            fail("--batch %s: expected SEED:DIR, e.g. 2:runs/model4_d10/run2" % item)
        runs.append((int(text), folder))
    return runs
