"""Does the real Caffe run a net, and does `caffe-cae inspect` see the net Caffe sees?

    python tools/compare_engine.py NET.prototxt ... [--data-dir DIR] [--shape SOURCE=C,H,W]
        [--no-make] [--pythonpath DIR] [--engine-dir DIR]

For each file, one row: file | inspect | upgrade | engine | compare.

* inspect: `caffe-cae inspect` on the file, run from the data folder (where Caffe reads the
  net's relative paths);
* upgrade: "modern" (nothing to do) or `caffe-cae upgrade`'s result (or its refusal);
* engine: the engine's Caffe instantiates the upgraded net (the file itself if modern, or if
  upgrade refuses it) and runs one forward pass on its data, in TRAIN and TEST phase where
  the net has phase rules (else TRAIN), once per stage its rules name (BVLC's mnist_autoencoder
  tests with stage test-on-train and test-on-test);
* compare: for each phase, every blob shape and every layer's parameter count of the
  engine's net against `inspect` of the same file in that phase (Caffe's own split blobs, the
  "(automatic)" top it adds to a loss layer given none, and BatchNorm's statistics, which
  inspect counts 0, left out). Where inspect cannot know an
  input shape (a LevelDB, a Python layer's top), it is given the engine's input shapes, as
  `--input-shape` would: the row says "inputs from the engine".

The data folder (default: a temporary one) is where the net's relative paths are read;
what the net reads and the folder lacks is made there first, small (unless --no-make), by
tools/engine_net_check.py in the engine:
a Data source naming "mnist" from our MNIST with Caffe's convert_mnist_data (pairs with
convert_mnist_siamese_data when it names "siamese"); any other Data source as random
images through Caffe's convert_imageset, C x H x W from --shape SOURCE=C,H,W, else 3x32x32
where it names "cifar", else 3x256x256 (ImageNet's size in Caffe's examples); an ImageData
list or WindowData window file with random images of that shape; an HDF5Data list with one
file whose tops are N x (--shape, else 4) and N for tops named "label"; a mean file of the
layer's image shape. Exit status 1 if any row differs. Needs the engine (`make engine`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from caffe_cae import data
from caffe_cae.errors import CaeError
from caffe_cae.inspect import inspect_net
from caffe_cae.schema import parse_net, to_text
from caffe_cae.upgrade import upgrade

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_net_check.py")
#: records / images made per database or list
COUNTS = {"mnist": 64, "images_db": 8, "image_list": 4, "window_file": 2, "hdf5": 10}
PHASES = ("train", "test")


def _fail(message):
    """Bad input: one line, exit 2."""
    print("compare_engine: " + message, file=sys.stderr)
    sys.exit(2)


def _dims(text, where):
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        _fail("%s: expected positive integers, e.g. 3,32,32" % where)
    return dims


def _image_shape(source, shapes, layer_kind):
    if source in shapes:
        return shapes[source]
    return [3, 32, 32] if layer_kind == "Data" and "cifar" in source.lower() else [3, 256, 256]


def data_items(net, shapes):
    """What the layers of a modern net read, as engine_net_check.py data items."""
    items = []
    for layer in net.layer:
        shape = None
        if layer.type == "Data":
            source = layer.data_param.source
            backend = "leveldb" if layer.data_param.backend == 0 else "lmdb"
            if "mnist" in source.lower():
                pairs = "siamese" in source.lower()
                shape = [2 if pairs else 1, 28, 28]
                split = "test" if "test" in os.path.basename(source.rstrip("/")).lower() else "train"
                items.append(dict(kind="mnist", path=source, backend=backend, split=split, pairs=pairs))
            else:
                shape = _image_shape(source, shapes, "Data")
                items.append(dict(kind="images_db", path=source, backend=backend, shape=shape))
        elif layer.type == "ImageData":
            param = layer.image_data_param
            shape = _image_shape(param.source, shapes, "ImageData")
            items.append(dict(kind="image_list", path=param.source, root=param.root_folder, shape=shape))
            shape = [shape[0], param.new_height or shape[1], param.new_width or shape[2]]
        elif layer.type == "WindowData":
            param = layer.window_data_param
            shape = _image_shape(param.source, shapes, "WindowData")
            items.append(dict(kind="window_file", path=param.source, root=param.root_folder, shape=shape))
        elif layer.type == "HDF5Data":
            source = layer.hdf5_data_param.source
            tops = {top: [] if "label" in top.lower() else shapes.get(source, [4]) for top in layer.top}
            items.append(dict(kind="hdf5", path=source, tops=tops))
        if shape and layer.transform_param.mean_file:
            items.append(dict(kind="mean", path=layer.transform_param.mean_file, shape=shape))
    for item in items:
        item["count"] = COUNTS.get(item["kind"], 0)
    return items


def states(net):
    """The NetStates to run: (phase, stages) for TRAIN, and TEST where layers have phase rules; a
    phase whose rules name stages once per stage (BVLC's test-on-train / test-on-test)."""
    rules = [rule for layer in net.layer for rule in list(layer.include) + list(layer.exclude)] if net else []
    phases = PHASES if any(rule.HasField("phase") for rule in rules) else PHASES[:1]
    out = []
    for phase in phases:
        number = PHASES.index(phase)
        stages = sorted({s for rule in rules if not rule.HasField("phase") or rule.phase == number
                         for s in list(rule.stage) + list(rule.not_stage)})
        out += [(phase, (stage,)) for stage in stages] or [(phase, ())]
    return out


def state_name(state):
    return "/".join((state[0].upper(),) + state[1])


def _last_error(text, returncode):
    lines = [line for line in text.splitlines() if line.strip()]
    for word in ("Error parsing", "Check failed", "Error"):
        picked = [line for line in lines if word in line]
        if picked:
            break
    line = (picked or lines or ["exit %d" % returncode])[-1]
    return line.split("] ", 1)[-1].strip()[:150]


class Checker:
    def __init__(self, eng, data_dir, work, shapes, make, pythonpath, mnist_dir):
        self.eng, self.data_dir, self.work, self.shapes = eng, data_dir, work, shapes
        self.make, self.env, self.mnist_dir = make, {}, mnist_dir
        if pythonpath:
            self.env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in pythonpath)

    def _engine(self, argv):
        proc = self.eng.run([self.eng.python, CHECK] + argv, cwd=self.data_dir, env=self.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=1800)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None, _last_error(proc.stderr, proc.returncode)
        return json.loads(proc.stdout.strip().splitlines()[-1]), None

    def make_data(self, net, index):
        items = data_items(net, self.shapes)
        if not (self.make and items):
            return None
        spec = os.path.join(self.work, "data%d.json" % index)
        with open(spec, "w") as f:
            json.dump(items, f)
        return self._engine(["data", spec, self.mnist_dir])[1]

    def inspect(self, path, phase="train", given=None, stages=()):
        cwd = os.getcwd()
        os.chdir(self.data_dir)
        try:
            return inspect_net(path, input_shapes=given, phase=phase, stages=stages)
        finally:
            os.chdir(cwd)

    def row(self, path, index):
        """(inspect, upgrade, engine, compare) for one file."""
        run_path = os.path.join(self.work, "%d_%s" % (index, os.path.basename(path)))
        with open(path) as f:
            text = f.read()
        try:
            original = parse_net(path)
            net = upgrade(original)
            upgraded = "modern" if net == original else "upgraded, %d layers" % len(net.layer)
            text = to_text(net) if net != original else text
        except CaeError as exc:
            upgraded, net = "refused: " + str(exc).replace(path, "").lstrip(": "), None
        with open(run_path, "w") as f:
            f.write(text)
        error = self.make_data(net, index) if net is not None else None
        try:
            inspected = "table, %d params" % self.inspect(path)["params"]
        except CaeError as exc:
            inspected = "refused: " + str(exc).replace(path, "").lstrip(": ")
        if error:
            return inspected, upgraded, "data not made: " + error, "-"
        results = {}
        for state in states(net):
            real, error = self._engine(["run", run_path, state[0]] + list(state[1]))
            if error:
                return inspected, upgraded, "fails (%s): %s" % (state_name(state), error), "-"
            results[state] = real
        ran = "+".join(state_name(state) for state in results) + " forward"
        return inspected, upgraded, ran, self.compare(run_path, net, results)

    def compare(self, run_path, net, results):
        notes, counts = [], []
        for (phase, stages), real in results.items():
            given = None
            try:
                info = self.inspect(run_path, phase, stages=stages)
            except CaeError:
                inputs = [top for layer in net.layer for top in layer.top if layer.type.endswith("Data")
                          or layer.type in ("Input", "Python")] if net is not None else []
                given = {top: real["blobs"][top] for top in inputs if top in real["blobs"]}
                try:
                    info = self.inspect(run_path, phase, given, stages)
                except CaeError as exc:
                    return "inspect refused: " + str(exc).replace(run_path, "").lstrip(": ")[:100]
            diff = differences(info, real)
            if diff:
                return "DIFFERENT (%s): %s" % (state_name((phase, stages)), "; ".join(diff[:3]))
            counts.append("%d blobs" % len(info["blobs"]))
            if given:
                notes.append("inputs from the engine")
        params = info["params"]
        return "= inspect (%s; %d params)%s" % (", ".join(counts), params,
                                               " [%s]" % notes[0] if notes else "")


def differences(info, real):
    """Blob shapes and per-layer parameter counts where inspect and the engine disagree."""
    out = []
    for name, dims in info["blobs"].items():
        if real["blobs"].get(name) != list(dims):
            out.append("blob %s: inspect %s, Caffe %s" % (name, list(dims), real["blobs"].get(name)))
    for name in real["blobs"]:
        if name not in info["blobs"] and "_split_" not in name and name != "(automatic)":
            out.append("blob %s: only in Caffe" % name)
    mine = {layer["name"]: layer["weights"] + layer["biases"] for layer in info["layers"]}
    for name, layer in real["layers"].items():
        if layer["type"] == "BatchNorm" or layer["type"] == "Split":
            continue
        if mine.get(name, 0) != sum(layer["sizes"]):
            out.append("layer %s: inspect %s params, Caffe %d" % (name, mine.get(name), sum(layer["sizes"])))
    return out


def parse_shapes(pairs):
    shapes = {}
    for pair in pairs:
        source, sep, dims = pair.partition("=")
        if not sep or not source:
            _fail("--shape %s: expected SOURCE=C,H,W" % pair)
        shapes[source] = _dims(dims, "--shape " + pair)
    return shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--data-dir", help="where the nets' relative paths are read (default: a temporary folder)")
    parser.add_argument("--shape", action="append", default=[], metavar="SOURCE=C,H,W",
                        help="the image shape (HDF5: the dims after N) of the data made for SOURCE")
    parser.add_argument("--no-make", action="store_true", help="make no data: use what the data folder has")
    parser.add_argument("--pythonpath", action="append", default=[], help="a folder of Python layers' modules")
    parser.add_argument("--engine-dir", help="a built rootfs engine directory (default: the checkout's engine)")
    args = parser.parse_args(argv)
    for path in args.files:
        if not os.path.isfile(path):
            _fail("%s: no such file (expected a Caffe net .prototxt)" % path)
    shapes = parse_shapes(args.shape)
    from caffe_cae.engine import RootfsEngine, get_engine
    eng = RootfsEngine(args.engine_dir) if args.engine_dir else get_engine(build=False)
    counts = {}
    with tempfile.TemporaryDirectory(dir="/tmp") as work:
        data_dir = os.path.abspath(args.data_dir or os.path.join(work, "data"))
        os.makedirs(data_dir, exist_ok=True)
        checker = Checker(eng, data_dir, work, shapes, not args.no_make, args.pythonpath, data.mnist_dir())
        for index, path in enumerate(args.files):
            row = checker.row(os.path.abspath(path), index)
            key = row[3].split(" (")[0].split(":")[0]
            counts[key] = counts.get(key, 0) + 1
            print(" | ".join((path,) + row), flush=True)
    print("; ".join("%s: %d" % item for item in sorted(counts.items())))
    return 1 if "DIFFERENT" in counts else 0


if __name__ == "__main__":
    sys.exit(main())
