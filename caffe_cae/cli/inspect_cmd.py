"""caffe-cae inspect: blob shapes, parameter counts and model size of any net."""
import json

import click

from .. import inspect as inspect_lib
from .options import run_guarded


@click.command("inspect")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--batch", default=100, show_default=True, help="Batch size N for data layers without one.")
def cli(file, as_json, batch):
    """Shapes and parameters of FILE (legacy or modern syntax), as in the paper's Tables 1 and 3."""
    info = run_guarded(inspect_lib.inspect_net, file, batch=batch)
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
    else:
        click.echo(inspect_lib.format_table(info))
