"""caffe-cae upgrade: any Caffe net to modern syntax, as Caffe 1.0 upgrades it, with the
paper's Reshape fix."""
import click

from ..errors import CaeError
from ..files import write_text
from ..schema import NetParameter, parse_text, to_text
from ..upgrade import ignored_fields, upgrade
from .options import run_guarded


def _upgrade(file, out):
    # The project's schema only: any net Caffe 1.0 reads (V0 and V1 included) is accepted,
    # not only what the paper's 2015 fork reads.
    net = parse_text(file, NetParameter)
    if not net.ListFields():
        raise CaeError("%s: no net in the file (expected a NetParameter with layers)" % file)
    try:
        modern = upgrade(net)
    except CaeError as exc:
        raise CaeError("%s: %s" % (file, exc)) from None
    for warning in ignored_fields(modern):
        click.echo("%s: warning: %s" % (file, warning), err=True)
    text = to_text(modern)
    if out:
        write_text(out, text)
    else:
        click.echo(text, nl=False)


@click.command("upgrade")
@click.argument("file", type=click.Path())
@click.option("-o", "--out", type=click.Path(), help="Write here instead of standard output.")
def cli(file, out):
    """Convert the Caffe net FILE (V0, V1 `layers {}` with UNPOOLING, or modern) to modern
    `layer {}` syntax, as Caffe 1.0's upgrade does, plus the Reshape fix."""
    run_guarded(_upgrade, file, out)
