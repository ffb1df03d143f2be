"""Render a net's train_test, deploy and solver files from templates/ (jinja2).

``render_files(net, dim, syntax, overrides)`` returns the three texts; ``write_files``
writes them atomically. Every rendered net is parsed back strictly against the project's
schema and its shapes checked by :mod:`caffe_cae.inspect`, so a file that would not load in
Caffe is never written. Rendering is deterministic: the same arguments give the same bytes.
"""
import math
import os

import jinja2

from . import package_path, specs
from .errors import CaeError
from .files import write_text
from .inspect import analyse
from .schema import parse_net, parse_solver

TEMPLATES = package_path("templates")  # the repository's templates/, in either install
KINDS = ("train_test", "deploy", "solver")

MODERN_TYPES = {
    "hdf5": "HDF5Data", "input": "Input", "conv": "Convolution", "deconv": "Deconvolution",
    "ip": "InnerProduct", "pool": "Pooling", "unpool": "Unpooling", "sigmoid": "Sigmoid", "tanh": "TanH",
    "relu": "ReLU", "flatten": "Flatten", "reshape": "Reshape", "slice": "Slice",
    "sce_loss": "SigmoidCrossEntropyLoss", "euclid_loss": "EuclideanLoss", "contrastive_loss": "ContrastiveLoss",
}
LEGACY_TYPES = {
    "hdf5": "HDF5_DATA", "conv": "CONVOLUTION", "deconv": "DECONVOLUTION", "ip": "INNER_PRODUCT",
    "pool": "POOLING", "unpool": "UNPOOLING", "sigmoid": "SIGMOID", "tanh": "TANH", "relu": "RELU",
    "flatten": "FLATTEN", "slice": "SLICE", "sce_loss": "SIGMOID_CROSS_ENTROPY_LOSS",
    "euclid_loss": "EUCLIDEAN_LOSS", "contrastive_loss": "CONTRASTIVE_LOSS",
}


def _num(value):
    """Numbers as a person writes them in a prototxt: 1 not 1.0, 0.0005 not 5e-04."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        text = format(value, ".10g")
        if "e" in text:
            text = format(value, ".15f").rstrip("0").rstrip(".")
        return text
    return str(value)


def _environment(templates=TEMPLATES):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["num"] = _num
    return env


def file_name(net, dim, kind):
    """``{net}_d{D}_{kind}.prototxt``."""
    return f"{net}_d{dim}_{kind}.prototxt"


def render_files(net, dim, syntax="modern", overrides=None, net_dir=None, snapshot_prefix=None):
    """The texts of train_test, deploy and solver for ``net`` at code size ``dim``.

    ``net_dir`` is where the solver looks for the train_test file (default
    ``generated/{syntax}``, relative to the repository root).
    """
    s = specs.settings(net, overrides)
    env = _environment()
    types = MODERN_TYPES if syntax == "modern" else LEGACY_TYPES
    template = env.get_template(f"{syntax}.prototxt.j2")
    name = f"{net}_d{dim}"
    texts = {}
    for stage in ("train_test", "deploy"):
        layers = specs.layers(net, dim, stage, syntax, resolved=s)
        text = template.render(name=name, layers=layers, types=types)
        _check(text, f"{name}_{stage} ({syntax})")
        texts[stage] = text
    net_dir = net_dir if net_dir is not None else f"generated/{syntax}"
    solver = env.get_template("solver.prototxt.j2").render(
        s=s, syntax=syntax, net_path=f"{net_dir}/{file_name(net, dim, 'train_test')}",
        snapshot_prefix=snapshot_prefix or f"snapshots/{name}",
        test_iter_train=math.ceil(s["data.train_size"] / s["data.batch_size"]),
        test_iter_test=math.ceil(s["data.test_size"] / s["data.batch_size"]))
    parse_solver(solver, filename=f"{name}_solver ({syntax})")
    texts["solver"] = solver
    return texts


def _check(text, where):
    analyse(parse_net(text, filename=where), where=where)


def write_files(net, dim, out_dir, syntax="modern", overrides=None, net_dir=None, snapshot_prefix=None):
    """Render and write the three files into ``out_dir``; returns {kind: path}."""
    texts = render_files(net, dim, syntax, overrides, net_dir=net_dir if net_dir is not None else out_dir,
                         snapshot_prefix=snapshot_prefix)
    paths = {}
    for kind in KINDS:
        paths[kind] = os.path.join(out_dir, file_name(net, dim, kind))
        write_text(paths[kind], texts[kind])
    return paths


def paper_grid():
    """(net, dim) pairs of the paper's Table 4."""
    return [(net, dim) for net in specs.NETS for dim in specs.PAPER_DIMS[net]]


def render_paper_grid(out="generated", syntaxes=("legacy", "modern"), net_prefix="generated"):
    """Every net of the paper at its code sizes, both syntaxes, into ``out/{syntax}/``.

    Solvers name their nets as ``{net_prefix}/{syntax}/...``, relative to the repository
    root, wherever the files are written.

    Everything is rendered (and checked) before anything is written, and files of the
    grid no longer rendered are removed, so ``out`` is exactly the grid.
    """
    rendered = {}
    for syntax in syntaxes:
        folder = os.path.join(out, syntax)
        for net, dim in paper_grid():
            texts = render_files(net, dim, syntax, net_dir=f"{net_prefix}/{syntax}")
            for kind in KINDS:
                rendered[os.path.join(folder, file_name(net, dim, kind))] = texts[kind]
    for path, text in sorted(rendered.items()):
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        if current != text:
            write_text(path, text)
    for syntax in syntaxes:
        folder = os.path.join(out, syntax)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.endswith(".prototxt") and path not in rendered:
                os.unlink(path)
    return sorted(rendered)
