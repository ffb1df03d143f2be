"""caffe-cae upgrade: legacy V1 nets to modern syntax, with the paper's Reshape fix."""
import click

from ..files import write_text
from ..schema import parse_net, to_text
from ..upgrade import upgrade
from .options import run_guarded


def _upgrade(file, out):
    text = to_text(upgrade(parse_net(file)))
    if out:
        write_text(out, text)
    else:
        click.echo(text, nl=False)


@click.command("upgrade")
@click.argument("file", type=click.Path())
@click.option("-o", "--out", type=click.Path(), help="Write here instead of standard output.")
def cli(file, out):
    """Convert FILE (V1 `layers {}`, UNPOOLING included) to modern `layer {}` syntax."""
    run_guarded(_upgrade, file, out)
