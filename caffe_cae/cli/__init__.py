"""The ``caffe-cae`` command: a thin click group over the library, one module per subcommand.

Subcommand modules are imported only when their command runs, so ``caffe-cae render``
does not pay for matplotlib or scikit-learn.
"""
import importlib
import sys

import click

#: subcommand name -> module in caffe_cae.cli defining a click command named ``cli``.
COMMANDS = {
    "render": "render",
    "inspect": "inspect_cmd",
    "upgrade": "upgrade",
    "engine": "engine",
    "data": "data",
    "train": "train",
    "extract": "extract",
    "bench": "bench",
    "analyze": "analyze",
    "report": "report",
    "grid": "grid",
    "grid-slurm": "grid_slurm",
    "results": "results",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._module(name) is not None)

    def _module(self, name):
        try:
            return importlib.import_module("caffe_cae.cli." + COMMANDS[name])
        except ModuleNotFoundError as exc:
            if exc.name == "caffe_cae.cli." + COMMANDS[name]:
                return None
            raise

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = self._module(name)
        return None if module is None else module.cli


@click.group(cls=LazyGroup)
@click.version_option(package_name="caffe-cae")
def cli():
    """Render, train and analyse the convolutional auto-encoders of Turchenko et al. (2019)."""


def main(argv=None):
    """Console entry point."""
    return cli.main(args=argv, prog_name="caffe-cae")


if __name__ == "__main__":
    sys.exit(main())
