"""caffe-cae inspect: blob shapes, parameter counts and model size of any net."""
import json

import click

from .. import inspect as inspect_lib
from ..data_shapes import parse_input_shapes
from .options import run_guarded


@click.command("inspect")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(min=1),
              help="Batch size N for data layers without one.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=N,C,H,W",
              callback=lambda _ctx, _param, pairs: run_guarded(parse_input_shapes, pairs),
              help="The shape of the input or data top NAME (repeatable); overrides what the net or its "
                   "data files say.")
def cli(file, as_json, batch, input_shapes):
    """Shapes and parameters of FILE (legacy or modern syntax), as in the paper's Tables 1 and 3.

    Input shapes come from --input-shape, the net (Input layers, input_dim), the files its data
    layers read (HDF5 lists, LMDB databases; paths relative to the current folder), or MNIST's
    layout for the nets caffe-cae renders; any other input is refused by name."""
    info = run_guarded(inspect_lib.inspect_net, file, batch=batch, input_shapes=input_shapes)
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
    else:
        click.echo(inspect_lib.format_table(info))
