"""Options and error handling shared by the subcommands."""
import click

from ..errors import CaeError

NETS = ("siamese", "deep_ae", "model1", "model2", "model3", "model4", "model5")

net_option = click.option("--net", type=click.Choice(NETS), required=True, help="Which net of the paper.")
dim_option = click.option("--dim", type=click.IntRange(min=1), required=True, help="Code size D (ip2encode outputs).")
syntax_option = click.option("--syntax", type=click.Choice(["modern", "legacy"]), default="modern",
                             show_default=True, help="Caffe syntax: modern layer {} or legacy V1 layers {}.")


def fail(message, code=2):
    """Print one line to stderr and exit with ``code``; never a traceback."""
    click.echo("caffe-cae: error: " + str(message), err=True)
    raise SystemExit(code)


def run_guarded(fn, *args, **kwargs):
    """Call fn and turn a CaeError into the one-line error and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except CaeError as exc:
        fail(exc)
