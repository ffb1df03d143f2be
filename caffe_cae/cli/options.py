"""Options and error handling shared by the subcommands (rasterio ``rio`` style: each shared
option is defined once here and used by every command that takes it)."""
import click

from ..backends import BACKENDS
from ..errors import CaeError
from ..specs import NETS


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


def parse_sets(pairs):
    """``KEY=VALUE`` strings -> {key: value} (the one place ``--set`` is parsed)."""
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise CaeError("--set %s: expected KEY=VALUE" % pair)
        key, value = pair.split("=", 1)
        overrides[key.strip()] = value.strip()
    return overrides


def net_option(help="Which net of the paper.", **kwargs):
    return click.option("--net", type=click.Choice(NETS), default=None, help=help, **kwargs)


def dim_option(help="Code size D (outputs of ip2encode).", **kwargs):
    return click.option("--dim", type=click.IntRange(min=1), default=None, help=help, **kwargs)


def mode_option(default=None, help="CPU or GPU [default: cpu]."):
    return click.option("--mode", type=click.Choice(["cpu", "gpu"]), default=default, show_default=default is not None,
                        help=help)


def backend_option(help):
    return click.option("--backend", type=click.Choice(BACKENDS), default=None, help=help)


#: ``--set KEY=VALUE`` (repeatable), parsed into a dict named ``overrides``
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    callback=lambda _ctx, _param, pairs: run_guarded(parse_sets, pairs),
    help="Override a setting (see `caffe-cae render --list-settings`), e.g. solver.base_lr=0.01 or "
         "layer.conv1.kernel=7 (repeatable).")
