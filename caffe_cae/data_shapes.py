"""The shapes of a net's inputs (data layers, Input layers, V1 ``input_dim``), only from what
is known. For each top of such a layer, in this order:

1. ``--input-shape NAME=N,C,H,W`` (``given``, :func:`parse_input_shapes`) names the top;
2. the layer itself: an Input or DummyData layer's shape; MemoryData's sizes; ImageData's
   ``new_height`` / ``new_width``; WindowData's ``crop_size``; a label top is N;
3. the file it reads, relative to the current folder as Caffe reads it: HDF5Data's
   ``source`` list names HDF5 files, the first one's dataset named as the top gives the
   shape after N (``hdf5_data_param.batch_size``); Data's LMDB database gives its first
   Datum's channels x height x width; ImageData's list its first image's height x width
   (Pillow reads it); ``transform_param.crop_size`` crops;
4. for the project's own nets (the ones ``caffe-cae render`` writes, named
   ``<net>_d<D>``), MNIST's layout: ``data`` N x 1 x 28 x 28, ``pair_data`` N x 2 x 28 x 28,
   anything else N.

Otherwise a CaeError: one line naming the layer, the top, why it is unknown and the two ways
to give it (the file, or ``--input-shape``).
"""
import os
import re

from .errors import CaeError
from .proto import caffe_cae_pb2 as pb
from .specs import NETS

#: layer types whose tops are the net's inputs
TYPES = ("Input", "DummyData", "HDF5Data", "Data", "ImageData", "MemoryData", "WindowData")
_PROJECT = re.compile(r"(%s)_d\d+" % "|".join(NETS))
#: the MNIST layout of the project's own HDF5 files (caffe_cae.data); other tops are N
MNIST = {"data": [1, 28, 28], "pair_data": [2, 28, 28]}


class Unknown(Exception):
    """Why a shape cannot be read; ``top``: the top it is about, if one."""

    def __init__(self, why, top=None):
        super().__init__(why)
        self.top = top


def parse_input_shapes(pairs):
    """``NAME=N,C,H,W`` strings (any number of positive sizes) -> {name: [sizes]}."""
    shapes = {}
    for pair in pairs:
        name, _, dims = pair.partition("=")
        try:
            sizes = [int(d) for d in dims.split(",")]
        except ValueError:
            sizes = []
        if not name.strip() or not sizes or min(sizes) < 1:
            raise CaeError(f"--input-shape {pair}: expected NAME=N,C,H,W (positive integers, e.g. data=64,1,28,28)")
        shapes[name.strip()] = sizes
    return shapes


def is_project_net(net):
    """Whether ``net`` is one of this project's rendered nets (its name is <net>_d<D>)."""
    return bool(_PROJECT.fullmatch(net.name))


def _source_list(path):
    """The lines of a data layer's ``source`` list (HDF5 files, or images and labels)."""
    try:
        with open(path, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise Unknown(f"its source list {path!r} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if not names:
        raise Unknown(f"its source list {path!r} names no file")
    return names


def _hdf5(layer, n):
    import h5py
    first = _source_list(layer.hdf5_data_param.source)[0]
    try:
        with h5py.File(first, "r") as handle:
            shapes = []
            for top in layer.top:
                if top not in handle:
                    raise Unknown(f"{first} has no dataset {top!r}", top)
                shapes.append([n] + list(handle[top].shape[1:]))
            return shapes
    except OSError as exc:
        raise Unknown(f"{first} (first file of {layer.hdf5_data_param.source!r}) cannot be read ({exc})") from None


def _datum(layer):
    """channels, height, width of the first record of a Data layer's LMDB database."""
    p = layer.data_param
    if p.backend != pb.DataParameter.LMDB:
        raise Unknown(f"its LevelDB database {p.source!r} is not read by inspect")
    if not os.path.isdir(p.source):
        raise Unknown(f"no LMDB database at {p.source!r}")
    import lmdb
    try:
        with lmdb.open(p.source, readonly=True, lock=False) as env, env.begin() as txn:
            first = next(iter(txn.cursor()), None)
    except lmdb.Error as exc:
        raise Unknown(f"LMDB database {p.source!r} cannot be read ({exc})") from None
    if first is None:
        raise Unknown(f"LMDB database {p.source!r} is empty")
    datum = pb.Datum.FromString(first[1])
    if datum.encoded:
        raise Unknown(f"LMDB database {p.source!r} holds encoded images, whose size inspect does not decode")
    return [datum.channels, datum.height, datum.width]


def _first_image_size(p):
    """height, width of the first image an ImageData ``source`` list names ("file label" lines)."""
    from PIL import Image
    path = p.root_folder + _source_list(p.source)[0].rsplit(" ", 1)[0]
    try:
        with Image.open(path) as image:
            return [image.height, image.width]
    except OSError as exc:
        raise Unknown(f"its first image {path!r} cannot be read ({exc})") from None


def _cropped(layer, chw):
    crop = layer.transform_param.crop_size
    return chw if not crop else chw[:1] + [crop, crop]


def _image(layer, batch, given):
    """(N, C x H x W of the image top) of a Data, ImageData, MemoryData or WindowData layer."""
    if layer.top[0] in given:
        return given[layer.top[0]][0], given[layer.top[0]][1:]
    t = layer.type
    if t == "Data":
        return layer.data_param.batch_size or batch, _cropped(layer, _datum(layer))
    if t == "MemoryData":
        p = layer.memory_data_param
        return p.batch_size or batch, [p.channels, p.height, p.width]
    if t == "ImageData":
        p = layer.image_data_param
        if bool(p.new_height) != bool(p.new_width):
            raise Unknown("new_height and new_width go together")
        size = [p.new_height, p.new_width] if p.new_height else _first_image_size(p)
        return p.batch_size or batch, _cropped(layer, [3 if p.is_color else 1] + size)
    crop = layer.transform_param.crop_size or layer.window_data_param.crop_size
    if not crop:
        raise Unknown("it has no crop_size")
    return layer.window_data_param.batch_size or batch, [3, crop, crop]


def _read(layer, batch, given, project):
    """Shapes of every top of the input layer, or Unknown."""
    t = layer.type
    if t in ("Input", "DummyData"):
        p = layer.input_param if t == "Input" else layer.dummy_data_param
        shapes = [list(s.dim) for s in p.shape]
        if t == "DummyData" and not shapes and len(p.num):  # the legacy num, channels, height, width
            sizes = [list(p.num), list(p.channels), list(p.height), list(p.width)]
            shapes = [[axis[i if len(axis) > 1 else 0] for axis in sizes] for i in range(max(map(len, sizes)))]
        if not shapes:
            raise Unknown("it has no shape")
        if len(shapes) not in (1, len(layer.top)):
            raise Unknown(f"{len(shapes)} shapes for {len(layer.top)} tops")
        return shapes * len(layer.top) if len(shapes) == 1 else shapes
    if t == "HDF5Data":
        n = layer.hdf5_data_param.batch_size or batch
        try:
            return _hdf5(layer, n)
        except Unknown:
            if not project:
                raise
            return [[n] + MNIST.get(top, []) for top in layer.top]
    n, chw = _image(layer, batch, given)
    return [[n] + list(chw)] + [[n] for _ in layer.top[1:]]


def input_shapes(at, layer, batch, given, project):
    """The shapes of an input layer's tops (see the module docstring); CaeError, prefixed
    with ``at`` (the file and layer), when one is unknown."""
    if all(top in given for top in layer.top):
        return [given[top] for top in layer.top]
    try:
        shapes = _read(layer, batch, given, project)
    except Unknown as why:
        top = why.top or next(top for top in layer.top if top not in given)
        raise CaeError(f"{at}: the shape of {top!r} is unknown: {why}; "
                       f"give the file it reads (paths are relative to the current folder) "
                       f"or --input-shape {top}=N,C,H,W") from None
    return [given.get(top, shape) for top, shape in zip(layer.top, shapes)]
