"""``caffe-cae data``: MNIST idx files to the HDF5 files and list files the nets read."""
import click

from .options import run_guarded


@click.command("data")
@click.option("--mnist-dir", type=click.Path(file_okay=False), default=None,
              help="Directory with the four MNIST idx .gz files [default: $MNIST_DIR, else data/mnist].")
@click.option("--out", "out_dir", type=click.Path(), default="data/hdf5", show_default=True,
              help="Output directory; the list files name the h5 files under this path as given.")
@click.option("--list-prefix", default=None,
              help="Directory written into the list files instead of --out (e.g. the path the engine sees).")
@click.option("--force", is_flag=True, help="Rewrite outputs even when they already match the inputs.")
def cli(mnist_dir, out_dir, list_prefix, force):
    """Check MNIST (magic numbers, counts, SHA-256) and write train/test and Siamese pair HDF5 files."""
    from .. import data, files

    run_guarded(files.check_dir, out_dir)  # a bad --out fails before the minutes of work

    def progress(line):
        click.echo(line, err=True)

    paths = run_guarded(data.convert, mnist_dir=mnist_dir, out_dir=out_dir, list_prefix=list_prefix,
                        force=force, progress=progress)
    for key in sorted(paths):
        click.echo("%s\t%s" % (key, paths[key]))
