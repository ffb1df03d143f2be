"""``caffe-cae extract``: codes, reconstructions and the Fig. 11 blobs of a trained run."""
import click

from .options import backend_option, fail, run_guarded


@click.command("extract")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Images to encode: test -> RUN_DIR/codes.h5, train -> RUN_DIR/codes_train.h5.")
@backend_option(help="caffe (the engine) or torch [default: the backend the run last trained in].")
@click.option("--no-blobs", is_flag=True, help="Do not write RUN_DIR/blobs_digit5.h5.")
def cli(run_dir, split, no_blobs, backend):
    """Run the deploy net with the run's final weights over a split; write codes.h5 and blobs_digit5.h5."""
    from .. import extract as extract_lib

    try:
        result = run_guarded(extract_lib.extract, run_dir, split=split, blobs=not no_blobs, backend=backend)
    except KeyboardInterrupt:
        fail("%s: extraction interrupted; nothing written" % run_dir, code=130)
    losses = " ".join("%s=%.6g" % kv for kv in sorted(result.get("losses", {}).items()))
    click.echo("%s: %d x %d codes (iteration %d) %s in %.1f s" % (
        result["codes"], result["n"], result["dim"], result["iteration"], losses, result["seconds"]))
    if result.get("blobs"):
        click.echo("%s: test image %d (a 5)" % (result["blobs"], result["digit_index"]))
