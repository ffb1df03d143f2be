"""caffe-cae render: the paper's nets (or variants) as Caffe prototxt files."""
import json
import os

import click

from .. import render as render_lib
from .. import specs
from ..errors import CaeError
from .options import run_guarded, set_option

SPEC_KEYS = {"net", "dim", "syntax", "activation", "weight_filler", "set"}


def _read_spec(path):
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as exc:
        raise CaeError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CaeError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    if not isinstance(spec, dict):
        raise CaeError(f"{path}: expected a JSON object with keys {', '.join(sorted(SPEC_KEYS))}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise CaeError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(SPEC_KEYS))})")
    if "set" in spec and not isinstance(spec["set"], dict):
        raise CaeError(f"{path}: 'set' must be an object of setting: value")
    return spec


def _render(paper_grid, net, dim, syntax, activation, weight_filler, sets, spec_file, out, list_settings):
    if list_settings:
        for key, (value, why) in specs.DEFAULTS.items():
            click.echo(f"{key:<28} {render_lib._num(value):<12} {why}")
        return
    if paper_grid:
        paths = render_lib.render_paper_grid(out)
        click.echo(f"rendered {len(paths)} files into {out}/legacy and {out}/modern")
        return
    overrides = {}
    if spec_file:
        spec = _read_spec(spec_file)
        net = spec.get("net", net)
        dim = spec.get("dim", dim)
        syntax = spec.get("syntax", syntax)
        activation = spec.get("activation", activation)
        weight_filler = spec.get("weight_filler", weight_filler)
        overrides.update(spec.get("set", {}))
    if net is None:
        raise CaeError("--net: required (or --paper-grid)")
    if net not in specs.NETS:
        raise CaeError(f"--net: expected one of {', '.join(specs.NETS)}, got {net!r}")
    if dim is None:
        raise CaeError("--dim: required with --net")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise CaeError(f"--dim: expected a code size of at least 1, got {dim!r}")
    if syntax not in ("modern", "legacy"):
        raise CaeError(f"--syntax: expected modern or legacy, got {syntax!r}")
    if activation:
        overrides["net.activation"] = activation
    if weight_filler:
        overrides["net.conv_filler"] = weight_filler
    overrides.update(sets)
    paths = render_lib.write_files(net, dim, out, syntax, overrides)
    for kind in render_lib.KINDS:
        click.echo(os.path.relpath(paths[kind]))


@click.command("render")
@click.option("--paper-grid", is_flag=True, help="Every net at the paper's code sizes, both syntaxes.")
# --net and --dim are checked by _render (not click) because --spec gives them too, with the same messages
@click.option("--net", help="siamese, deep_ae, model1 ... model5.")
@click.option("--dim", type=int, help="Code size D (outputs of ip2encode).")
@click.option("--syntax", default="modern", show_default=True, help="modern (layer {}) or legacy (V1 layers {}).")
@click.option("--activation", help="sigmoid, tanh or relu (default: the paper's for the net).")
@click.option("--weight-filler", help="Filler of conv/deconv weights: xavier, msra or gaussian.")
@set_option
@click.option("--spec", "spec_file", type=click.Path(dir_okay=False),
              help="A JSON file with keys net, dim, syntax, activation, weight_filler, set.")
@click.option("--out", default="generated", show_default=True, help="Output directory.")
@click.option("--list-settings", is_flag=True, help="Print every setting, its default and why.")
def cli(paper_grid, net, dim, syntax, activation, weight_filler, overrides, spec_file, out, list_settings):
    """Render train_test, deploy and solver prototxt files."""
    run_guarded(_render, paper_grid, net, dim, syntax, activation, weight_filler, overrides, spec_file, out,
                list_settings)
